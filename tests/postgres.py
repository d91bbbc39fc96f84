"""A real PostgreSQL server for the tests, in a temporary directory on a free local port.

PostgreSQL refuses to run as root, so under root the server runs as ``nobody``. Tests that
need it skip, saying why, only when the server binaries (``initdb``, ``pg_ctl``) or the
driver (psycopg) are absent."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD = "sweeper", "Pw-7f3a9c1e-not-in-any-file"


def missing() -> str | None:
    """Why a server cannot be started here, or None."""
    for binary in ("initdb", "pg_ctl", "postgres"):
        if shutil.which(binary) is None:
            return f"PostgreSQL server binary {binary!r} not on PATH"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg not installed (pip install -e '.[postgres]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demote():
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)


@dataclass
class Server:
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, db: str = "optuna", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{db}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(["pg_ctl", "-D", str(self.data), *args], check=True, preexec_fn=_demote,
                       capture_output=True, timeout=60)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
                  "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


def start_server() -> Server:
    root = Path(tempfile.mkdtemp(prefix="pg-sweeps-"))
    root.chmod(0o755)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        os.chown(root, 65534, 65534)
        os.chown(pwfile, 65534, 65534)
    subprocess.run(["initdb", "-D", str(root / "data"), "-U", USER, "--auth=scram-sha-256",
                    f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"], check=True,
                   preexec_fn=_demote, capture_output=True, timeout=120)
    pwfile.unlink()
    server = Server(root, _free_port())
    server.start()
    server.create_database("optuna")
    return server
