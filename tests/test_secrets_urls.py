"""A URL's password is what the database driver reads as one: SQLAlchemy's make_url takes
everything between ``user:`` and the first '@' (so '/', '?', '#', ':' and percent-escapes
belong to it), and redaction masks exactly that, in every form a message may quote it (as
written and percent-decoded), wherever the URL is shown or recorded: redact_url (experiment.json,
messages), redact_argv (experiment.json's command), redact_text (driver errors), the refusal of
a cloud URI with credentials, check_optuna_storage's messages and SafeRDBStorage's pickles (the
last two against a real PostgreSQL server, tests/postgres.py)."""
from __future__ import annotations

import pickle
from urllib.parse import quote

import pytest
from sqlalchemy.engine import make_url

from conftest import COLA_SCRIPT, run_main

# (URL, the password as SQLAlchemy reads it)
WITH_PASSWORD = [
    ("postgresql://sweeper:Sl/ash?Pw#7731@127.0.0.1:5432/optuna", "Sl/ash?Pw#7731"),
    ("postgresql+psycopg://sweeper:Co:lon:Pw7731@db.internal/optuna", "Co:lon:Pw7731"),
    ("postgresql://sweeper:At%40Pw7731@db:5432/optuna", "At@Pw7731"),
    ("postgresql://sweeper:Pct%25Pw7731@db/optuna?sslmode=require", "Pct%Pw7731"),
    ("mysql+pymysql://sweeper:Mix%2F?#:%40%25Pw@db/optuna?charset=utf8", "Mix/?#:@%Pw"),
    ("s3://AKIAEXAMPLEKEY:wJalr/Sec+Ret7731@bucket/runs", "wJalr/Sec+Ret7731"),
    ("s3://AKIAEXAMPLEKEY:wJalr%2FSecRet7731@bucket/runs?region=eu-west-1", "wJalr/SecRet7731"),
]
NO_CREDENTIALS = ["sqlite:////abs/path/optuna.db", "sqlite:///rel/optuna.db",
                  "postgresql://bob@db/optuna", "postgresql://db:5432/optuna",
                  "s3://bucket/runs/with:colon", "gs://bucket/a@b/c", "file:///tmp/a@b",
                  "https://mlflow.internal:5000/", "s3://bucket/p?region=eu-west-1#frag"]


def _raw(url: str) -> str:
    """The password as written in ``url`` (between ``user:`` and the first '@')."""
    return url.split("://", 1)[1].split(":", 1)[1].split("@", 1)[0]


@pytest.mark.parametrize("url,password", WITH_PASSWORD)
def test_what_sqlalchemy_reads_as_the_password_is_what_is_masked(url, password):
    from search.redact import MASK, redact_argv, redact_text, redact_url, url_secrets

    assert make_url(url).password == password  # the driver's reading
    raw = _raw(url)
    shown = redact_url(url)
    assert shown == url.replace(f":{raw}@", f":{MASK}@", 1)  # the rest exactly as given
    masked = make_url(shown)
    assert masked.password == MASK
    assert (masked.host, masked.port, masked.database, masked.username) == \
        (make_url(url).host, make_url(url).port, make_url(url).database, make_url(url).username)
    assert {raw, password} <= set(url_secrets(url))
    argv = redact_argv(["x.py", "--optuna-storage", url, f"--storage-path={url}"])
    text = redact_text(f"cannot connect to {url}: password {password!s} ({raw}) rejected", url)
    for out in (shown, " ".join(argv), text):
        assert raw not in out and password not in out, out


def test_a_raw_at_sign_masks_both_readings():
    """SQLAlchemy reads the password up to the first '@' (and the host from there: a driver's
    error then quotes it); RFC 3986 parsers read up to the last: both are masked."""
    from search.redact import redact_text, redact_url, url_secrets

    url = "postgresql://sweeper:Rest@Host7731@db/optuna"
    assert make_url(url).password == "Rest" and make_url(url).host == "Host7731@db"
    assert redact_url(url) == "postgresql://sweeper:***@db/optuna"
    text = redact_text('could not translate host name "Host7731@db" to address', url)
    assert "Host7731" not in text
    assert "Rest@Host7731" in url_secrets(url)


@pytest.mark.parametrize("url", NO_CREDENTIALS)
def test_urls_without_credentials_stay_as_given(url):
    from search.redact import redact_argv, redact_url, url_secrets

    assert redact_url(url) == url and url_secrets(url) == []
    assert redact_argv(["--storage-path", url, f"--optuna-storage={url}"]) == \
        ["--storage-path", url, f"--optuna-storage={url}"]


def test_a_secret_query_value_is_masked_to_its_end():
    """SQLAlchemy keeps '#' in a query value: the whole value is the secret."""
    from search.redact import redact_url, url_secrets

    url = "s3://bucket/p?region=eu-west-1&secret_key=Ab%2Fc#d7731&x=1"
    assert redact_url(url) == "s3://bucket/p?region=eu-west-1&secret_key=***&x=1"
    assert {"Ab%2Fc#d7731", "Ab/c#d7731"} <= set(url_secrets(url))


def test_a_cloud_uri_with_a_slash_in_its_secret_is_refused_without_showing_it(
        tmp_path, monkeypatch, capsys):
    from models.errors import InputError
    from search.redact import refuse_credentials_in_uri

    uri = "s3://AKIAEXAMPLEKEY:wJalr/Sec?Ret#7731@bucket/runs"
    with pytest.raises(InputError) as e:
        refuse_credentials_in_uri(uri, "--storage-path")
    assert "s3://AKIAEXAMPLEKEY:***@bucket/runs" in str(e.value) and "7731" not in str(e.value)
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", uri], tmp_path, monkeypatch,
                 capsys)
    assert r.returncode == 2 and not r.ray_started and "carries credentials" in r.stderr
    assert "wJalr" not in r.stdout + r.stderr and "7731" not in r.stdout + r.stderr


# --- against a real PostgreSQL server ----------------------------------------------------------
def _role(pg, name: str, password: str) -> str:
    """A login role with its own database; its URL with the password percent-encoded only
    where SQLAlchemy needs it ('@' and '%'), so '/', '?', '#', ':' stay raw."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(name)))
    written = quote(password, safe="/?#:")
    return f"postgresql://{name}:{written}@127.0.0.1:{pg.port}/{name}"


@pytest.mark.parametrize("name,password", [("slashes", "Sl/ash?Pw#7731"),
                                           ("escapes", "At@Pct%Co:lon/7731")])
def test_the_storage_checks_and_pickles_keep_such_a_password_hidden(pg, name, password):
    """check_optuna_storage connects with it (the driver reads it whole), its refusal of a wrong
    one does not show it, and SafeRDBStorage's pickle (searcher-state-*.pkl, tuner.pkl)
    holds the URL masked, yet unpickles to a working storage in this process."""
    from models.errors import InputError
    from search.checks import check_optuna_storage
    from search.optuna_search import SafeRDBStorage
    from search.redact import url_secrets

    url = _role(pg, name, password)
    assert make_url(url).password == password
    check_optuna_storage(url)
    wrong = url.replace("7731@", "7731x@")
    with pytest.raises(InputError) as e:
        check_optuna_storage(wrong)
    assert "cannot connect" in str(e.value) and f"{name}:***@127.0.0.1" in str(e.value)
    forms = set(url_secrets(url)) | set(url_secrets(wrong))
    assert {password, _raw(url)} <= forms
    assert not [f for f in forms if f in str(e.value)], str(e.value)

    storage = SafeRDBStorage(url)
    blob = pickle.dumps(storage)
    storage.engine.dispose()
    assert f"{name}:***@127.0.0.1".encode() in blob
    assert not [f for f in forms if f.encode() in blob]
    again = pickle.loads(blob)
    assert again.url == url and again.get_all_studies() == []
    again.engine.dispose()
