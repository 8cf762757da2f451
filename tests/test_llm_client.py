"""The real OpenAIClient against the fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from fakeserver import Delay, Drop, FakeServer, Garbage, NoChoices, Reply, Status
from mailcascade.config import LLMSettings, StructuredMode
from mailcascade.errors import LLMError
from mailcascade.llm import LLM, OpenAIClient
from mailcascade.types import ChatRequest, ChatResponse

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"department": {"type": "string"}},
    "required": ["department"],
}


def request(text: str = "Where is my order?", **kw: Any) -> ChatRequest:
    return ChatRequest(messages=(("system", "You route emails."), ("user", text)), **kw)


def complete(settings: LLMSettings, req: ChatRequest) -> ChatResponse:
    with OpenAIClient(settings) as client:
        return client.complete(req)


def gaps(server: FakeServer) -> list[float]:
    times = [r.at for r in server.chat_requests]
    return [b - a for a, b in itertools.pairwise(times)]


def test_plain_reply_and_request_body(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    fake_server.push(Reply("Hello there", prompt_tokens=17, completion_tokens=2))
    with OpenAIClient(fake_llm_settings) as client:
        llm: LLM = client  # satisfies the protocol (checked by mypy)
        resp = llm.complete(request(max_tokens=42, temperature=0.3))
    assert resp.text == "Hello there"
    assert resp.finish_reason == "stop"
    assert resp.model == "fake-model"
    assert (resp.tokens_in, resp.tokens_out) == (17, 2)
    assert resp.attempts == 1
    assert resp.latency_ms > 0
    [body] = fake_server.bodies
    assert body["messages"] == [
        {"role": "system", "content": "You route emails."},
        {"role": "user", "content": "Where is my order?"},
    ]
    assert body["max_tokens"] == 42
    assert body["temperature"] == 0.3
    assert body["model"] == "fake-model"
    assert "response_format" not in body  # no schema, no structured output
    headers = {k.lower(): v for k, v in fake_server.chat_requests[0].headers.items()}
    assert headers["authorization"] == "Bearer test-key"


def test_missing_usage_and_null_content_give_zeros_and_empty_text(
    fake_server: FakeServer, fake_llm_settings: LLMSettings
) -> None:
    fake_server.push(Reply(None, finish_reason="length", usage=False, model="served-model"))
    resp = complete(fake_llm_settings, request())
    assert resp.text == ""
    assert resp.finish_reason == "length"
    assert (resp.tokens_in, resp.tokens_out) == (0, 0)
    assert resp.model == "served-model"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("json_schema", {"type": "json_schema", "json_schema": {"name": "route", "schema": SCHEMA, "strict": False}}),
        ("json_object", {"type": "json_object", "schema": SCHEMA}),
        ("none", None),
    ],
)
def test_structured_output_modes(
    fake_server: FakeServer, fake_llm_settings: LLMSettings, mode: StructuredMode, expected: dict[str, Any] | None
) -> None:
    settings = dataclasses.replace(fake_llm_settings, structured_output=mode)
    complete(settings, request(schema=SCHEMA, schema_name="route"))
    [body] = fake_server.bodies
    assert body.get("response_format") == expected


def test_json_object_mode_sends_no_grammar_bounds(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    """Length, item and range bounds become slow (or, large, fatal) llama.cpp grammar rules: the validator checks
    them, so the server gets the structure only."""
    big = {"type": "object", "required": ["reply"], "additionalProperties": False,
           "properties": {"reply": {"type": "string", "minLength": 1, "maxLength": 4000},
                          "ids": {"type": "array", "maxItems": 10, "minItems": 0, "items": {"type": "string"}},
                          "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                          "kind": {"enum": ["a", "b"]}}}
    complete(fake_llm_settings, request(schema=big, schema_name="draft"))
    settings = dataclasses.replace(fake_llm_settings, structured_output="json_schema")
    complete(settings, request(schema=big, schema_name="draft"))
    sent_object, sent_schema = (b["response_format"] for b in fake_server.bodies)
    assert sent_object["type"] == "json_object"
    assert sent_object["schema"] == {
        "type": "object", "required": ["reply"], "additionalProperties": False,
        "properties": {"reply": {"type": "string"}, "ids": {"type": "array", "items": {"type": "string"}},
                       "confidence": {"type": "number"}, "kind": {"enum": ["a", "b"]}}}
    assert sent_schema["json_schema"]["schema"] == big  # OpenAI and vLLM get the schema as written
    assert big["properties"]["reply"]["maxLength"] == 4000  # the caller's schema is not changed


def test_retry_after_500_then_success(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    fake_server.push(Status(500, "boom"), Reply("fine"))
    resp = complete(fake_llm_settings, request())
    assert resp.text == "fine"
    assert resp.attempts == 2
    assert len(fake_server.chat_requests) == 2
    assert fake_server.bodies[0] == fake_server.bodies[1]  # the same request, sent again


@pytest.mark.parametrize("code", [502, 503])
def test_retry_on_other_5xx(fake_server: FakeServer, fake_llm_settings: LLMSettings, code: int) -> None:
    fake_server.push(Status(code), Status(code), Reply("fine"))
    resp = complete(fake_llm_settings, request())
    assert (resp.text, resp.attempts) == ("fine", 3)


def test_429_retry_after_seconds_is_honoured(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, backoff_max_s=5.0)
    fake_server.push(Status(429, "slow down", retry_after="0.2"), Reply("ok"))
    resp = complete(settings, request())
    assert resp.attempts == 2
    [gap] = gaps(fake_server)
    assert gap >= 0.2


def test_429_retry_after_http_date_is_honoured(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, backoff_max_s=5.0)
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: waits between 1 and 2 s
    fake_server.push(Status(429, retry_after=when), Reply("ok"))
    resp = complete(settings, request())
    assert resp.attempts == 2
    [gap] = gaps(fake_server)
    assert gap >= 0.9


def test_retry_after_above_backoff_max_is_still_honoured(
    fake_server: FakeServer, fake_llm_settings: LLMSettings,
) -> None:
    settings = dataclasses.replace(fake_llm_settings, backoff_max_s=0.05)
    fake_server.push(Status(429, retry_after="0.4"), Reply("ok"))
    resp = complete(settings, request())
    assert resp.attempts == 2
    [gap] = gaps(fake_server)
    assert gap >= 0.4  # not cut to backoff_max_s: never earlier than the server asked


def test_retry_after_longer_than_allowed_fails_at_once(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, max_retry_after_s=10.0)
    fake_server.push(Status(429, retry_after="3600"), Reply("never sent"))
    with pytest.raises(LLMError) as info:
        complete(settings, request())
    assert info.value.code == "rate_limited"
    assert "max_retry_after_s" in str(info.value)
    assert len(fake_server.chat_requests) == 1  # neither retried early nor waited an hour


@pytest.mark.parametrize(("step", "code"), [
    (Status(503), "server_error"), (Status(429), "rate_limited"), (Drop(), "connection_error"),
    (Status(401), "client_error"), (Garbage(), "server_error"),
])
def test_failed_calls_carry_a_code_and_the_request_count(
    fake_server: FakeServer, fake_llm_settings: LLMSettings, step: Any, code: str,
) -> None:
    fake_server.responder = lambda body: step
    with pytest.raises(LLMError) as info:
        complete(fake_llm_settings, request())
    assert info.value.code == code
    assert info.value.attempts == len(fake_server.chat_requests)
    assert info.value.attempts == (1 if code == "client_error" else fake_llm_settings.max_retries + 1)


def test_timeout_code(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, timeout_s=0.2, max_retries=1)
    fake_server.responder = lambda body: Delay(1.0)
    with pytest.raises(LLMError) as info:
        complete(settings, request())
    assert (info.value.code, info.value.attempts) == ("transport_timeout", 2)


def test_circuit_breaker_stops_calling_a_dead_endpoint(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, max_consecutive_failures=3, max_retries=1)
    fake_server.responder = lambda body: Status(503)
    with OpenAIClient(settings) as client:
        with pytest.raises(LLMError):
            client.complete(request())  # 2 failed requests
        with pytest.raises(LLMError) as second:
            client.complete(request())  # the third opens the breaker: no retry after it
        for _ in range(5):
            with pytest.raises(LLMError) as later:
                client.complete(request())
            assert later.value.code == "circuit_open"
            assert later.value.attempts == 0
    assert len(fake_server.chat_requests) == 3
    assert second.value.attempts == 1
    assert "failed 3 times in a row" in str(later.value) and "HTTP 503" in str(later.value)


def test_circuit_breaker_ignores_one_bad_request(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, max_consecutive_failures=2)
    fake_server.push(Status(400), Status(400), Status(400), Reply("fine"))
    with OpenAIClient(settings) as client:
        for _ in range(3):
            with pytest.raises(LLMError) as info:
                client.complete(request())
            assert info.value.code == "client_error"
        assert client.complete(request()).text == "fine"


def test_a_success_resets_the_breaker(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, max_consecutive_failures=3, max_retries=0)
    fake_server.push(Status(500), Status(500), Reply("a"), Status(500), Status(500), Reply("b"))
    with OpenAIClient(settings) as client:
        answers = []
        for _ in range(6):
            try:
                answers.append(client.complete(request()).text)
            except LLMError as exc:
                assert exc.code == "server_error"
    assert answers == ["a", "b"]


def test_url_password_never_in_messages(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    url = fake_server.base_url.replace("http://", "http://agent:hunter2secret@")
    settings = dataclasses.replace(fake_llm_settings, base_url=url, max_retries=0)
    fake_server.push(Status(500, "oops hunter2secret"))
    with pytest.raises(LLMError) as info:
        complete(settings, request())
    assert "hunter2secret" not in str(info.value)


def test_timeout_then_success(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, timeout_s=0.3)
    fake_server.push(Delay(2.0, Reply("late")), Reply("on time"))
    resp = complete(settings, request())
    assert resp.text == "on time"
    assert resp.attempts == 2


@pytest.mark.parametrize("code", [400, 401, 404])
def test_no_retry_on_4xx(fake_server: FakeServer, fake_llm_settings: LLMSettings, code: int) -> None:
    fake_server.push(Status(code, "you did it wrong"), Reply("never sent"))
    with pytest.raises(LLMError) as info:
        complete(fake_llm_settings, request())
    err = info.value
    assert err.retryable is False
    assert err.status_code == code
    assert err.attempts == 1
    assert len(fake_server.chat_requests) == 1
    assert f"HTTP {code}" in str(err)
    assert "you did it wrong" in str(err)
    assert fake_server.base_url + "/chat/completions" in str(err)


def test_retries_exhausted(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, max_retries=2)
    fake_server.push(*[Status(503, "overloaded")] * 5)
    with pytest.raises(LLMError) as info:
        complete(settings, request())
    err = info.value
    assert err.retryable is True
    assert err.status_code == 503
    assert err.attempts == 3
    assert len(fake_server.chat_requests) == 3
    assert "overloaded" in str(err)
    assert "3 attempts" in str(err)


def test_garbage_body_is_retried_then_reported(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    fake_server.push(Garbage(), Reply("good"))
    assert complete(fake_llm_settings, request()).attempts == 2

    settings = dataclasses.replace(fake_llm_settings, max_retries=0)
    fake_server.push(Garbage("<html>oops</html>", content_type="text/html"))
    with pytest.raises(LLMError) as info:
        complete(settings, request())
    assert info.value.retryable is True
    assert info.value.attempts == 1
    assert "not JSON" in str(info.value)
    assert "oops" in str(info.value)


def test_no_choices(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, max_retries=1)
    fake_server.push(NoChoices(), NoChoices({"choices": []}))
    with pytest.raises(LLMError) as info:
        complete(settings, request())
    assert "no choices" in str(info.value)
    assert info.value.attempts == 2


def test_connection_closed_then_success(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    fake_server.push(Drop(), Reply("back"))
    resp = complete(fake_llm_settings, request())
    assert (resp.text, resp.attempts) == ("back", 2)


def test_connection_refused_is_retryable(fake_llm_settings: LLMSettings) -> None:
    with FakeServer() as server:
        url = server.base_url
    settings = dataclasses.replace(fake_llm_settings, base_url=url, max_retries=1)  # nothing listens there now
    with pytest.raises(LLMError) as info:
        complete(settings, request())
    assert info.value.retryable is True
    assert info.value.attempts == 2
    assert "connection failed" in str(info.value)


def test_api_key_never_in_messages(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    secret = "sk-very-secret-123456"
    settings = dataclasses.replace(fake_llm_settings, api_key=secret, max_retries=0)
    fake_server.push(Status(401, f"Incorrect API key provided: {secret}"))
    with pytest.raises(LLMError) as info:
        complete(settings, request())
    assert secret not in str(info.value)
    assert "Incorrect API key" in str(info.value)


def test_default_responder_answers_by_content(fake_llm_settings: LLMSettings) -> None:
    def responder(body: dict[str, Any]) -> Reply:
        user = body["messages"][-1]["content"]
        return Reply(json.dumps({"department": "billing" if "charged" in user else "orders"}))

    with FakeServer(responder) as server:
        settings = dataclasses.replace(fake_llm_settings, base_url=server.base_url)
        client = OpenAIClient(settings)
        assert json.loads(client.complete(request("I was charged twice")).text) == {"department": "billing"}
        assert json.loads(client.complete(request("Where is it?")).text) == {"department": "orders"}


def test_async_concurrent_calls(fake_llm_settings: LLMSettings) -> None:
    def echo(body: dict[str, Any]) -> Reply:
        return Reply("echo: " + body["messages"][-1]["content"])

    async def main(client: OpenAIClient) -> list[str]:
        try:
            resps = await asyncio.gather(*(client.acomplete(request(f"mail {i}")) for i in range(8)))
        finally:
            await client.aclose()
        assert all(r.attempts == 1 and r.tokens_out == 3 for r in resps)
        return [r.text for r in resps]

    with FakeServer(echo, latency_s=0.2) as server:
        settings = dataclasses.replace(fake_llm_settings, base_url=server.base_url)
        texts = asyncio.run(main(OpenAIClient(settings)))
        assert texts == [f"echo: mail {i}" for i in range(8)]
        assert server.max_in_flight > 1  # the calls were in flight together, not one after another


def test_async_retry_and_reuse_across_event_loops(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    client = OpenAIClient(fake_llm_settings)
    fake_server.push(Status(500), Reply("first"))
    assert asyncio.run(client.acomplete(request())).attempts == 2
    fake_server.push(Status(429, retry_after="0"), Reply("second"))
    resp = asyncio.run(client.acomplete(request()))  # a new loop; the client must still work
    assert (resp.text, resp.attempts) == ("second", 2)
    fake_server.push(Status(400))
    with pytest.raises(LLMError) as info:
        asyncio.run(client.acomplete(request()))
    assert (info.value.retryable, info.value.attempts) == (False, 1)
    client.close()


def test_one_client_shared_by_threads(fake_llm_settings: LLMSettings) -> None:
    def echo(body: dict[str, Any]) -> Reply:
        return Reply("echo: " + body["messages"][-1]["content"])

    with FakeServer(echo, latency_s=0.1) as server, OpenAIClient(
        dataclasses.replace(fake_llm_settings, base_url=server.base_url)
    ) as client, ThreadPoolExecutor(max_workers=6) as pool:
        texts = list(pool.map(lambda i: client.complete(request(f"mail {i}")).text, range(12)))
        assert texts == [f"echo: mail {i}" for i in range(12)]
        assert server.max_in_flight > 1


def test_empty_api_key_works_for_keyless_servers(fake_server: FakeServer, fake_llm_settings: LLMSettings) -> None:
    settings = dataclasses.replace(fake_llm_settings, api_key="")
    assert complete(settings, request()).text == "ok"
    headers = {k.lower(): v for k, v in fake_server.chat_requests[0].headers.items()}
    assert headers["authorization"] == "Bearer not-needed"
