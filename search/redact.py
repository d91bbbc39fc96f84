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
from urllib.parse import parse_qsl, unquote, urlsplit

from models.errors import InputError

MASK = "***"
ENV_OPTUNA_STORAGE = "PEFT_SWEEPS_OPTUNA_STORAGE"
# Query parameters whose value is a credential (lower case; pyarrow's S3 options included).
_SECRET_PARAM = re.compile(r"(pass(word)?|secret|token|signature|sig|credential|"
                           r"access_key|api_?key|key)$|^x-amz-", re.I)
_REAL_URLS: dict[str, str] = {}  # redacted -> real, for unpickling in this process


def _is_url(text: str) -> bool:
    return "://" in text


def url_secrets(url: str) -> list[str]:
    """The credential substrings of ``url`` (to scrub from messages that may quote it)."""
    if not _is_url(url):
        return []
    parts = urlsplit(url)
    out = [parts.password] if parts.password else []
    if parts.username and parts.password is None and _looks_like_key(parts.username):
        out.append(parts.username)
    out += [v for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if _SECRET_PARAM.search(k) and v]
    return [s for s in out if s]


def _looks_like_key(user: str) -> bool:
    return len(user) >= 16  # an access key id, not a user name


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values as ``***``; everything else exactly
    as given (string surgery, so that ``sqlite:////abs/path`` keeps its slashes)."""
    if not _is_url(url):
        return url
    scheme, rest = url.split("://", 1)
    netloc, tail = re.match(r"([^/?#]*)(.*)", rest, re.S).groups()
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{userinfo}@{host}"
    if "?" in tail:
        path, query = tail.split("?", 1)
        query, hash_, frag = query.partition("#")
        query = re.sub(r"([^&=]+)=([^&]*)", lambda m: f"{m[1]}={MASK}"
                       if _SECRET_PARAM.search(unquote(m[1])) else m[0], query)
        tail = f"{path}?{query}{hash_}{frag}"
    return f"{scheme}://{netloc}{tail}"


def redact_text(text: str, *urls: str | None) -> str:
    """``text`` with every credential of ``urls`` replaced (e.g. a driver's error message)."""
    for url in urls:
        if url:
            for secret in url_secrets(url):
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
