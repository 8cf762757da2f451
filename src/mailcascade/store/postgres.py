"""The PostgreSQL backend (`store.url = "postgresql://user:password@host/db"`): one store shared by many processes,
such as Ray workers and service replicas. Needs the `postgres` extra (psycopg 3).

Two connections: the writer thread's and one for reads (autocommit), so a cache read never waits behind a batch.
A connection that broke is opened again on its next use; what failed meanwhile is dropped or a miss.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from mailcascade.store.base import Rows, Store, StoreError
from mailcascade.store.migrations import MIGRATIONS, statements

_MIGRATION_LOCK = 0x6D61696C  # pg_advisory_xact_lock key: one process migrates at a time


def _pg(sql: str) -> str:
    """Our SQL uses ? placeholders (SQLite's); psycopg wants %s."""
    return sql.replace("?", "%s")


class PostgresStore(Store):
    backend = "postgres"

    def _open(self) -> None:
        fix = "check [store] url (or MAILCASCADE_STORE__URL): postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        try:
            import psycopg
        except ImportError:
            raise StoreError(f"the store {self.where} needs psycopg: pip install 'mailcascade[postgres]'") from None
        self._psycopg = psycopg
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()
        try:
            self._wconn = self._connect()
            self._migrate()
            self._rconn = self._connect()
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the store {self.where}: {self._scrub(exc)}: {fix}") from None

    def _connect(self) -> Any:
        from psycopg.rows import dict_row

        ms = int(self.timeout_s * 1000)  # a lock held longer is an error; so is a statement taking 4x as long
        return self._psycopg.connect(self.target, autocommit=True, row_factory=dict_row,
                                     connect_timeout=max(1, int(self.timeout_s)),
                                     options=f"-c lock_timeout={ms} -c statement_timeout={4 * ms}")

    def _migrate(self) -> None:
        steps = MIGRATIONS["postgres"]
        with self._wconn.transaction():
            self._wconn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self._wconn.execute("CREATE TABLE IF NOT EXISTS schema_version"
                                " (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION)")
            current = self._version(self._wconn)
            for number in range(current + 1, len(steps) + 1):
                for sql in statements(steps[number - 1]):
                    self._wconn.execute(sql)
                self._wconn.execute("INSERT INTO schema_version(version, applied) VALUES (%s,%s)",
                                    (number, time.time()))

    @staticmethod
    def _version(conn: Any) -> int:
        row = conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
        return int(row["v"] or 0)

    def _live(self, conn: Any) -> Any:
        return self._connect() if conn.closed or conn.broken else conn

    def _write_batch(self, batch: Sequence[tuple[str, Rows]]) -> None:
        with self._wlock:
            self._wconn = self._live(self._wconn)
            with self._wconn.transaction(), self._wconn.cursor() as cur:
                for sql, rows in batch:
                    cur.executemany(_pg(sql), rows)

    def _query(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        with self._rlock:
            self._rconn = self._live(self._rconn)
            rows: list[dict[str, Any]] = self._rconn.execute(_pg(sql), list(args)).fetchall()
            return rows

    def _close(self) -> None:
        with self._wlock, self._rlock:
            self._wconn.close()
            self._rconn.close()

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self._psycopg.Error,)

    def schema_version(self) -> int:
        with self._rlock:
            return self._version(self._rconn)
