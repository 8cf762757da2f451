"""The cascade end to end through the real OpenAI client against the fake server on loopback."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from fakes import HashEmbedder, sensible, stage_of
from fakeserver import FakeServer, Reply, Status
from mailcascade.catalog import build_index, catalog_passages, load_catalog
from mailcascade.config import LLMSettings, Settings, StoreSettings
from mailcascade.errors import EmailParseError
from mailcascade.llm import OpenAIClient
from mailcascade.pipeline import Given, Pipeline
from mailcascade.prompts import load_prompts
from mailcascade.record import record_dict
from mailcascade.stages.retrieve import search
from mailcascade.store import Store
from mailcascade.types import Email, Hit

CATALOG = Path(__file__).resolve().parents[1] / "data" / "catalog.jsonl"
ROUTE_OK = json.dumps({"department": "returns", "confidence": 0.8, "reason": "wants a refund"})
DRAFT_OK = json.dumps({"reply": "We will refund you.", "product_ids": []})


@pytest.fixture(scope="module")
def index():  # type: ignore[no-untyped-def]
    return build_index(catalog_passages(load_catalog(CATALOG)), HashEmbedder())


def make_pipeline(server: FakeServer, tmp_path: Path, index, **validation: object) -> Pipeline:  # type: ignore[no-untyped-def]
    settings = Settings()
    settings = settings.replace(
        llm=LLMSettings(base_url=server.base_url, model="fake-model", max_retries=2, backoff_initial_s=0.01,
                        backoff_max_s=0.02, timeout_s=5),
        store=settings.store.__class__(path=str(tmp_path / "log.db"), cache=False),
    )
    if validation:
        settings = settings.replace(validation=settings.validation.__class__(**validation))  # type: ignore[arg-type]
    return Pipeline(settings, OpenAIClient(settings.llm), load_prompts(settings.prompts_path()),
                    store=Store(settings.store.path), index=index, embedder=None)


EMAIL = Email(id="e1", subject="Refund please", body="I returned the Trail shoes last week. Where is my refund?")


def test_a_clean_run_gives_department_hits_draft_and_stage_records(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        result = make_pipeline(server, tmp_path, index).run(EMAIL)
        bodies = server.bodies
    assert result.status == "ok", result.error
    assert result.department == "returns"
    assert len(result.hits) == 5 and all(h.score >= result.hits[-1].score for h in result.hits)
    assert result.draft is not None and result.draft.product_ids == (result.hits[0].product_id,)
    assert [s.stage for s in result.stages] == ["route", "retrieve", "draft"]
    assert result.stages[1].model.startswith("fake-hash:flat:")  # the trace names the index that answered
    route = result.stages[0]
    assert route.status == "ok" and len(route.attempts) == 1 and route.attempts[0].status == "clean"
    assert len(route.prompt_hash) == 12 and route.tokens_in > 0
    # the route request carried the schema with the configured departments as an enum
    schema = bodies[0]["response_format"]["schema"]
    assert "out_of_scope" in schema["properties"]["department"]["enum"]
    record = record_dict(result)
    assert set(record) >= {"id", "status", "department", "hits", "draft", "stages"}
    assert set(record["stages"][0]) >= {"stage", "prompt_hash", "attempts", "failure_codes", "tokens_in",
                                        "tokens_out", "latency_ms"}


def test_chatter_and_fences_are_repaired_and_recorded(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        server.push(Reply(f"Sure! Here is the JSON:\n```json\n{ROUTE_OK}\n```\nLet me know if you need more."))
        result = make_pipeline(server, tmp_path, index).run(EMAIL)
    route = result.stages[0]
    assert result.status == "ok" and result.department == "returns"
    assert route.attempts[0].status == "repaired"
    assert {"prefix_text", "code_fence", "suffix_text"} <= set(route.failure_codes)


def test_an_enum_violation_is_reasked_with_the_allowed_values(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    bad = json.dumps({"department": "complaints", "confidence": 0.7, "reason": "x"})
    with FakeServer(sensible) as server:
        server.push(Reply(bad))
        result = make_pipeline(server, tmp_path, index).run(EMAIL)
        route_requests = [b for b in server.bodies if stage_of(b) == "route"]
    assert result.status == "ok"
    assert len(route_requests) == 2
    reask = route_requests[1]["messages"][-1]["content"]
    assert "billing" in reask and "out_of_scope" in reask  # names the allowed values
    assert route_requests[1]["messages"][-2] == {"role": "assistant", "content": bad}
    first = result.stages[0].attempts[0]
    assert any(f.code == "enum_violation" and f.action == "reasked" for f in first.findings)


def test_truncated_output_is_retried_with_more_tokens(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        server.push(Reply('{"department": "returns", "confid', finish_reason="length"))
        result = make_pipeline(server, tmp_path, index).run(EMAIL)
        route_requests = [b for b in server.bodies if stage_of(b) == "route"]
    assert result.status == "ok"
    assert route_requests[1]["max_tokens"] > route_requests[0]["max_tokens"]
    assert "truncated" in result.stages[0].failure_codes


def test_the_same_failure_twice_stops_and_gives_a_failure_record(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(lambda body: Reply("The customer wants their money back for the shoes.")) as server:
        result = make_pipeline(server, tmp_path, index, max_attempts=5).run(EMAIL)
        calls = len(server.chat_requests)
    assert result.status == "failed"
    assert "route" in result.error and "same failure twice" in result.error
    assert calls == 2  # no_json twice in a row: stop, although 5 attempts were allowed
    assert result.stages[0].status == "failed" and result.stages[-1].status == "skipped"


def test_a_refusal_is_not_retried_blindly(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(lambda body: Reply("I'm sorry, but I can't help with that request.")) as server:
        result = make_pipeline(server, tmp_path, index, max_attempts=5).run(EMAIL)
        calls = len(server.chat_requests)
    assert result.status == "failed" and calls == 1
    assert result.stages[0].failure_codes == ("refusal",)


def test_server_errors_are_retried_by_the_client(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        server.push(Status(500), Status(429, retry_after=0.01))
        result = make_pipeline(server, tmp_path, index).run(EMAIL)
    assert result.status == "ok"
    assert len(result.stages[0].attempts) == 1  # one validated attempt, three HTTP attempts under it
    assert result.stages[0].attempts[0].http_attempts == 3
    assert record_dict(result)["stages"][0]["http_attempts"] == 3


def test_one_bad_email_does_not_take_the_batch_down(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    def responder(body: dict[str, object]) -> object:
        text = json.dumps(body["messages"])
        return Status(400, "bad request") if "POISON" in text else sensible(body)  # type: ignore[arg-type]

    emails: list[Email | EmailParseError] = [
        Email(id="a", subject="Invoice", body="I need an invoice"),
        Email(id="b", subject="POISON", body="this one makes the server answer 400"),
        EmailParseError("empty file", source="broken.eml"),
        Email(id="c", subject="Password", body="I forgot my password"),
    ]
    with FakeServer(responder) as server:  # type: ignore[arg-type]
        pipeline = make_pipeline(server, tmp_path, index)
        seen: list[int] = []
        results = pipeline.run_many(emails, concurrency=3, on_result=lambda i, r: seen.append(i))
    assert [r.id for r in results] == ["a", "b", "broken.eml", "c"]
    assert [r.status for r in results] == ["ok", "failed", "failed", "ok"]
    assert "400" in results[1].error and results[2].error == "empty file"
    assert sorted(seen) == [0, 1, 2, 3]


def test_a_pipeline_is_safe_to_share_across_threads(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        pipeline = make_pipeline(server, tmp_path, index)
        results: dict[str, str] = {}

        def work(n: int) -> None:
            for i in range(3):
                r = pipeline.run(Email(id=f"t{n}-{i}", subject="Invoice", body=f"invoice number {n}{i}"))
                results[r.id] = r.status + ":" + str(r.department)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 12 and set(results.values()) == {"ok:billing"}


def test_every_verdict_is_logged_without_email_bodies(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        server.push(Reply("```json\n" + ROUTE_OK + "\n```"))
        pipeline = make_pipeline(server, tmp_path, index)
        pipeline.run(EMAIL)
        pipeline.close()  # commits the store's queued writes
    rows = list(Store(tmp_path / "log.db").verdicts(run_id=pipeline.run_id))
    assert [(r["stage"], r["status"]) for r in rows] == [("route", "repaired"), ("draft", "clean")]
    assert rows[0]["raw"].startswith("```json") and rows[0]["email_body"] is None
    assert rows[0]["schema"]["properties"]["department"]["enum"][-1] == "out_of_scope"


def test_given_outputs_replace_stages(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    hit = Hit(product_id="P001", passage_id="P001#0", score=1.0, text="gold passage")
    with FakeServer(sensible) as server:
        result = make_pipeline(server, tmp_path, index).run(
            EMAIL, stages=("draft",), given=Given(department="billing", hits=(hit,)))
        bodies = server.bodies
    assert len(bodies) == 1 and stage_of(bodies[0]) == "draft"
    assert "gold passage" in bodies[0]["messages"][0]["content"]
    assert [s.status for s in result.stages] == ["given", "given", "ok"]
    assert result.draft is not None and result.draft.product_ids == ("P001",)


def test_a_cache_only_rerun_adds_no_calls_or_tokens_to_the_failure_log(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    from mailcascade.failures import code_stats, funnel, load_rows
    from mailcascade.llm.cache import CachedLLM

    with FakeServer(lambda body: Reply("Sure! " + (ROUTE_OK if stage_of(body) == "route" else DRAFT_OK))) as server:
        settings = Settings().replace(llm=LLMSettings(base_url=server.base_url, model="fake-model"))
        store = Store(tmp_path / "log.db")
        llm = CachedLLM(OpenAIClient(settings.llm), store, "fake")
        prompts = load_prompts(settings.prompts_path())
        first = Pipeline(settings, llm, prompts, store=store, index=index, run_id="one").run(EMAIL)
        again = Pipeline(settings, llm, prompts, store=store, index=index, run_id="two").run(EMAIL)
        sent = len(server.chat_requests)
    assert first.status == again.status == "ok" and sent == 2
    rows = load_rows(store)
    stats = funnel(rows)
    assert sum(row["calls"] for row in stats.values()) == 2  # one route and one draft call, not four
    tokens = sum(s.tokens_in + s.tokens_out for s in first.stages)
    assert sum(row["tokens"] for row in stats.values()) == tokens
    assert sum(s["outputs"] for s in code_stats(rows) if s["code"] == "prefix_text") == 2


def test_an_answer_cached_under_another_sent_schema_is_not_served(tmp_path: Path, index,  # type: ignore[no-untyped-def]
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The LLM cache key is what is sent: when the response_format sent for the same prompt schema changes (here:
    an earlier version that sent the range bounds in json_object mode), the answer given under the old one is not
    served."""
    from mailcascade.llm import client

    with FakeServer(sensible) as server:
        settings = Settings().replace(llm=LLMSettings(base_url=server.base_url, model="fake-model"),
                                      store=StoreSettings(path=str(tmp_path / "log.db")))
        with monkeypatch.context() as earlier:
            earlier.setattr(client, "GRAMMAR_BOUNDS", frozenset())
            with Pipeline.from_config(settings=settings, index=index, embedder=HashEmbedder()) as first:
                assert first.run(EMAIL, stages=("route",)).status == "ok"
        with Pipeline.from_config(settings=settings, index=index, embedder=HashEmbedder()) as again:
            assert again.run(EMAIL, stages=("route",)).status == "ok"
            assert again.run(EMAIL, stages=("route",)).stages[0].attempts[0].cached  # same schema sent: a hit
        sent = [body["response_format"]["schema"] for body in server.bodies]
    assert len(sent) == 2 and sent[0] != sent[1]
    assert "maximum" in json.dumps(sent[0]) and "maximum" not in json.dumps(sent[1])  # confidence <= 1


def test_run_many_closes_its_model_connections_before_its_event_loop_ends(  # type: ignore[no-untyped-def]
        tmp_path: Path, index, caplog: pytest.LogCaptureFixture) -> None:
    """Each run_many has an event loop of its own. A model client left open on it is closed by the SDK when it is
    garbage-collected, on whatever loop runs then, which fails on the dead loop's connections: "Task exception was
    never retrieved ... Event loop is closed" on the user's stderr (seen between two evals in one process)."""
    import asyncio
    import gc
    import logging

    with FakeServer(sensible, keep_alive=True) as server:  # open connections are what the SDK's late close trips on
        settings = make_pipeline(server, tmp_path, index).settings
        box = [Pipeline.from_config(settings=settings, index=index, embedder=HashEmbedder())]
        for n in range(2):
            results = box[0].run_many([Email(id=f"m{n}", subject="Refund", body="Where is my refund?")],
                                      stages=("route",))
            assert [r.status for r in results] == ["ok"]
        box[0].close()

        async def drop_the_pipeline_on_another_loop() -> None:
            box.clear()  # its last reference: the pipeline and its model client are freed here, on this loop
            gc.collect()
            await asyncio.sleep(0.05)  # the SDK's close task, if it made one, runs and fails here
            gc.collect()

        with caplog.at_level(logging.ERROR, logger="asyncio"):
            asyncio.run(drop_the_pipeline_on_another_loop())
            gc.collect()
    assert not [r.getMessage() for r in caplog.records if r.name == "asyncio"]


class _WatchedSearcher:
    """The index, noting when it is searched and with which query; optionally failing."""

    def __init__(self, index, fail: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.index, self.fail = index, fail
        self.searched = threading.Event()
        self.queries: list[str] = []

    @property
    def name(self) -> str:
        return str(self.index.name)

    def search(self, query: str, k: int) -> list[Hit]:
        self.queries.append(query)
        self.searched.set()
        if self.fail:
            raise RuntimeError("the index is broken")
        return list(self.index.search(query, k))


def _route_waits_for(searcher: _WatchedSearcher, seen: list[bool]):  # type: ignore[no-untyped-def]
    """A model whose route answer waits (up to 2 s) for the retrieval search, noting whether it came first."""
    def respond(body: dict[str, object]):  # type: ignore[no-untyped-def]
        if stage_of(body) == "route":
            seen.append(searcher.searched.wait(2.0))
        return sensible(body)
    return respond


def test_retrieval_runs_alongside_the_model_route_call(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    searcher, seen = _WatchedSearcher(index), []
    with FakeServer(_route_waits_for(searcher, seen)) as server:
        result = make_pipeline(server, tmp_path, searcher).run(EMAIL)
    assert seen == [True]  # the search came while the route call was still waiting on the model
    assert result.status == "ok" and result.department == "returns"
    assert [s.stage for s in result.stages] == ["route", "retrieve", "draft"]
    assert set(searcher.queries) == {f"{EMAIL.subject}\n{EMAIL.body}"}  # the query without the route
    assert result.hits == tuple(search(index, searcher.queries[0], Settings().retrieval))
    assert result.draft is not None and result.draft.product_ids == (result.hits[0].product_id,)


def test_a_query_that_names_the_route_waits_for_it(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    searcher, seen = _WatchedSearcher(index), []
    with FakeServer(_route_waits_for(searcher, seen)) as server:
        base = make_pipeline(server, tmp_path, searcher)
        settings = base.settings.replace(retrieval=base.settings.retrieval.__class__(include_route_in_query=True))
        result = Pipeline(settings, base.llm, base.prompts, store=None, index=searcher, embedder=None).run(EMAIL)
    assert seen == [False] and result.status == "ok"
    assert set(searcher.queries) == {f"returns\n{EMAIL.subject}\n{EMAIL.body}"}


def test_a_failed_early_retrieval_is_the_emails_failure_record(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    searcher = _WatchedSearcher(index, fail=True)
    with FakeServer(sensible) as server:
        other = Email(id="e2", subject="Where is my order", body="It is late.")
        results = make_pipeline(server, tmp_path, searcher).run_many([EMAIL, other])
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("the index is broken" in r.error for r in results)
