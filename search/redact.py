"""Credentials out of everything a sweep records or prints.

A URL's password (``scheme://user:PASSWORD@host``) and the values of secret query parameters
(``?secret_key=...``, ``X-Amz-Signature=...``) become ``***`` wherever a URL is written to
disk or the console: the command line in ``experiment.json``, the plan, error messages. The
Optuna storage's URL stays out of Tune's pickles (``searcher-state-*.pkl``, ``tuner.pkl``):
``SafeRDBStorage`` pickles the redacted URL and, when unpickled on ``--resume``, takes the real
one from the flag given again (registered by the CLI) or from ``$PEFT_SWEEPS_OPTUNA_STORAGE``.
Cloud storage URIs must not carry credentials at all: pyarrow would accept them, but they
would then reach Tune's pickled file system and the mirror's directory name.
"""
from __future__ import annotations

import os
import re
from urllib.parse import unquote, unquote_plus, urlsplit

from models.errors import InputError

MASK = "***"
ENV_OPTUNA_STORAGE = "PEFT_SWEEPS_OPTUNA_STORAGE"
# Query parameters whose value is a credential (lower case; pyarrow's S3 options included).
_SECRET_PARAM = re.compile(r"(pass(word)?|secret|token|signature|sig|credential|"
                           r"access_key|api_?key|key)$|^x-amz-", re.I)
_REAL_URLS: dict[str, str] = {}  # redacted -> real, for unpickling in this process


def _is_url(text: str) -> bool:
    return "://" in text


# Where SQLAlchemy (sqlalchemy.engine.url._parse_url, which Optuna's storage and MLflow's
# database stores use) reads the credentials right after ``scheme://``: the user up to a ':'
# (no '/'), the password up to the FIRST '@' after it, whatever it holds ('/', '?', '#', ':').
_SA_USERINFO = re.compile(r"([^:/]*)(?::([^@]*))?@")


def _credentials(rest: str) -> tuple[str, str | None, int] | None:
    """``rest`` (a URL after ``scheme://``) -> (user, raw password or None, index of the '@'
    that ends them), or None without credentials. The password as SQLAlchemy reads it,
    widened to the last '@' before the host's end: with a raw '@' in a password SQLAlchemy
    stops at the first one and RFC 3986 parsers (urllib, pyarrow) at the last, so both
    readings are masked."""
    m = _SA_USERINFO.match(rest)
    if m is None:
        return None
    user, password, at = m[1], m[2], m.end() - 1
    if password is not None:
        host = re.match(r"[^/?#]*", rest[at + 1:])[0]
        if "@" in host:
            at += 1 + host.rindex("@")
            password = rest[len(user) + 1:at]
    return user, password, at


def _forms(secret: str, plus: bool = False) -> list[str]:
    """How a message may quote ``secret``: as written in the URL and percent-decoded (as the
    driver uses it); a raw '@' splits it where some parser took the host to begin."""
    out = [secret, unquote(secret), *(secret.split("@") if "@" in secret else ())]
    return out + [unquote_plus(secret)] if plus else out


def _query(url: str) -> str:
    """The query of ``url``, up to its end ('#' included: SQLAlchemy keeps it in values)."""
    rest = url.split("://", 1)[1]
    cred = _credentials(rest)
    return (rest[cred[2] + 1:] if cred else rest).partition("?")[2]


def url_secrets(url: str) -> list[str]:
    """The credential substrings of ``url`` in every form a message may quote them, longest
    first (to scrub from messages that may quote it)."""
    if not _is_url(url):
        return []
    out = []
    cred = _credentials(url.split("://", 1)[1])
    if cred and cred[1]:
        out += _forms(cred[1])
    elif cred and cred[1] is None and _looks_like_key(cred[0]):
        out += _forms(cred[0])
    out += [f for k, v in re.findall(r"([^&=]+)=([^&]*)", _query(url))
            if _SECRET_PARAM.search(unquote_plus(k)) and v for f in _forms(v, plus=True)]
    return sorted({s for s in out if s}, key=lambda s: (-len(s), out.index(s)))


def _looks_like_key(user: str) -> bool:
    return len(user) >= 16  # an access key id, not a user name


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values as ``***``; everything else exactly
    as given (string surgery, so that ``sqlite:////abs/path`` keeps its slashes). The password
    is what SQLAlchemy reads as one (``_credentials``), so one holding '/', '?' or '#' is
    masked whole."""
    if not _is_url(url):
        return url
    scheme, rest = url.split("://", 1)
    head, cred = "", _credentials(rest)
    if cred:
        user, password, at = cred
        head = f"{user}:{MASK}@" if password is not None else rest[:at + 1]
        rest = rest[at + 1:]
    if "?" in rest:
        path, query = rest.split("?", 1)
        query = re.sub(r"([^&=]+)=([^&]*)", lambda m: f"{m[1]}={MASK}"
                       if _SECRET_PARAM.search(unquote_plus(m[1])) else m[0], query)
        rest = f"{path}?{query}"
    return f"{scheme}://{head}{rest}"


def redact_text(text: str, *urls: str | None) -> str:
    """``text`` with every credential of ``urls`` replaced (e.g. a driver's error message)."""
    for url in urls:
        if url:
            for secret in url_secrets(url):  # longest first: a shorter form may lie inside
                text = text.replace(secret, MASK)
            if url in text:
                text = text.replace(url, redact_url(url))
    return text


def redact_argv(argv: list[str]) -> list[str]:
    """A command line as it may be recorded: URLs (``--flag URL`` or ``--flag=URL``) redacted."""
    out = []
    for a in argv:
        if a.startswith("--") and "=" in a:
            flag, value = a.split("=", 1)
            out.append(f"{flag}={redact_url(value)}")
        else:
            out.append(redact_url(a))
    return out


def refuse_credentials_in_uri(uri: str, flag: str) -> None:
    """Cloud storage: credentials belong in the environment, never in the URI."""
    if url_secrets(uri) or "@" in urlsplit(uri).netloc:
        raise InputError(
            f"{flag} {redact_url(uri)!r}: the URI carries credentials, which would be recorded "
            "with the experiment; remove them and put them where the store's client reads "
            "them: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile in "
            "~/.aws/credentials, AWS_PROFILE) for s3://, GOOGLE_APPLICATION_CREDENTIALS for "
            "gs://")


# --- the Optuna storage ------------------------------------------------------------------------
def register_optuna_url(url: str) -> str:
    """Remember the real URL for unpickling in this process; returns its redacted form."""
    _REAL_URLS[redact_url(url)] = url
    return redact_url(url)


def real_optuna_url(recorded: str) -> str:
    if recorded in _REAL_URLS:
        return _REAL_URLS[recorded]
    env = os.environ.get(ENV_OPTUNA_STORAGE)
    if env and redact_url(env) == recorded:
        return env
    if MASK in recorded:
        raise InputError(f"the Optuna storage {recorded} needs its password: give "
                         f"--optuna-storage again (or set ${ENV_OPTUNA_STORAGE})")
    return recorded
