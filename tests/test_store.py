"""One store test suite, run on both backends: SQLite and a real PostgreSQL server on loopback (tests/pgserver.py)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import CountingLLM
from mailcascade.config import StoreSettings
from mailcascade.llm.cache import CachedLLM
from mailcascade.store import Store, StoreError, open_store
from mailcascade.store.migrations import LATEST, MIGRATIONS
from mailcascade.types import Attempt, ChatRequest, ChatResponse, Finding, Hit, StageRecord
from pgserver import PASSWORD, PostgresServer, find_binaries


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    if find_binaries() is None:
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql; scripts/test does it as root)")
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store target: a SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    server: PostgresServer = request.getfixturevalue("pg")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


def _record(n: int = 1) -> StageRecord:
    attempts = tuple(Attempt(i + 1, f"raw text {i}", "length", "failed",
                             (Finding("truncated", "offset 8", "reasked"),), 10, 5, 12.5) for i in range(n))
    return StageRecord(stage="route", status="failed", prompt_hash="abc", model="m", attempts=attempts)


def test_the_backend_follows_from_the_target(target: str) -> None:
    with Store(target) as store:
        assert store.backend == ("postgres" if target.startswith("postgresql://") else "sqlite")
        assert PASSWORD not in store.where and PASSWORD not in repr(store)


def test_verdicts_round_trip_with_schema_context_and_no_body_by_default(target: str) -> None:
    store = Store(target)
    run = store.start_run("test", {"a": 1})
    store.log_stage(run, "e1", _record(), schema={"type": "object"}, context={"departments": ["a"]},
                    actions=["more_tokens"])
    rows = list(store.verdicts(run_id=run))
    assert len(rows) == 1
    row = rows[0]
    assert (row["stage"], row["raw"], row["finish_reason"], row["action"]) == ("route", "raw text 0", "length",
                                                                                "more_tokens")
    assert row["findings"] == [{"code": "truncated", "where": "offset 8", "action": "reasked"}]
    assert row["schema"] == {"type": "object"} and row["context"] == {"departments": ["a"]}
    assert row["email_body"] is None and row["latency_ms"] == 12.5
    store.finish_run(run, {"n": 1})
    (only,) = store.runs()
    assert only["summary"] == '{"n": 1}' and only["finished"] >= only["started"] > 1.7e9
    store.close()


def test_cache_answers_the_same_request_once_and_counts(target: str) -> None:
    inner = CountingLLM()
    llm = CachedLLM(inner, Store(target), "endpoint")
    req = ChatRequest(messages=(("user", "hi"),), max_tokens=5)
    first = llm.complete(req)
    second = llm.complete(req)
    third = llm.complete(ChatRequest(messages=(("user", "hi"),), max_tokens=6))  # another parameter: a miss
    assert inner.calls == 2
    assert first.text == second.text and not first.cached and second.cached
    assert first.attempts == 1 and second.attempts == 0
    assert third.text == "answer 2"
    assert (llm.stats.hits, llm.stats.misses) == (1, 2)


def test_a_second_store_on_the_same_target_shares_the_caches_after_a_flush(target: str) -> None:
    hit = Hit(product_id="P1", passage_id="P1#0", score=0.5, text="a passage")
    response = ChatResponse(text="hello", finish_reason="stop", model="m", tokens_in=3, tokens_out=2,
                            latency_ms=7.0, attempts=2)
    with Store(target) as writer:
        writer.cache_put("k", response)
        writer.search_put("q", [hit])
        assert writer.cache_get("k") is not None  # read-your-writes before anything is committed
        writer.flush()
        with Store(target) as reader:  # another process, a Ray worker or a service replica
            assert reader.cache_get("k") == ChatResponse(text="hello", finish_reason="stop", model="m",
                                                         tokens_in=3, tokens_out=2, latency_ms=7.0, attempts=0,
                                                         cached=True)
            assert reader.search_get("q") == [hit]
            assert reader.cache_get("absent") is None and reader.search_get("absent") is None


def test_store_is_safe_across_threads_and_close_commits_every_queued_write(target: str) -> None:
    store = Store(target)

    def work(n: int) -> None:
        for i in range(50):
            store.log_stage("r", f"e{n}-{i}", _record(2), schema=None, context=None, actions=["fail"])
            store.cache_put(f"{n}-{i}", ChatResponse(text=str(i), finish_reason="stop", model="m"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    store.close()  # twice is harmless
    with Store(target) as again:
        rows = list(again.verdicts(run_id="r"))
        assert len(rows) == 400 and len({(r["email_id"], r["attempt"]) for r in rows}) == 400
        assert again.cache_get("3-49") is not None and again.cache_get("3-49").text == "49"  # type: ignore[union-attr]
        assert again.write_error == ""


def test_migrations_are_versioned_and_applied_once(target: str) -> None:
    with Store(target) as store:
        assert store.schema_version() == LATEST == len(MIGRATIONS[store.backend])  # type: ignore[attr-defined]
        store.start_run("x", {})
    with Store(target) as again:  # reopening applies nothing and keeps the data
        assert again.schema_version() == LATEST  # type: ignore[attr-defined]
        assert [r["command"] for r in again.runs()] == ["x"]
        rows = again._query("SELECT version FROM schema_version ORDER BY version", ())
        assert [r["version"] for r in rows] == list(range(1, LATEST + 1))


def test_a_sqlite_file_from_before_versioning_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema the unversioned store created, with a row in it
        conn.executescript(MIGRATIONS["sqlite"][0])
        conn.execute("INSERT INTO llm_cache(key, response, created) VALUES ('k', ?, 1.0)",
                     ('{"text": "old", "finish_reason": "stop", "model": "m"}',))
    with Store(path) as store:
        assert store.schema_version() == LATEST  # type: ignore[attr-defined]
        assert store.cache_get("k") is not None


def test_a_locked_store_drops_the_batch_with_one_warning(
    target: str, caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store(target, timeout_s=0.3)
    store.start_run("warm", {})
    store.flush()
    release = _lock_all_tables(target)
    try:
        with caplog.at_level(logging.WARNING, logger="mailcascade.store"):
            store.log_stage("r", "e1", _record(), schema=None, context=None, actions=[])
            store.cache_put("k", ChatResponse(text="x", finish_reason="stop", model="m"))
            assert store.cache_get("k") is not None  # the caller's view does not wait for the database
            store.flush()
    finally:
        release()
    assert "not written to" in store.write_error and "lock" in store.write_error.lower()
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert PASSWORD not in store.write_error
    store.log_stage("r", "e2", _record(), schema=None, context=None, actions=[])  # the lock is gone: written
    assert [r["email_id"] for r in store.verdicts(run_id="r")] == ["e2"]
    store.close()


def _lock_all_tables(target: str):  # type: ignore[no-untyped-def]
    """Another connection holds the store locked for writing; returns the function that releases it."""
    if target.startswith("postgresql://"):
        import psycopg

        conn = psycopg.connect(target)
        conn.execute("LOCK TABLE verdicts, llm_cache, search_cache, runs IN ACCESS EXCLUSIVE MODE")
    else:
        conn = sqlite3.connect(target, timeout=0.1)  # type: ignore[assignment]
        conn.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        conn.rollback()
        conn.close()

    return release


def test_a_store_that_cannot_be_opened_is_one_error_without_the_password(
    target: str, tmp_path: Path,
) -> None:
    if target.startswith("postgresql://"):
        bad = target.replace(PASSWORD, "wrong-pass-xyz")
        with pytest.raises(StoreError, match=r"cannot open the store postgresql://mc:\*\*\*@") as err:
            Store(bad, timeout_s=5)
        assert "wrong-pass-xyz" not in str(err.value) and "\n" not in str(err.value)
    else:
        (tmp_path / "folder.db").mkdir()
        with pytest.raises(StoreError, match="is a folder"):
            Store(tmp_path / "folder.db")


def test_open_store_picks_the_backend_from_the_settings(target: str, tmp_path: Path) -> None:
    settings = (StoreSettings(url=target) if target.startswith("postgresql://") else
                StoreSettings(path=target))
    with open_store(settings) as store:
        assert store.target == target
    with pytest.raises(StoreError, match="not a PostgreSQL URL"):
        open_store(StoreSettings(url="mysql://u:p@h/db"))


def test_an_in_memory_store_works(caplog: pytest.LogCaptureFixture) -> None:
    with Store(":memory:") as store:
        store.log_stage("r", "e1", _record(3), schema=None, context=None, actions=[])
        assert len(list(store.verdicts(run_id="r"))) == 3
    store.log_stage("r", "e2", _record(), schema=None, context=None, actions=[])  # after close: dropped, no raise
    assert "closed" in store.write_error


def test_the_store_url_password_is_masked_in_config(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    url = f"postgresql://mc:{PASSWORD}@127.0.0.1:5/db"
    shown = subprocess.run([sys.executable, "-m", "mailcascade.cli", "config"], capture_output=True, text=True,
                           cwd=tmp_path, env={**os.environ, "MAILCASCADE_STORE__URL": url}, check=False)
    assert shown.returncode == 0 and PASSWORD not in shown.stdout
    assert json.loads(shown.stdout)["store"]["url"] == "postgresql://mc:***@127.0.0.1:5/db"


def test_batches_are_claimed_and_completed_per_email_exactly_once(target: str) -> None:
    with Store(target) as store:
        store.add_batch("b1", "route", [(f"e{n}", f'{{"id": "e{n}"}}') for n in range(5)])
        store.add_batch("b2", "route", [("x0", '{"id": "x0"}')])
        assert store.batch("b1") == {"id": "b1", "status": "queued", "size": 5, "done": 0, "results": []}
        first = store.claim_batch_emails(3)
        assert [(r["batch_id"], r["position"], r["email_id"], r["stages"]) for r in first] == [
            ("b1", 0, "e0", "route"), ("b1", 1, "e1", "route"), ("b1", 2, "e2", "route")]
        second = store.claim_batch_emails(10)  # what is claimed is not claimed again
        assert [(r["batch_id"], r["position"]) for r in second] == [("b1", 3), ("b1", 4), ("b2", 0)]
        assert store.claim_batch_emails(10) == []
        store.complete_batch_email("b1", 0, first[0]["claim"], '{"id": "e0"}', keep_email=False)
        store.complete_batch_email("b1", 0, first[0]["claim"], '{"id": "again"}', keep_email=False)  # no-op
        assert store.batch("b1") == {"id": "b1", "status": "running", "size": 5, "done": 1,
                                     "results": [{"id": "e0"}]}
        assert store.queued_emails() == 5
    with Store(target) as restarted:  # a server that died held e1..e4 and x0
        assert restarted.requeue_claimed() == 5
        again = restarted.claim_batch_emails(10)
        assert [r["email_id"] for r in again] == ["e1", "e2", "e3", "e4", "x0"]
        for row in again:
            restarted.complete_batch_email(row["batch_id"], row["position"], row["claim"],
                                           f'{{"id": "{row["email_id"]}"}}', keep_email=True)
        done = restarted.batch("b1")
        assert done is not None and done["status"] == "done"
        assert [r["id"] for r in done["results"]] == ["e0", "e1", "e2", "e3", "e4"]
        rows = restarted._query("SELECT email_id, email, claims FROM batch_emails ORDER BY batch_id, position", ())
        assert [(r["email_id"], r["claims"]) for r in rows] == [("e0", 1), ("e1", 2), ("e2", 2), ("e3", 2),
                                                                 ("e4", 2), ("x0", 2)]
        assert rows[0]["email"] == "" and rows[1]["email"] == '{"id": "e1"}'  # text kept only when asked
        assert restarted.queued_emails() == 0 and restarted.requeue_claimed() == 0


def test_served_results_and_the_latest_feedback_per_email(target: str) -> None:
    with Store(target) as store:
        store.put_served("e1", '{"id": "e1", "v": 1}', subject=None, body=None, sender=None)
        store.put_served("e1", '{"id": "e1", "v": 2}', subject="S", body="B", sender="a@b")  # the latest wins
        store.put_served("e2", '{"id": "e2"}', subject=None, body=None, sender=None)
        served = store.served("e1")
        assert served is not None and served["record"] == '{"id": "e1", "v": 2}' and served["body"] == "B"
        assert store.served("nope") is None
        store.add_feedback("f1", "e1", "orders", "first", "edited")
        store.add_feedback("f2", "e2", "billing", "", "discarded")
        store.add_feedback("f3", "e1", "returns", "second", "rerouted")
        rows = store.feedback_rows()
        assert [(r["feedback_id"], r["email_id"], r["department"], r["outcome"]) for r in rows] == [
            ("f2", "e2", "billing", "discarded"), ("f3", "e1", "returns", "rerouted")]
        assert rows[1]["subject"] == "S" and rows[0]["subject"] is None
