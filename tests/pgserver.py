"""A real PostgreSQL server for tests: initdb into a temporary folder, `postgres` on a loopback port, stopped by pid.

Uses the Debian `postgresql` package's binaries (scripts/test installs it where it can). Root cannot run postgres,
so as root the server runs as the `postgres` system user the package creates. `find_binaries()` is None where
PostgreSQL is not installed; the tests that need it are then skipped with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER, PASSWORD = "mc", "pg-s3cret-pw"


def find_binaries() -> Path | None:
    """The folder holding initdb and postgres, or None."""
    on_path = shutil.which("initdb")
    candidates = ([str(Path(on_path).parent)] if on_path else []) + sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "postgres").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """`with PostgresServer() as pg: pg.url("dbname")`; `pg.create_database(name)` makes a fresh one."""

    def __init__(self) -> None:
        binaries = find_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = binaries
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mc-pg-"))
        self._user: str | None = None
        if os.getuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None

    def _run(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self.dir / "server.log", "ab") as log:  # the child keeps its own copy
            return subprocess.Popen(args, cwd=self.dir, user=self._user, stdout=subprocess.DEVNULL, stderr=log)

    def __enter__(self) -> PostgresServer:
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD)
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        init = self._run(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", USER,
                         f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
        if init.wait() != 0:
            raise RuntimeError(f"initdb failed: {(self.dir / 'server.log').read_text()[-2000:]}")
        self.proc = self._run(str(self.bin / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                              "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off")
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        for _ in range(600):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.dir / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(psycopg.OperationalError):
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not start accepting connections")

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # to its pid: postgres' fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
