from __future__ import annotations

import threading
from pathlib import Path

from fakes import CountingLLM
from mailcascade.llm.cache import CachedLLM
from mailcascade.store import Store
from mailcascade.types import Attempt, ChatRequest, Finding, StageRecord


def _record() -> StageRecord:
    attempt = Attempt(1, "raw text", "length", "failed", (Finding("truncated", "offset 8", "reasked"),), 10, 5, 12.5)
    return StageRecord(stage="route", status="failed", prompt_hash="abc", model="m", attempts=(attempt,))


def test_verdicts_round_trip_with_schema_context_and_no_body_by_default(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    run = store.start_run("test", {"a": 1})
    store.log_stage(run, "e1", _record(), schema={"type": "object"}, context={"departments": ["a"]},
                    actions=["more_tokens"])
    rows = list(store.verdicts(run_id=run))
    assert len(rows) == 1
    row = rows[0]
    assert (row["stage"], row["raw"], row["finish_reason"], row["action"]) == ("route", "raw text", "length",
                                                                                "more_tokens")
    assert row["findings"] == [{"code": "truncated", "where": "offset 8", "action": "reasked"}]
    assert row["schema"] == {"type": "object"}
    assert row["email_body"] is None
    store.finish_run(run, {"n": 1})
    assert store.runs()[0]["summary"] == '{"n": 1}'


def test_cache_answers_the_same_request_once_and_counts(tmp_path: Path) -> None:
    inner = CountingLLM()
    llm = CachedLLM(inner, Store(tmp_path / "c.db"), "endpoint")
    req = ChatRequest(messages=(("user", "hi"),), max_tokens=5)
    first = llm.complete(req)
    second = llm.complete(req)
    third = llm.complete(ChatRequest(messages=(("user", "hi"),), max_tokens=6))  # another parameter: a miss
    assert inner.calls == 2
    assert first.text == second.text and not first.cached and second.cached
    assert first.attempts == 1 and second.attempts == 0
    assert third.text == "answer 2"
    assert (llm.stats.hits, llm.stats.misses) == (1, 2)


def test_store_is_safe_across_threads(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")

    def work(n: int) -> None:
        for i in range(20):
            store.log_stage("r", f"e{n}-{i}", _record(), schema=None, context=None, actions=["fail"])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(store.verdicts(run_id="r"))) == 80
