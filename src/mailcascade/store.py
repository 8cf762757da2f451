"""SQLite store: every validator verdict (the failure log), the LLM response cache, and runs.

One connection guarded by a lock, so a Store can be shared across threads and tasks.

Opening a store that cannot be used (a read-only folder, a path that is a folder, a parent that is a file) raises
StoreError naming the path. After that, the store never changes an email's result: a write that fails (disk full, a
database locked by another process for longer than `timeout_s`) is dropped, logged once as a warning, and recorded
in `write_error`, so the caller can say the failure log is incomplete and why; a cache read that fails is a miss.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mailcascade.errors import MailcascadeError
from mailcascade.types import ChatResponse, Hit, StageRecord

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, command TEXT, started REAL, finished REAL, config TEXT, summary TEXT
);
CREATE TABLE IF NOT EXISTS verdicts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  run_id TEXT, email_id TEXT, stage TEXT, model TEXT, prompt_hash TEXT,
  attempt INTEGER, raw TEXT, finish_reason TEXT, status TEXT, findings TEXT, action TEXT,
  tokens_in INTEGER, tokens_out INTEGER, latency_ms REAL, cached INTEGER,
  schema TEXT, context TEXT, email_body TEXT, created REAL
);
CREATE INDEX IF NOT EXISTS verdicts_stage ON verdicts(stage, prompt_hash, model);
CREATE TABLE IF NOT EXISTS llm_cache (
  key TEXT PRIMARY KEY, response TEXT, created REAL
);
CREATE TABLE IF NOT EXISTS search_cache (
  key TEXT PRIMARY KEY, hits TEXT, created REAL
);
"""


class StoreError(MailcascadeError):
    """The store cannot be opened or used at all."""


class Store:
    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self.write_error = ""  # the first write that failed, if any: the failure log or cache is incomplete
        fix = "set [store] path (or MAILCASCADE_STORE__PATH) to a writable file"
        try:
            if self.path != ":memory:":
                target = Path(self.path)
                if target.is_dir():
                    raise StoreError(f"store {self.path} is a folder, not a database file: {fix}")
                target.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=timeout_s)
            self._conn.row_factory = sqlite3.Row
            with self._conn:
                if self.path != ":memory:":
                    self._conn.execute("PRAGMA journal_mode=WAL")
                    # durable against a process crash; a power cut may drop the last commits
                    self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreError(f"cannot open the store {self.path}: {reason}: {fix}") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, what: str, sql: str, rows: Sequence[Sequence[Any]]) -> bool:
        """One transaction; False (and a warning, once) when it fails. Never raises for a failed write."""
        try:
            with self._lock, self._conn:
                self._conn.executemany(sql, rows)
            return True
        except sqlite3.Error as exc:
            if not self.write_error:
                self.write_error = f"{what} not written to {self.path}: {exc}"
                log.warning("the failure log is incomplete (results are not affected): %s", self.write_error)
            return False

    # runs -------------------------------------------------------------
    def start_run(self, command: str, config: Mapping[str, Any], run_id: str | None = None) -> str:
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self._write("run", "INSERT OR REPLACE INTO runs(run_id, command, started, config) VALUES (?,?,?,?)",
                    [(run_id, command, time.time(), json.dumps(config, sort_keys=True))])
        return run_id

    def finish_run(self, run_id: str, summary: Mapping[str, Any]) -> None:
        self._write("run summary", "UPDATE runs SET finished=?, summary=? WHERE run_id=?",
                    [(time.time(), json.dumps(summary), run_id)])

    def runs(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM runs ORDER BY started").fetchall()
        return [dict(r) for r in rows]

    # failure log ------------------------------------------------------
    def log_stage(
        self,
        run_id: str,
        email_id: str,
        record: StageRecord,
        *,
        schema: Mapping[str, Any] | None,
        context: Mapping[str, Any] | None,
        actions: Sequence[str],
        email_body: str | None = None,
    ) -> None:
        """One row per attempt of one stage; `actions[i]` is what the pipeline did after attempt i."""
        now = time.time()
        rows = [
            (
                run_id, email_id, record.stage, record.model, record.prompt_hash, a.number, a.raw, a.finish_reason,
                a.status, json.dumps([f.to_dict() for f in a.findings]), actions[i] if i < len(actions) else "",
                a.tokens_in, a.tokens_out, a.latency_ms, int(a.cached),
                json.dumps(schema, sort_keys=True) if schema is not None else None,
                json.dumps(context, sort_keys=True) if context is not None else None,
                email_body, now,
            )
            for i, a in enumerate(record.attempts)
        ]
        self._write("verdicts", "INSERT INTO verdicts(run_id, email_id, stage, model, prompt_hash, attempt, raw,"
                    " finish_reason, status, findings, action, tokens_in, tokens_out, latency_ms, cached, schema,"
                    " context, email_body, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def verdicts(self, *, run_id: str | None = None, stage: str | None = None) -> Iterator[dict[str, Any]]:
        sql = "SELECT * FROM verdicts WHERE 1=1"
        args: list[Any] = []
        if run_id:
            sql += " AND run_id=?"
            args.append(run_id)
        if stage:
            sql += " AND stage=?"
            args.append(stage)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        for r in rows:
            row = dict(r)
            row["findings"] = json.loads(row["findings"] or "[]")
            row["schema"] = json.loads(row["schema"]) if row["schema"] else None
            row["context"] = json.loads(row["context"]) if row["context"] else None
            yield row

    # search cache: retrieval results by index and query ----------------
    def _read_one(self, sql: str, key: str) -> sqlite3.Row | None:
        """A cache lookup; a read that fails (a locked or damaged database) is a miss."""
        try:
            with self._lock:
                row: sqlite3.Row | None = self._conn.execute(sql, (key,)).fetchone()
            return row
        except sqlite3.Error as exc:
            log.warning("cache read failed in %s (treated as a miss): %s", self.path, exc)
            return None

    def search_get(self, key: str) -> list[Hit] | None:
        row = self._read_one("SELECT hits FROM search_cache WHERE key=?", key)
        return None if row is None else [Hit(**h) for h in json.loads(row["hits"])]

    def search_put(self, key: str, hits: Sequence[Hit]) -> None:
        data = json.dumps([{"product_id": h.product_id, "passage_id": h.passage_id, "score": h.score,
                            "text": h.text} for h in hits])
        self._write("retrieval cache", "INSERT OR REPLACE INTO search_cache(key, hits, created) VALUES (?,?,?)",
                    [(key, data, time.time())])

    # LLM response cache -----------------------------------------------
    def cache_get(self, key: str) -> ChatResponse | None:
        row = self._read_one("SELECT response FROM llm_cache WHERE key=?", key)
        if row is None:
            return None
        data = json.loads(row["response"])
        return ChatResponse(**{**data, "cached": True, "attempts": 0})  # answered here: no request was sent

    def cache_put(self, key: str, response: ChatResponse) -> None:
        data = {
            "text": response.text, "finish_reason": response.finish_reason, "model": response.model,
            "tokens_in": response.tokens_in, "tokens_out": response.tokens_out,
            "latency_ms": response.latency_ms, "attempts": response.attempts,
        }
        self._write("LLM cache", "INSERT OR REPLACE INTO llm_cache(key, response, created) VALUES (?,?,?)",
                    [(key, json.dumps(data), time.time())])
