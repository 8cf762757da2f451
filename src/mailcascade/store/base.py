"""The store's one interface: the failure log (every validator verdict), the LLM and retrieval caches, and runs.

`Store(target)` opens SQLite for a file path (or ":memory:") and PostgreSQL for a `postgresql://` URL; both
backends share everything here and differ only in how they connect, migrate, write a batch and query.

Writes are off the hot path: they are queued and a writer thread commits them in batches (one transaction per
batch), so a model call never waits for the database. Reads of the log (`runs`, `verdicts`) first wait for the
queued writes; `flush()` and `close()` do too, so nothing queued is lost. A cache answer written or read before by
this store comes from memory (microseconds); others come from the database.

Opening a store that cannot be used raises StoreError naming the target (passwords masked). After that, the store
never changes an email's result: a batch that fails (disk full, a database locked by another process for longer
than `timeout_s`, a lost connection) is dropped, logged once as a warning, and recorded in `write_error`, so the
caller can say the failure log is incomplete and why; a cache read that fails is a miss.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcascade.config import mask_url
from mailcascade.errors import MailcascadeError
from mailcascade.memo import Memo
from mailcascade.types import ChatResponse, Hit, StageRecord

log = logging.getLogger("mailcascade.store")

Rows = Sequence[Sequence[Any]]
BATCH_MAX = 2000  # queued writes committed in one transaction at most
IDLE_S = 0.2  # the writer thread ends after this long with nothing to write (a new write starts it again)
LINGER_S = 0.02  # after the first queued write, the writer waits this long for more (unless someone flushes)
MEMO_MAX = 20_000  # cache answers kept in memory per store

_UPSERT_RUN = ("INSERT INTO runs(run_id, command, started, finished, config, summary) VALUES (?,?,?,NULL,?,NULL)"
               " ON CONFLICT(run_id) DO UPDATE SET command=excluded.command, started=excluded.started,"
               " finished=NULL, config=excluded.config, summary=NULL")
_FINISH_RUN = "UPDATE runs SET finished=?, summary=? WHERE run_id=?"
_INSERT_VERDICT = ("INSERT INTO verdicts(run_id, email_id, stage, model, prompt_hash, attempt, raw, finish_reason,"
                   " status, findings, action, tokens_in, tokens_out, latency_ms, cached, schema, context,"
                   " email_body, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
_UPSERT_LLM = ("INSERT INTO llm_cache(key, response, created) VALUES (?,?,?)"
               " ON CONFLICT(key) DO UPDATE SET response=excluded.response, created=excluded.created")
_UPSERT_SERVED = ("INSERT INTO served(email_id, record, subject, body, sender, created) VALUES (?,?,?,?,?,?)"
                  " ON CONFLICT(email_id) DO UPDATE SET record=excluded.record, subject=excluded.subject,"
                  " body=excluded.body, sender=excluded.sender, created=excluded.created")
_UPSERT_SEARCH = ("INSERT INTO search_cache(key, hits, created) VALUES (?,?,?)"
                  " ON CONFLICT(key) DO UPDATE SET hits=excluded.hits, created=excluded.created")


class StoreError(MailcascadeError):
    """The store cannot be opened or used at all."""


def is_postgres_url(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class Write:
    """One queued write: `rows()` is called on the writer thread, so building the rows costs the caller nothing."""

    what: str
    sql: str
    rows: Callable[[], Rows]


class Store:
    """Open with `Store(path_or_url, timeout_s=...)`; the backend follows from the target."""

    backend = ""

    def __new__(cls, target: str | Path, *, timeout_s: float = 30.0) -> Store:
        if cls is Store:
            from mailcascade.store.postgres import PostgresStore
            from mailcascade.store.sqlite import SQLiteStore

            cls = PostgresStore if is_postgres_url(str(target)) else SQLiteStore
        return object.__new__(cls)

    def __init__(self, target: str | Path, *, timeout_s: float = 30.0) -> None:
        self.target = str(target)
        self.where = mask_url(self.target)  # the target as it may be shown
        self.timeout_s = timeout_s
        self.write_error = ""  # the first write that failed, if any: the failure log or cache is incomplete
        self._llm_memo = Memo(MEMO_MAX)
        self._search_memo = Memo(MEMO_MAX)
        self._cond = threading.Condition()
        self._queue: list[Write] = []
        self._queued = 0  # writes ever queued
        self._done = 0  # writes ever committed or dropped
        self._writer: threading.Thread | None = None
        self._waiting = 0  # callers inside flush(): the writer commits at once instead of lingering
        self._closed = False
        self._open()

    # backend ------------------------------------------------------------
    def _open(self) -> None:
        """Connect and apply the missing migrations; StoreError when the store cannot be used."""
        raise NotImplementedError

    def _write_batch(self, batch: Sequence[tuple[str, Rows]]) -> None:
        """Execute every (sql, rows) in one transaction; raise the backend's error when it fails."""
        raise NotImplementedError

    def _query(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _errors(self) -> tuple[type[BaseException], ...]:
        """The backend's database errors (a write or read failing with one of these is dropped or a miss)."""
        raise NotImplementedError

    # the writer ---------------------------------------------------------
    def _submit(self, write: Write) -> None:
        with self._cond:
            if self._closed:  # a write after close is dropped like a failed one
                if not self.write_error:
                    self.write_error = f"{write.what} not written to {self.where}: the store was closed"
                    log.warning("the failure log is incomplete (results are not affected): %s", self.write_error)
                return
            self._queue.append(write)
            self._queued += 1
            if self._writer is None:
                # not a daemon: at exit the interpreter waits for the queued writes to be committed
                self._writer = threading.Thread(target=self._drain, name="mailcascade-store-writer")
                self._writer.start()
            elif len(self._queue) == 1 or len(self._queue) >= BATCH_MAX:  # wake it only when it has to act
                self._cond.notify_all()

    def _drain(self) -> None:
        while True:
            with self._cond:
                if not self._queue and not self._closed:
                    self._cond.wait(IDLE_S)
                if not self._queue:
                    self._writer = None
                    self._cond.notify_all()
                    return
                self._cond.wait_for(lambda: len(self._queue) >= BATCH_MAX or self._waiting or self._closed,
                                    LINGER_S)  # group commit: one transaction for what arrives meanwhile
                batch, self._queue = self._queue[:BATCH_MAX], self._queue[BATCH_MAX:]
            self._commit(batch)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def _commit(self, batch: Sequence[Write]) -> None:
        try:
            grouped: dict[str, list[Sequence[Any]]] = {}  # one executemany per statement, in first-seen order
            for w in batch:
                grouped.setdefault(w.sql, []).extend(w.rows())
            self._write_batch(list(grouped.items()))
        except Exception as exc:  # the writer never dies: a batch that fails is dropped, whatever the cause
            if not self.write_error:
                what = ", ".join(dict.fromkeys(w.what for w in batch))
                self.write_error = f"{what} not written to {self.where}: {self._scrub(exc)}"
                log.warning("the failure log is incomplete (results are not affected): %s", self.write_error)

    def flush(self) -> None:
        """Wait until every write queued so far is committed (or dropped with a warning)."""
        with self._cond:
            target = self._queued
            self._waiting += 1
            self._cond.notify_all()
            try:
                while self._done < target:
                    self._cond.wait()
            finally:
                self._waiting -= 1

    def close(self) -> None:
        """Commit what is queued, then close the connections. Closing twice is harmless."""
        self.flush()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._writer is not None:
                self._cond.notify_all()
                self._cond.wait()
        self._close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scrub(self, exc: BaseException) -> str:
        """An error's text with the target's password (if any) hidden."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        password = self.target.partition("://")[2].partition("@")[0].partition(":")[2]
        return text.replace(password, "***") if password and "@" in self.target else text

    def _read(self, sql: str, key: str) -> dict[str, Any] | None:
        """A cache lookup; a read that fails (a locked or damaged database, a lost connection) is a miss."""
        try:
            rows = self._query(sql, (key,))
        except self._errors() as exc:
            log.warning("cache read failed in %s (treated as a miss): %s", self.where, self._scrub(exc))
            return None
        return rows[0] if rows else None

    # runs -------------------------------------------------------------
    def start_run(self, command: str, config: Mapping[str, Any], run_id: str | None = None) -> str:
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        row = (run_id, command, time.time(), json.dumps(config, sort_keys=True))
        self._submit(Write("run", _UPSERT_RUN, lambda: [row]))
        return run_id

    def finish_run(self, run_id: str, summary: Mapping[str, Any]) -> None:
        """Record the end of a run and wait for every queued write: the log is complete when this returns."""
        row = (time.time(), json.dumps(summary), run_id)
        self._submit(Write("run summary", _FINISH_RUN, lambda: [row]))
        self.flush()

    def runs(self) -> list[dict[str, Any]]:
        self.flush()
        return self._query("SELECT * FROM runs ORDER BY started", ())

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

        def rows() -> Rows:
            schema_text = json.dumps(schema, sort_keys=True) if schema is not None else None
            context_text = json.dumps(context, sort_keys=True) if context is not None else None
            return [
                (
                    run_id, email_id, record.stage, record.model, record.prompt_hash, a.number, a.raw,
                    a.finish_reason, a.status, json.dumps([f.to_dict() for f in a.findings]),
                    actions[i] if i < len(actions) else "", a.tokens_in, a.tokens_out, a.latency_ms, int(a.cached),
                    schema_text, context_text, email_body, now,
                )
                for i, a in enumerate(record.attempts)
            ]

        self._submit(Write("verdicts", _INSERT_VERDICT, rows))

    def verdicts(self, *, run_id: str | None = None, stage: str | None = None) -> Iterator[dict[str, Any]]:
        self.flush()
        sql = "SELECT * FROM verdicts WHERE 1=1"
        args: list[Any] = []
        if run_id:
            sql += " AND run_id=?"
            args.append(run_id)
        if stage:
            sql += " AND stage=?"
            args.append(stage)
        for row in self._query(sql + " ORDER BY id", args):
            row["findings"] = json.loads(row["findings"] or "[]")
            row["schema"] = json.loads(row["schema"]) if row["schema"] else None
            row["context"] = json.loads(row["context"]) if row["context"] else None
            yield row

    # search cache: retrieval results by index and query ----------------
    def search_get(self, key: str) -> list[Hit] | None:
        found: tuple[Hit, ...] | None = self._search_memo.get(key)
        if found is None:
            row = self._read("SELECT hits FROM search_cache WHERE key=?", key)
            if row is None:
                return None
            found = tuple(Hit(**h) for h in json.loads(row["hits"]))
            self._search_memo.put(key, found)
        return list(found)

    def search_put(self, key: str, hits: Sequence[Hit]) -> None:
        kept = tuple(hits)
        self._search_memo.put(key, kept)
        now = time.time()

        def rows() -> Rows:
            data = json.dumps([{"product_id": h.product_id, "passage_id": h.passage_id, "score": h.score,
                                "text": h.text} for h in kept])
            return [(key, data, now)]

        self._submit(Write("retrieval cache", _UPSERT_SEARCH, rows))

    # LLM response cache -----------------------------------------------
    def cache_get(self, key: str) -> ChatResponse | None:
        found: ChatResponse | None = self._llm_memo.get(key)
        if found is None:
            row = self._read("SELECT response FROM llm_cache WHERE key=?", key)
            if row is None:
                return None
            data = json.loads(row["response"])
            found = ChatResponse(**{**data, "cached": True, "attempts": 0})  # answered here: no request was sent
            self._llm_memo.put(key, found)
        return found

    def cache_put(self, key: str, response: ChatResponse) -> None:
        self._llm_memo.put(key, ChatResponse(
            text=response.text, finish_reason=response.finish_reason, model=response.model,
            tokens_in=response.tokens_in, tokens_out=response.tokens_out, latency_ms=response.latency_ms,
            attempts=0, cached=True))
        now = time.time()

        def rows() -> Rows:
            data = {
                "text": response.text, "finish_reason": response.finish_reason, "model": response.model,
                "tokens_in": response.tokens_in, "tokens_out": response.tokens_out,
                "latency_ms": response.latency_ms, "attempts": response.attempts,
            }
            return [(key, json.dumps(data), now)]

        self._submit(Write("LLM cache", _UPSERT_LLM, rows))

    # the HTTP service: batches claimed and completed per email (each in one transaction), its answers, feedback
    def _transaction(self, what: str, statements: Sequence[tuple[str, Rows]]) -> None:
        """Statements in one transaction, now (not queued): StoreError (nothing written) when it fails."""
        try:
            self._write_batch(statements)
        except self._errors() as exc:
            raise StoreError(f"{what} not written to {self.where}: {self._scrub(exc)}") from None

    def add_batch(self, batch_id: str, stages: str, emails: Sequence[tuple[str, str]]) -> None:
        """Queue a batch: `emails` are (email id, email JSON); durable when this returns (StoreError if not)."""
        now = time.time()
        self._transaction("batch", [
            ("INSERT INTO batches(batch_id, stages, size, created) VALUES (?,?,?,?)",
             [(batch_id, stages, len(emails), now)]),
            ("INSERT INTO batch_emails(batch_id, position, email_id, email, state, claim, claims, result, created,"
             " updated) VALUES (?,?,?,?,'queued',NULL,0,NULL,?,?)",
             [(batch_id, n, ident, data, now, now) for n, (ident, data) in enumerate(emails)]),
        ])

    def requeue_claimed(self) -> int:
        """Put emails claimed by a server that stopped before finishing them (SIGKILL, a crash) back in the queue;
        returns how many. Call at start-up, before claiming: one server works on a store's batches at a time."""
        count = int(self._query("SELECT COUNT(*) AS n FROM batch_emails WHERE state='running'", ())[0]["n"])
        if count:
            self._transaction("batch requeue", [(
                "UPDATE batch_emails SET state='queued', claim=NULL, updated=? WHERE state='running'",
                [(time.time(),)])])
        return count

    def claim_batch_emails(self, limit: int) -> list[dict[str, Any]]:
        """Claim up to `limit` queued emails, oldest batch first (rows: batch_id, position, email_id, email, stages,
        claim): one transaction marks them running under a fresh claim token."""
        token = uuid.uuid4().hex
        self._transaction("batch claim", [(
            "UPDATE batch_emails SET state='running', claim=?, claims=claims+1, updated=? WHERE state='queued' AND"
            " (batch_id, position) IN (SELECT batch_id, position FROM batch_emails WHERE state='queued'"
            " ORDER BY created, batch_id, position LIMIT ?)", [(token, time.time(), limit)])])
        return self._query(
            "SELECT e.batch_id, e.position, e.email_id, e.email, b.stages, e.claim FROM batch_emails e JOIN batches b"
            " ON b.batch_id = e.batch_id WHERE e.claim=? ORDER BY e.created, e.batch_id, e.position", (token,))

    def complete_batch_email(self, batch_id: str, position: int, claim: str, record: str, *,
                             keep_email: bool) -> None:
        """Store the result of a claimed email (its text is dropped unless `keep_email`), in one transaction."""
        self._transaction("batch result", [(
            "UPDATE batch_emails SET state='done', result=?, updated=?" + ("" if keep_email else ", email=''") +
            " WHERE batch_id=? AND position=? AND claim=? AND state='running'",
            [(record, time.time(), batch_id, position, claim)])])

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        """{"id", "status", "size", "done", "results"} with the results finished so far, in batch order."""
        head = self._query("SELECT batch_id, size FROM batches WHERE batch_id=?", (batch_id,))
        if not head:
            return None
        rows = self._query("SELECT state, result FROM batch_emails WHERE batch_id=? ORDER BY position", (batch_id,))
        done = [r["result"] for r in rows if r["state"] == "done"]
        started = any(r["state"] != "queued" for r in rows)
        status = "done" if len(done) == len(rows) else "running" if started else "queued"
        return {"id": batch_id, "status": status, "size": head[0]["size"], "done": len(done),
                "results": [json.loads(r) for r in done]}

    def queued_emails(self) -> int:
        """Batch emails not done yet."""
        return int(self._query("SELECT COUNT(*) AS n FROM batch_emails WHERE state <> 'done'", ())[0]["n"])

    def put_served(self, email_id: str, record: str, *, subject: str | None, body: str | None,
                   sender: str | None) -> None:
        """The latest result the service gave for an email id (queued like the failure log); the email text only
        when given (store.store_email_bodies)."""
        row = (email_id, record, subject, body, sender, time.time())
        self._submit(Write("served result", _UPSERT_SERVED, lambda: [row]))

    def served(self, email_id: str) -> dict[str, Any] | None:
        self.flush()
        rows = self._query("SELECT * FROM served WHERE email_id=?", (email_id,))
        return rows[0] if rows else None

    def add_feedback(self, feedback_id: str, email_id: str, department: str, sent_reply: str, outcome: str) -> None:
        """One agent's feedback; durable when this returns (StoreError if not)."""
        self._transaction("feedback", [(
            "INSERT INTO feedback(feedback_id, email_id, department, sent_reply, outcome, created)"
            " VALUES (?,?,?,?,?,?)", [(feedback_id, email_id, department, sent_reply, outcome, time.time())])])

    def feedback_rows(self) -> list[dict[str, Any]]:
        """The latest feedback per email, with what the service answered for it (record, email text if kept)."""
        self.flush()
        return self._query(
            "SELECT f.feedback_id, f.email_id, f.department, f.sent_reply, f.outcome, f.created, s.record,"
            " s.subject, s.body, s.sender FROM feedback f JOIN served s ON s.email_id = f.email_id"
            " WHERE f.created = (SELECT MAX(g.created) FROM feedback g WHERE g.email_id = f.email_id)"
            " ORDER BY f.created, f.feedback_id", ())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where!r})"
