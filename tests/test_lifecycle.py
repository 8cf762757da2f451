"""Library readiness: async lifecycle, nothing started that the stages do not need, the per-email deadline, logging.

Against the fake model server on loopback (real openai client, retries and validator).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
from pathlib import Path

import pytest

from fakes import HashEmbedder, sensible, stage_of
from fakeserver import Delay, FakeServer, Reply, Status
from mailcascade.catalog import build_index, catalog_passages, load_catalog
from mailcascade.config import LLMSettings, PipelineSettings, Settings, load_settings
from mailcascade.errors import ConfigError
from mailcascade.eval.records import infrastructure_errors
from mailcascade.pipeline import Pipeline
from mailcascade.record import record_dict
from mailcascade.types import Email

CATALOG = Path(__file__).resolve().parents[1] / "data" / "catalog.jsonl"
EMAIL = Email(id="e1", subject="Refund please", body="I returned the Trail shoes last week. Where is my refund?")
EXAMPLES = [("I want my money back for the shoes", "returns"), ("my invoice shows a double charge", "billing"),
            ("where is my parcel, tracking has not moved", "shipping"), ("please cancel my order", "orders")]


@pytest.fixture(scope="module")
def index():  # type: ignore[no-untyped-def]
    return build_index(catalog_passages(load_catalog(CATALOG)), HashEmbedder())


def settings_for(tmp_path: Path, base_url: str, *, deadline_s: float = 0.0, strategy: str = "llm",
                 **llm: object) -> Settings:
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps({"text": t, "department": d}) + "\n" for t, d in EXAMPLES))
    base = Settings()
    llm_settings = dataclasses.replace(
        LLMSettings(base_url=base_url, model="fake-model", api_key="sk-test-SECRET-4242", max_retries=2,
                    backoff_initial_s=0.01, backoff_max_s=0.02, timeout_s=30),
        **llm)  # type: ignore[arg-type]
    return base.replace(
        llm=llm_settings,
        store=dataclasses.replace(base.store, path=str(tmp_path / "log.db"), cache=False),
        route=dataclasses.replace(base.route, strategy=strategy, examples_path=str(examples)),  # type: ignore[arg-type]
        pipeline=PipelineSettings(deadline_s=deadline_s),
    )


def _children_named(word: str) -> list[int]:
    """Processes whose parent is this test process and whose command line mentions `word`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and word in cmdline:
            found.append(int(entry.name))
    return found


def test_async_with_runs_against_the_fake_server_and_closes(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    async def main(server: FakeServer) -> list[str]:
        async with Pipeline.from_config(settings=settings_for(tmp_path, server.base_url), index=index) as pipeline:
            await pipeline.astart()
            results = await pipeline.arun_many([EMAIL, dataclasses.replace(EMAIL, id="e2")], concurrency=2)
        return [r.status for r in results] + [r.department or "" for r in results]

    with FakeServer(sensible) as server:
        assert asyncio.run(main(server)) == ["ok", "ok", "returns", "returns"]
        assert {stage_of(b) for b in server.bodies} == {"route", "draft"}


def test_sync_with_and_run_share_the_async_path(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server, \
            Pipeline.from_config(settings=settings_for(tmp_path, server.base_url), index=index) as pipeline:
        first = pipeline.run(EMAIL)
        second = pipeline.run(dataclasses.replace(EMAIL, id="e2"))
    assert (first.status, second.status) == ("ok", "ok") and first.draft is not None
    pipeline.close()  # closing twice is fine
    with FakeServer(sensible) as server:  # and a closed pipeline starts again on use
        again = Pipeline.from_config(settings=settings_for(tmp_path, server.base_url), index=index)
        again.close()
        assert again.run(EMAIL).status == "ok"
        again.close()


def test_from_config_is_lazy_and_embedding_routing_never_starts_a_model_server(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    # the default settings point at the embedded llama.cpp server; routing by embedding and retrieval need none
    settings = settings_for(tmp_path, Settings().llm.base_url, strategy="embedding")
    assert settings.uses_local_server
    embedder = HashEmbedder()
    pipeline = Pipeline.from_config(settings=settings, embedder=embedder, index=index)
    assert embedder.calls == 0  # from_config embeds nothing: the router's examples are embedded on first use
    assert pipeline.needs(("route", "retrieve")) == {"router", "index"}
    assert pipeline.needs() == {"router", "index", "model"}

    async def main() -> list[str]:
        async with pipeline:
            await pipeline.astart(("route", "retrieve"))
            assert embedder.calls == 1  # the examples, once
            results = await pipeline.arun_many([EMAIL] * 3, stages=("route", "retrieve"))
            assert pipeline._server is not None and not pipeline._server.started
            assert _children_named("llama") == []
        return [r.status for r in results]

    assert asyncio.run(main()) == ["ok", "ok", "ok"]


def test_an_embedding_route_only_run_sends_no_model_request(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        settings = settings_for(tmp_path, server.base_url, strategy="embedding")
        with Pipeline.from_config(settings=settings, embedder=HashEmbedder(), index=index) as pipeline:
            pipeline.start(("route",))
            result = pipeline.run(EMAIL, stages=("route", "retrieve"))
        assert result.status == "ok" and result.department in {d for _, d in EXAMPLES} and len(result.hits) == 5
        assert server.requests == []


def test_start_names_an_unknown_stage(tmp_path: Path) -> None:
    pipeline = Pipeline.from_config(settings=settings_for(tmp_path, "http://127.0.0.1:9/v1"))
    with pytest.raises(ConfigError, match=r"unknown stage.*rout"):
        pipeline.start(("rout",))


def test_a_hanging_model_call_is_cancelled_at_the_deadline_and_the_batch_goes_on(tmp_path: Path, index, caplog) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        server.push(Delay(60))  # the first email's route call hangs (the transport timeout is 30 s)
        # the deadline also bounds the three emails after it: generous, so a busy machine cannot fail them
        settings = settings_for(tmp_path, server.base_url, deadline_s=3.0)
        with caplog.at_level(logging.INFO, logger="mailcascade"), \
                Pipeline.from_config(settings=settings, index=index) as pipeline:
            hung = pipeline.run(EMAIL)
            still_waiting = server._in_flight  # the hanging request has not been answered: the call was abandoned
            rest = pipeline.run_many([dataclasses.replace(EMAIL, id=f"n{i}") for i in range(3)])
    assert hung.status == "failed" and still_waiting == 1
    route = hung.stages[0]
    assert (route.stage, route.status, route.error_code) == ("route", "error", "deadline_exceeded")
    assert "pipeline.deadline_s" in hung.error
    assert [s.stage for s in hung.stages] == ["route"]  # nothing ran after the deadline
    assert [r.status for r in rest] == ["ok", "ok", "ok"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("email e1" in w and "deadline" in w for w in warnings) and not any("Trail" in w for w in warnings)
    records = [record_dict(hung), *(record_dict(r) for r in rest)]
    assert infrastructure_errors(records)["codes"] == {"deadline_exceeded": 1}


def test_the_deadline_covers_re_asks(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    # every answer is invalid in another way than the one before (a re-ask follows, never "the same failure twice")
    # and takes 0.5 s: a later call crosses the 1.5 s deadline. The index and router load and the SDK is imported
    # before the clock starts, so on a loaded machine they do not use it up.
    answers = itertools.cycle(["not json at all", '{"department": 42}'])
    with FakeServer(lambda body: Reply(next(answers)), latency_s=0.5) as server:
        settings = settings_for(tmp_path, server.base_url, deadline_s=1.5)
        settings = settings.replace(validation=dataclasses.replace(settings.validation, max_attempts=10))
        with Pipeline.from_config(settings=settings, index=index) as pipeline:
            pipeline.start()
            import openai  # noqa: F401
            result = asyncio.run(pipeline.arun(EMAIL))
    route = result.stages[0]
    assert route.status == "error" and route.error_code == "deadline_exceeded"
    assert 1 <= len(route.attempts) < 10 and route.attempts[0].status == "failed"  # the answers before it are kept


def test_the_deadline_covers_transport_retries(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(lambda body: Status(500)) as server:
        settings = settings_for(tmp_path, server.base_url, deadline_s=0.4, max_retries=50, backoff_initial_s=0.1,
                                backoff_max_s=0.1)
        with Pipeline.from_config(settings=settings, index=index) as pipeline:
            result = pipeline.run(EMAIL)
        sent = len(server.chat_requests)
    route = result.stages[0]
    assert route.status == "error" and route.error_code == "deadline_exceeded"
    assert 1 <= sent < 51  # retries went on until the deadline, not until max_retries


def test_the_deadline_setting_is_checked() -> None:
    assert load_settings(env={"MAILCASCADE_PIPELINE__DEADLINE_S": "2.5"}).pipeline.deadline_s == 2.5
    with pytest.raises(ConfigError, match=r"pipeline\.deadline_s: must be >= 0"):
        load_settings(env={"MAILCASCADE_PIPELINE__DEADLINE_S": "-1"})


def test_logging_says_what_happened_and_never_email_text_or_secrets(tmp_path: Path, index, caplog) -> None:  # type: ignore[no-untyped-def]
    body = "ZEBRA-PINEAPPLE-7731 my order never came"
    subject = "QUOKKA-SUBJECT-991"
    with FakeServer(sensible) as server:
        server.push(Status(500, message=f"echo of {body}"))  # one retry, with the email text in the error body
        settings = settings_for(tmp_path, server.base_url)
        with caplog.at_level(logging.DEBUG, logger="mailcascade"), \
                Pipeline.from_config(settings=settings, index=index) as pipeline:
            results = pipeline.run_many([Email(id="secret-test", subject=subject, body=body)])
    assert results[0].status == "ok", results[0].error
    mine = [r for r in caplog.records if r.name.startswith("mailcascade")]
    text = "\n".join(r.getMessage() for r in mine)
    assert "retrying" in text and "run " in text and "finished: 1 ok" in text and "email secret-test: ok" in text
    for needle in ("ZEBRA", "PINEAPPLE", "QUOKKA", "SECRET-4242", "sk-test", "never came"):
        assert needle not in text
    assert all(r.name == "mailcascade" or r.name.startswith("mailcascade.") for r in mine)


class _SlowIndex:
    """A catalogue searcher that takes longer than the deadline (CPU work is not a model call)."""

    def __init__(self, inner, seconds: float) -> None:  # type: ignore[no-untyped-def]
        self._inner = inner
        self._seconds = seconds
        self.name = "slow"

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)

    def search(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        import time

        time.sleep(self._seconds)
        return self._inner.search(*args, **kwargs)


def test_the_deadline_also_ends_work_that_is_not_a_model_call(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        settings = settings_for(tmp_path, server.base_url, deadline_s=1.0)
        with Pipeline.from_config(settings=settings, index=_SlowIndex(index, 3.0)) as pipeline:
            pipeline.start()  # loaded and the SDK imported before the clock starts: the route fits in 1 s under load
            import openai  # noqa: F401
            result = pipeline.run(EMAIL)
    assert [(s.stage, s.status, s.error_code) for s in result.stages] == [
        ("route", "ok", ""), ("retrieve", "error", "deadline_exceeded")]
    assert result.status == "failed" and result.department == "returns" and "retrieve:" in result.error


def test_run_from_inside_the_pipeline_loop_is_refused_not_a_deadlock(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    from mailcascade.errors import MailcascadeError

    with FakeServer(sensible) as server, \
            Pipeline.from_config(settings=settings_for(tmp_path, server.base_url), index=index) as pipeline:
        async def nested() -> str:
            try:
                pipeline.run(EMAIL)
            except MailcascadeError as exc:
                return str(exc)
            return "ran"

        message = pipeline._loop.run(nested())
    assert "await pipeline.arun" in message
