"""The embedded server as one slot: a client-side limit on requests in flight, and queue wait apart from latency."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

from fakes import HashEmbedder, sensible
from fakeserver import FakeServer, Reply, Step
from mailcascade.config import LOCAL_BASE_URL, LLMSettings, Settings, StoreSettings
from mailcascade.errors import LLMError
from mailcascade.llm import OpenAIClient
from mailcascade.llm.slots import Slots
from mailcascade.pipeline import Pipeline
from mailcascade.record import stage_trace
from mailcascade.types import ChatRequest, ChatResponse, Email

SERVER_S = 0.15  # the serial fake server's time per request


def serial_responder(seconds: float) -> Any:
    """A server that works on one request at a time (like llama-cpp-python's): the others wait inside it."""
    busy = threading.Lock()

    def respond(body: dict[str, Any]) -> Step:
        with busy:
            time.sleep(seconds)
        return Reply('{"ok": true}')

    return respond


def settings_for(server: FakeServer, **llm: Any) -> LLMSettings:
    base = LLMSettings(base_url=server.base_url, model="fake-model", backoff_initial_s=0.01, backoff_max_s=0.02)
    return dataclasses.replace(base, **llm)


async def ask_all(client: OpenAIClient, n: int) -> list[ChatResponse | LLMError]:
    request = ChatRequest(messages=(("user", "hi"),), max_tokens=8)

    async def one() -> ChatResponse | LLMError:
        try:
            return await client.acomplete(request)
        except LLMError as exc:
            return exc

    try:
        return list(await asyncio.gather(*(one() for _ in range(n))))
    finally:
        await client.aclose()


def test_the_embedded_server_config_is_one_slot_and_others_are_unlimited() -> None:
    assert LLMSettings().base_url == LOCAL_BASE_URL and LLMSettings().slots == 1
    assert Settings().llm.slots == 1
    assert LLMSettings(base_url="http://127.0.0.1:9999/v1").slots == 0
    assert LLMSettings(base_url="http://127.0.0.1:9999/v1", max_in_flight=3).slots == 3
    assert OpenAIClient(LLMSettings()).slots is not None
    assert OpenAIClient(LLMSettings(base_url="http://127.0.0.1:9999/v1")).slots is None


def test_one_slot_sends_one_request_at_a_time_and_no_queued_request_times_out() -> None:
    # 16 requests of 0.15 s each on a serial server: 2.4 s of work, more than twice the 1 s timeout of one request
    # (which leaves a request room for a loaded machine: 1 s against 0.15 s of its own)
    with FakeServer(serial_responder(SERVER_S)) as server:
        responses = asyncio.run(ask_all(OpenAIClient(settings_for(server, timeout_s=1.0, max_in_flight=1)), 16))
        assert server.max_in_flight == 1
        assert len(server.chat_requests) == 16  # nothing was retried
    assert all(isinstance(r, ChatResponse) and r.attempts == 1 for r in responses)
    queued = sorted(r.queue_ms for r in responses if isinstance(r, ChatResponse))
    assert queued[0] < queued[-1] and queued[-1] > 5 * SERVER_S * 1000  # the last one waited for the others


def test_without_the_limit_queued_requests_time_out_inside_a_serial_server() -> None:
    """The failure the slot limit prevents: the same load, no client-side limit."""
    with FakeServer(serial_responder(SERVER_S)) as server:
        responses = asyncio.run(ask_all(OpenAIClient(settings_for(server, timeout_s=0.5, max_retries=0)), 8))
        assert server.max_in_flight > 1
    errors = [r for r in responses if isinstance(r, LLMError)]
    assert errors and all(e.code == "transport_timeout" for e in errors)


def test_sync_calls_share_the_slot(fake_server: FakeServer) -> None:
    fake_server.latency_s = 0.05
    client = OpenAIClient(settings_for(fake_server, max_in_flight=1))
    request = ChatRequest(messages=(("user", "hi"),), max_tokens=8)
    threads = [threading.Thread(target=client.complete, args=(request,)) for _ in range(4)]
    for t in threads:
        t.start()
    asyncio.run(ask_all(client, 4))
    for t in threads:
        t.join()
    assert len(fake_server.chat_requests) == 8 and fake_server.max_in_flight == 1


def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    async def scenario() -> int:
        slots = Slots(1)
        await slots.aacquire()
        waiter = asyncio.create_task(slots.aacquire())
        behind = asyncio.create_task(slots.aacquire())
        await asyncio.sleep(0)
        waiter.cancel()
        slots.release()  # goes to `behind`, not to the cancelled waiter
        await asyncio.wait_for(behind, 5)
        slots.release()
        return slots.free

    assert asyncio.run(scenario()) == 1


def test_stage_latency_excludes_the_queue_wait(tmp_path: Path) -> None:
    """Six emails at once on one slot: each route call's latency_ms is its own, the wait is queue_ms."""
    latency = 0.2
    with FakeServer(sensible, latency_s=latency) as server:
        settings = Settings().replace(llm=settings_for(server, max_in_flight=1),
                                      store=StoreSettings(path=str(tmp_path / "s.db"), cache=False))
        emails = [Email(id=f"e{i}", subject=f"Order {i} question", body=f"Where is order number {i}?")
                  for i in range(6)]
        with Pipeline.from_config(settings=settings, embedder=HashEmbedder()) as pipeline:
            results = asyncio.run(pipeline.arun_many(emails, concurrency=6, stages=("route",)))
        arrivals = [(r.at, r.body) for r in server.chat_requests]
        assert server.max_in_flight == 1
    routes = {res.id: res.stages[0] for res in results}
    assert all("queue_ms" in stage_trace(s).model_dump() for s in routes.values())
    # the email whose request the server saw last waited for the five before it (server timestamps)
    first_at, last_at = arrivals[0][0], arrivals[-1][0]
    spread_ms = (last_at - first_at) * 1000
    last_body = str(arrivals[-1][1])
    last = next(s for i, s in routes.items() if f"Where is order number {i[1:]}?" in last_body)
    assert spread_ms >= 5 * latency * 1000 * 0.99
    assert last.latency_ms < spread_ms  # its own call, not the queue in front of it
    assert last.queue_ms >= 0.8 * spread_ms
    assert last.queue_ms + last.latency_ms > spread_ms * 0.8 + latency * 1000
    assert all(s.latency_ms >= latency * 1000 for s in routes.values())


def test_default_concurrency_matches_the_server_slots() -> None:
    assert Settings().emails_in_flight == 2  # the embedded server: one slot, plus the next email's retrieval
    remote = Settings().replace(llm=LLMSettings(base_url="http://127.0.0.1:9999/v1"))
    assert remote.emails_in_flight == 4
    assert remote.replace(llm=LLMSettings(base_url="http://127.0.0.1:9999/v1", max_in_flight=8)).emails_in_flight == 9
    assert Settings(concurrency=3).emails_in_flight == 3
