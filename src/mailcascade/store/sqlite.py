"""The SQLite backend (the default): one file in WAL mode, or ":memory:".

The writer thread has its own connection, so a cache read never waits behind a write that waits for a lock held by
another process; an in-memory database has one connection, shared under a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailcascade.store.base import Rows, Store, StoreError
from mailcascade.store.migrations import MIGRATIONS, statements


class SQLiteStore(Store):
    backend = "sqlite"

    def _open(self) -> None:
        self.path = self.target
        fix = "set [store] path (or MAILCASCADE_STORE__PATH) to a writable file"
        try:
            if self.path != ":memory:":
                target = Path(self.path)
                if target.is_dir():
                    raise StoreError(f"store {self.path} is a folder, not a database file: {fix}")
                target.parent.mkdir(parents=True, exist_ok=True)
            self._wconn = self._connect()
            if self.path != ":memory:":
                self._wconn.execute("PRAGMA journal_mode=WAL")
                # durable against a process crash; a power cut may drop the last commits
                self._wconn.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._rconn = self._wconn if self.path == ":memory:" else self._connect()
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreError(f"cannot open the store {self.path}: {reason}: {fix}") from None
        self._rlock = threading.Lock()
        self._wlock = self._rlock if self._rconn is self._wconn else threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=self.timeout_s, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    def _migrate(self) -> None:
        conn = self._wconn
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL)")
        steps = MIGRATIONS["sqlite"]
        if _version(conn) >= len(steps):
            return
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; another waits, then finds nothing to do
        try:
            for number in range(_version(conn) + 1, len(steps) + 1):
                for sql in statements(steps[number - 1]):
                    conn.execute(sql)
                conn.execute("INSERT INTO schema_version(version, applied) VALUES (?,?)", (number, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write_batch(self, batch: Sequence[tuple[str, Rows]]) -> None:
        with self._wlock:
            conn = self._wconn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in batch:
                    conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        with self._rlock:
            return [dict(r) for r in self._rconn.execute(sql, args).fetchall()]

    def _close(self) -> None:
        with self._wlock:
            self._wconn.close()
            if self._rconn is not self._wconn:
                self._rconn.close()

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def schema_version(self) -> int:
        with self._rlock:
            return _version(self._rconn)


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)
