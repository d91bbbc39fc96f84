"""No credential on disk or on the console: URLs redacted wherever recorded, the Optuna
storage URL kept out of Tune's pickles (and rebuilt on --resume), credentials in a cloud URI
refused, and a database that cannot be reached refused before Ray starts. Against a real
PostgreSQL server (tests/postgres.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import postgres
from conftest import COLA_SCRIPT, SMOKE_SERIAL, run_cli, run_main


def test_redact_url_hides_passwords_and_secret_parameters():
    from search.redact import redact_argv, redact_text, redact_url, url_secrets

    assert redact_url("postgresql://bob:s3cret@db:5432/optuna") == "postgresql://bob:***@db:5432/optuna"
    assert redact_url("postgresql://bob@db/optuna") == "postgresql://bob@db/optuna"
    assert redact_url("sqlite:////tmp/x/optuna.db") == "sqlite:////tmp/x/optuna.db"
    shown = redact_url("s3://bucket/p?region=eu-west-1&secret_key=AbC&session_token=T0k")
    assert "AbC" not in shown and "T0k" not in shown and "region=eu-west-1" in shown
    assert redact_url("not a url") == "not a url"
    assert url_secrets("postgresql://bob:s3cret@db/o") == ["s3cret"]
    argv = ["x.py", "--optuna-storage", "postgresql://u:pw1@h/d", "--storage-path=s3://b/p?secret_key=k2"]
    assert "pw1" not in " ".join(redact_argv(argv)) and "k2" not in " ".join(redact_argv(argv))
    assert redact_text("failed for postgresql://u:pw1@h/d: pw1 wrong", "postgresql://u:pw1@h/d") \
        == "failed for postgresql://u:***@h/d: *** wrong"


@pytest.mark.parametrize("uri", ["s3://AKIAEXAMPLEKEY:wJalrSecret@bucket/runs",
                                 "s3://bucket/runs?access_key=AKIAEXAMPLEKEY&secret_key=wJalrSecret"])
def test_credentials_in_a_cloud_uri_exit_2_naming_where_they_go(uri, tmp_path, monkeypatch, capsys):
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", uri], tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and not r.ray_started
    assert "carries credentials" in r.stderr and "AWS_SECRET_ACCESS_KEY" in r.stderr
    assert "wJalrSecret" not in r.stdout + r.stderr
    assert not any((Path.home() / ".cache" / "sweeps-mirror").rglob("*wJalrSecret*"))


def _leaks(root: Path, secret: str) -> list[str]:
    """Files under ``root`` holding ``secret`` (as bytes, so pickles count) or naming it."""
    out = []
    for f in root.rglob("*"):
        if secret in f.name:
            out.append(str(f))
        elif f.is_file() and secret.encode() in f.read_bytes():
            out.append(str(f))
    return out


def test_a_closed_port_or_a_wrong_password_exits_2_before_ray(pg, tmp_path, monkeypatch, capsys):
    closed = pg.url().replace(f":{pg.port}/", f":{postgres._free_port()}/")
    for url in (closed, pg.url(password="Wrong-pw-4d2")):
        r = run_main(COLA_SCRIPT, ["--smoke-test", "--optuna-storage", url], tmp_path,
                     monkeypatch, capsys)
        assert r.returncode == 2 and not r.ray_started, r.stderr[-2000:]
        assert "--optuna-storage 'postgresql://sweeper:***@127.0.0.1" in r.stderr
        assert "cannot connect" in r.stderr
        assert postgres.PASSWORD not in r.stdout + r.stderr
        assert "Wrong-pw-4d2" not in r.stdout + r.stderr
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.slow
def test_a_sweep_and_its_resume_keep_the_password_off_disk(pg, tmp_path):
    """The study lands in PostgreSQL, where Optuna reads it back; no byte of the password
    under the experiment dir (pickles included) or in the console, first run or --resume;
    --resume without the URL exits 2 saying where it goes."""
    import optuna

    args = ["--smoke-test", *SMOKE_SERIAL, "--num-samples", "2", "--max-epochs", "2",
            "--retrain-top-k", "0", "--name", "pg", "--storage-path", str(tmp_path / "ray_results")]
    first = run_cli(COLA_SCRIPT, [*args, "--optuna-storage", pg.url()], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    exp = tmp_path / "ray_results" / "pg"
    assert list(exp.glob("searcher-state-*.pkl")) and (exp / "tuner.pkl").is_file()
    record = json.loads((exp / "experiment.json").read_text())
    assert record["optuna_storage"] == pg.url(password="***")
    assert "sweeper:***@" in record["command"]

    summaries = optuna.get_all_study_summaries(pg.url())
    study = optuna.load_study(study_name=record["optuna_study"], storage=pg.url())
    assert [s.study_name for s in summaries] == [record["optuna_study"]]
    assert len(study.trials) == 2 and all(t.intermediate_values for t in study.trials)

    no_url = run_cli(COLA_SCRIPT, [*args, "--resume"], tmp_path)
    assert no_url.returncode == 2 and "needs that URL with its password" in no_url.stderr
    again = run_cli(COLA_SCRIPT, [*args, "--resume"], tmp_path,
                    PEFT_SWEEPS_OPTUNA_STORAGE=pg.url())
    assert again.returncode == 0, again.stderr[-3000:]
    for r in (first, no_url, again):
        assert postgres.PASSWORD not in r.stdout + r.stderr
    assert _leaks(tmp_path, postgres.PASSWORD) == []
    # what the pickles hold instead: the redacted URL, which --resume completed from the env
    with open(sorted(exp.glob("searcher-state-*.pkl"))[-1], "rb") as f:
        blob = f.read()
    assert b"sweeper:***@127.0.0.1" in blob
    assert len(optuna.load_study(study_name=record["optuna_study"], storage=pg.url()).trials) == 2
