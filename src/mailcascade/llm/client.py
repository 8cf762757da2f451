"""`OpenAIClient`: the one place that imports the `openai` SDK.

The SDK runs with `max_retries=0`; retries are done here with tenacity: exponential backoff with
jitter on timeouts, connection errors, 429 (honouring Retry-After) and 5xx, never on other 4xx.

The request body is built here and sent with the SDK client's documented low-level `post` (its way to call any
endpoint): the same HTTP stack, headers, timeouts and `openai.APIError`s as `chat.completions.create`, without
`create`'s type-driven transform of the body, which is an identity for plain-text messages and cost about 15% of
a call's client-side CPU (see bench/bench_eval.py `overhead`).

A 200 response whose body is not JSON or has no choices raises `LLMError(retryable=True)` and is
retried like a 5xx: it is a server or proxy fault (an HTML error page, a cut-off body), not a
problem with the request, so asking again may help; the retries stay bounded by `max_retries`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from mailcascade.config import LLMSettings
from mailcascade.errors import LLMError
from mailcascade.llm.slots import Slots
from mailcascade.types import ChatRequest, ChatResponse

SNIPPET_CHARS = 300
CHAT_PATH = "/chat/completions"  # under the base URL, as the SDK's `create` posts it
log = logging.getLogger(__name__)
_SDKClient = TypeVar("_SDKClient", openai.OpenAI, openai.AsyncOpenAI)


class OpenAIClient:
    """An LLM over any OpenAI-compatible chat-completions server. Safe to share across threads and tasks."""

    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        self._url = _safe_url(settings.base_url.rstrip("/") + "/chat/completions")
        self._timeout = openai.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
        self._lock = threading.Lock()
        self.breaker = CircuitBreaker(settings.max_consecutive_failures)
        # requests in flight at once (settings.slots; None: no limit); the wait for a slot is queue_ms, not latency
        self.slots = Slots(settings.slots) if settings.slots > 0 else None
        self._sync: openai.OpenAI | None = None
        # one async client per event loop: httpx connection pools must not cross loops
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, openai.AsyncOpenAI] = (
            weakref.WeakKeyDictionary()
        )
        self._retry: dict[str, Any] = {
            "stop": stop_after_attempt(settings.max_retries + 1),
            "wait": self._wait,
            "retry": retry_if_exception(lambda e: isinstance(e, LLMError) and e.retryable and not self.breaker.is_open),
            "reraise": True,
            "before_sleep": _log_retry,
        }

    @property
    def model(self) -> str:
        return self._settings.model

    @property
    def settings(self) -> LLMSettings:
        return self._settings

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Send one chat request, retrying transient failures. Raises LLMError."""
        client = self._sync_client()
        body = self.body(request)
        start = time.perf_counter()
        attempts, queued = 0, 0.0
        try:
            for attempt in Retrying(**self._retry):
                with attempt:
                    self.breaker.check()
                    attempts += 1
                    queued += self.slots.acquire() if self.slots else 0.0
                    try:
                        raw = client.post(CHAT_PATH, body=body, cast_to=httpx.Response)
                        data = self._parse(raw.status_code, raw.text)
                    except openai.APIError as exc:
                        raise self._failed(self._error(exc)) from exc
                    except LLMError as exc:
                        raise self._failed(exc) from None
                    finally:
                        if self.slots:
                            self.slots.release()
                    self.breaker.success()
        except LLMError as exc:
            raise self._final(exc, attempts) from exc
        return self._response(data, attempts, start, queued)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        """Async `complete`. tenacity decides each retry and its backoff (a sync `Retrying`, whose per-call cost is
        a third of `AsyncRetrying`'s); the backoff is awaited here, so the loop is never blocked."""
        client = self._async_client()
        body = self.body(request)
        start = time.perf_counter()
        attempts, queued = 0, 0.0
        backoff: list[float] = []  # tenacity's `sleep`: the wait it chose before the next attempt
        try:
            for attempt in Retrying(**self._retry, sleep=backoff.append):
                if backoff:
                    await asyncio.sleep(backoff.pop())
                with attempt:
                    self.breaker.check()
                    attempts += 1
                    queued += await self.slots.aacquire() if self.slots else 0.0
                    try:
                        raw = await client.post(CHAT_PATH, body=body, cast_to=httpx.Response)
                        data = self._parse(raw.status_code, raw.text)
                    except openai.APIError as exc:
                        raise self._failed(self._error(exc)) from exc
                    except LLMError as exc:
                        raise self._failed(exc) from None
                    finally:
                        if self.slots:
                            self.slots.release()
                    self.breaker.success()
        except LLMError as exc:
            raise self._final(exc, attempts) from exc
        return self._response(data, attempts, start, queued)

    def close(self) -> None:
        """Close the sync client and forget the async ones (use `aclose` inside a loop to close them)."""
        with self._lock:
            sync, self._sync = self._sync, None
            self._async.clear()
        if sync is not None:
            sync.close()

    async def release(self) -> None:
        """Close the async client of the running loop, before the loop ends: the SDK closes one left open when it is
        garbage-collected, on whatever loop runs then, and prints "Event loop is closed" tracebacks."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.pop(loop, None)
        if client is not None:
            await client.close()

    async def aclose(self) -> None:
        """Close the async client of the running loop, and the sync client."""
        await self.release()
        self.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> OpenAIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- internals -----------------------------------------------------------------------------

    def _sync_client(self) -> openai.OpenAI:
        with self._lock:
            if self._sync is None:
                self._sync = self._build(openai.OpenAI)
            return self._sync

    def _async_client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.get(loop)
            if client is None:
                client = self._build(openai.AsyncOpenAI)
                self._async[loop] = client
            return client

    def _build(self, cls: type[_SDKClient]) -> _SDKClient:
        # the SDK refuses an empty key; keyless servers (llama.cpp, vLLM, Ollama) ignore the header
        key = self._settings.api_key or "not-needed"
        try:
            return cls(api_key=key, base_url=self._settings.base_url, timeout=self._timeout, max_retries=0)
        except openai.OpenAIError as exc:
            raise LLMError(self._redact(f"cannot create the OpenAI client for {self._url}: {exc}"),
                           retryable=False) from exc

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of the chat-completions request for `request`, exactly as it is posted."""
        body: dict[str, Any] = {
            "model": self._settings.model,
            "messages": [{"role": role, "content": content} for role, content in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        sent = response_format(request, self._settings.structured_output)
        if sent is not None:
            body["response_format"] = sent  # verbatim: llama.cpp's form has a non-standard key
        return body

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, LLMError) and exc.retry_after is not None:
            return exc.retry_after  # never earlier than the server asked (longer waits are refused in _failed)
        # exponential backoff with jitter: initial * 2**(n-1) + uniform(0, initial), capped at backoff_max_s
        s = self._settings
        exp = min(state.attempt_number - 1, 60)
        return min(s.backoff_initial_s * 2.0**exp + random.uniform(0.0, s.backoff_initial_s), s.backoff_max_s)

    def _error(self, exc: openai.APIError) -> LLMError:
        """Map an SDK error to LLMError with a message that says where, what, and what the server said."""
        where = f"POST {self._url}"
        if isinstance(exc, openai.APITimeoutError):
            return LLMError(f"{where}: timed out (timeout {self._settings.timeout_s:g}s)", retryable=True,
                            code="transport_timeout")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = f"{type(cause).__name__}: {cause}" if cause else exc.message
            return LLMError(self._redact(f"{where}: connection failed: {_snip(detail)}"), retryable=True,
                            code="connection_error")
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            retryable = status == 429 or status >= 500
            retry_after = _retry_after(exc.response.headers) if retryable else None
            said = _snip(_server_said(exc.body, exc.response.text))
            message = f"{where}: HTTP {status}: {said}" if said else f"{where}: HTTP {status}"
            if status in (401, 403):
                message += " (check llm.api_key / OPENAI_API_KEY)"
            elif status == 404:
                message += " (check llm.base_url and llm.model)"
            code = "rate_limited" if status == 429 else "server_error" if status >= 500 else "client_error"
            return LLMError(self._redact(message), retryable=retryable, status_code=status, retry_after=retry_after,
                            code=code)
        return LLMError(self._redact(f"{where}: {_snip(str(exc))}"), retryable=True)

    def _failed(self, error: LLMError) -> LLMError:
        """Count a failed request towards the circuit breaker; refuse a Retry-After longer than we may wait."""
        if error.code != "client_error" or error.status_code in ENDPOINT_STATUSES:
            self.breaker.failure(str(error))
        limit = self._settings.max_retry_after_s
        if error.retryable and error.retry_after is not None and error.retry_after > limit:
            return LLMError(f"{error} (the server asked to retry after {error.retry_after:g}s, longer than "
                            f"llm.max_retry_after_s = {limit:g}s)", retryable=False, status_code=error.status_code,
                            retry_after=error.retry_after, code=error.code)
        return error

    def _parse(self, status: int, text: str) -> dict[str, Any]:
        where = f"POST {self._url}: malformed response (HTTP {status})"
        try:
            data = json.loads(text)
        except ValueError:
            raise LLMError(self._redact(f"{where}: body is not JSON: {_snip(text)!r}"), retryable=True,
                           status_code=status) from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise LLMError(self._redact(f"{where}: no choices in body: {_snip(text)}"), retryable=True,
                           status_code=status)
        message = choices[0].get("message")
        if not isinstance(message, Mapping):
            raise LLMError(self._redact(f"{where}: choice has no message: {_snip(text)}"), retryable=True,
                           status_code=status)
        return cast(dict[str, Any], data)

    def _response(self, data: dict[str, Any], attempts: int, start: float, queued_s: float) -> ChatResponse:
        choice = data["choices"][0]
        content = choice["message"].get("content")
        raw_usage = data.get("usage")
        usage: Mapping[str, Any] = raw_usage if isinstance(raw_usage, Mapping) else {}
        model = data.get("model")
        return ChatResponse(
            text=content if isinstance(content, str) else "",
            finish_reason=choice.get("finish_reason"),
            model=model if isinstance(model, str) and model else self._settings.model,
            tokens_in=_int(usage.get("prompt_tokens")),
            tokens_out=_int(usage.get("completion_tokens")),
            latency_ms=(time.perf_counter() - start - queued_s) * 1000.0,
            attempts=attempts,
            queue_ms=queued_s * 1000.0,
        )

    def _final(self, exc: LLMError, attempts: int) -> LLMError:
        if exc.code == "circuit_open" and attempts == 0:
            return exc
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        note = f" (gave up after {tries})" if exc.retryable or self.breaker.is_open else f" ({tries}; not retried)"
        return LLMError(str(exc) + note, retryable=exc.retryable, status_code=exc.status_code,
                        retry_after=exc.retry_after, attempts=attempts, code=exc.code)

    def _redact(self, text: str) -> str:
        key = self._settings.api_key
        if len(key) >= 6 and key != "not-needed":
            text = text.replace(key, "***")
        password = urlsplit(self._settings.base_url).password
        if password:
            text = text.replace(password, "***")
        return text


def response_format(request: ChatRequest, mode: str) -> dict[str, Any] | None:
    """The `response_format` sent for `request` in structured-output `mode` (None: none is sent)."""
    schema = request.schema
    if schema is None or mode == "none":
        return None
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": request.schema_name, "schema": schema, "strict": False}}
    return {"type": "json_object", "schema": grammar_safe(schema)}


# 4xx answers that say the endpoint itself is wrong (bad key, no such model or path): every call will fail alike
ENDPOINT_STATUSES = frozenset({401, 403, 404, 405})


class CircuitBreaker:
    """Opens after `limit` failed requests in a row (any success closes the count); while open, no request is sent.

    Transport failures (timeouts, refused connections, 5xx, 429) and endpoint-level 4xx count; a 400 or 422 for one
    bad request does not. One breaker per client, shared by every thread and task using it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._last = ""

    @property
    def is_open(self) -> bool:
        return self._in_a_row >= self.limit

    @property
    def reason(self) -> str:
        return (f"not sent: the model endpoint failed {self._in_a_row} times in a row "
                f"(llm.max_consecutive_failures = {self.limit}); last error: {self._last}")

    def check(self) -> None:
        if self.is_open:
            raise LLMError(self.reason, retryable=False, attempts=0, code="circuit_open")

    def success(self) -> None:
        with self._lock:
            self._in_a_row = 0

    def failure(self, message: str) -> None:
        with self._lock:
            self._in_a_row += 1
            self._last = message
            opened = self._in_a_row == self.limit
        if opened:
            log.warning("circuit breaker open: the model endpoint failed %d times in a row; no more requests are sent",
                        self.limit)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    code = exc.code if isinstance(exc, LLMError) else type(exc).__name__
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.info("model request failed (%s), attempt %d; retrying in %.2f s", code, state.attempt_number, wait)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _server_said(body: object, text: str) -> str:
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        return json.dumps(body)
    if isinstance(body, str):
        return body
    return text


def _snip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "..."


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _safe_url(url: str) -> str:
    """The URL without any user:password part, for messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


# llama.cpp compiles length, item and range bounds into grammar rules: nested repetitions that slow every sampled
# token, and large ones (maxLength 4000) fail to compile and take the server process down. The validator checks the
# full schema on every answer anyway, so in json_object mode none of them is sent; types, enums, required and
# additionalProperties (the structure that keeps a small model on track) are.
GRAMMAR_BOUNDS = frozenset({
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
})


def grammar_safe(schema: Any) -> Any:
    """A copy of `schema` without length, item and range bounds (json_object mode only; see GRAMMAR_BOUNDS)."""
    if isinstance(schema, dict):
        return {k: grammar_safe(v) for k, v in schema.items()
                if not (k in GRAMMAR_BOUNDS and isinstance(v, int | float) and not isinstance(v, bool))}
    if isinstance(schema, list):
        return [grammar_safe(v) for v in schema]
    return schema
