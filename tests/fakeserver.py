"""A real HTTP server on loopback that speaks the OpenAI chat-completions API and replays a script.

    with FakeServer() as server:
        server.push(Status(500), Reply('{"department": "orders"}'))
        client = OpenAIClient(LLMSettings(base_url=server.base_url))

Each POST /v1/chat/completions takes the next scripted step; with the script empty, the default
responder (a callable from the request JSON to a step) answers. Every request is recorded.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """A normal completion. Token counts default to word counts of the prompt and the content."""

    content: str | None = "ok"
    finish_reason: str | None = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage: bool = True  # False: the body has no "usage" member
    model: str | None = None  # None: echo the requested model


@dataclass(frozen=True)
class Delay:
    """Wait `seconds` before answering with `then` (or the default responder), e.g. to trigger timeouts."""

    seconds: float
    then: Step | None = None


@dataclass(frozen=True)
class Status:
    """An HTTP error with an OpenAI-style error body; `retry_after` becomes the Retry-After header."""

    code: int
    message: str = ""
    retry_after: str | float | None = None


@dataclass(frozen=True)
class Garbage:
    """A 200 whose body is not JSON."""

    body: str = "<html><body>502 Bad Gateway</body></html>"
    content_type: str = "application/json"


@dataclass(frozen=True)
class NoChoices:
    """A 200 with a valid JSON body that has no choices."""

    body: dict[str, Any] = field(default_factory=lambda: {"id": "chatcmpl-x", "object": "chat.completion"})


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering."""


Step = Reply | Delay | Status | Garbage | NoChoices | Drop
Responder = Callable[[dict[str, Any]], Step]


@dataclass(frozen=True)
class Recorded:
    """One request the server received."""

    method: str
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival


def default_responder(body: dict[str, Any]) -> Step:
    return Reply("ok")


class FakeServer:
    """OpenAI-compatible fake on 127.0.0.1 (port 0 by default). Use as a context manager."""

    def __init__(
        self,
        responder: Responder = default_responder,
        *,
        latency_s: float = 0.0,
        model: str = "fake-model",
        port: int = 0,
        keep_alive: bool = False,
    ) -> None:
        self.responder = responder
        self.latency_s = latency_s  # added before every reply, for benchmarks
        self.keep_alive = keep_alive  # answers keep the connection open, as real servers do (default: closed)
        self.model = model
        self._port = port
        self._lock = threading.Lock()
        self._script: deque[Step] = deque()
        self._requests: list[Recorded] = []
        self._ids = itertools.count(1)
        self._in_flight = 0
        self._max_in_flight = 0
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeServer:
        self._stopping.clear()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", self._port), handler)
        self._httpd.daemon_threads = False  # server_close() joins the handler threads
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers that are sleeping in a Delay
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- script and records --------------------------------------------------------------------

    def push(self, *steps: Step) -> None:
        with self._lock:
            self._script.extend(steps)

    def extend(self, steps: Iterable[Step]) -> None:
        self.push(*steps)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat requests, in arrival order."""
        return [r.body for r in self.chat_requests if r.body is not None]

    @property
    def max_in_flight(self) -> int:
        """The most chat requests that were being handled at the same time."""
        with self._lock:
            return self._max_in_flight

    def clear(self) -> None:
        with self._lock:
            self._script.clear()
            self._requests.clear()

    # --- used by the handler -------------------------------------------------------------------

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self._requests.append(rec)

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _next_step(self, body: dict[str, Any]) -> Step:
        with self._lock:
            if self._script:
                return self._script.popleft()
        return self.responder(body)

    def _completion(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        content = reply.content or ""
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        out: dict[str, Any] = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or body.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content},
                    "finish_reason": reply.finish_reason,
                }
            ],
        }
        if reply.usage:
            p = reply.prompt_tokens if reply.prompt_tokens is not None else prompt_words
            c = reply.completion_tokens if reply.completion_tokens is not None else len(content.split())
            out["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        return out


class _Server(ThreadingHTTPServer):
    # listen backlog: the default of 5 drops connections when many clients connect at once (64 in flight), and a
    # dropped SYN is retried only after a second
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    fake: FakeServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # socket timeout, so a stuck client cannot hold a handler thread forever

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet

    def do_GET(self) -> None:
        self.fake._record(Recorded("GET", self.path, None, dict(self.headers), time.monotonic()))
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": self.fake.model, "object": "model", "owned_by": "fake"}
            self._json(200, {"object": "list", "data": [model]})
        else:
            self._json(404, _error(f"no route for GET {self.path}", "not_found"))

    def do_POST(self) -> None:
        arrived = time.monotonic()
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.fake._record(Recorded("POST", self.path, body, dict(self.headers), arrived))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, _error(f"no route for POST {self.path}", "not_found"))
            return
        if not isinstance(body, dict):
            self._json(400, _error("request body is not a JSON object", "invalid_request_error"))
            return
        self.fake._enter()
        try:
            self._answer(self.fake._next_step(body), body)
        finally:
            self.fake._leave()

    def _answer(self, step: Step, body: dict[str, Any]) -> None:
        fake = self.fake
        if isinstance(step, Delay):
            if fake._stopping.wait(step.seconds):
                self.close_connection = True
                return
            self._answer(step.then if step.then is not None else fake.responder(body), body)
        elif isinstance(step, Reply):
            if fake.latency_s and fake._stopping.wait(fake.latency_s):
                return
            self._json(200, fake._completion(step, body))
        elif isinstance(step, Status):
            headers = {"Retry-After": str(step.retry_after)} if step.retry_after is not None else {}
            message = step.message or f"scripted HTTP {step.code}"
            kind = "rate_limit_error" if step.code == 429 else "server_error" if step.code >= 500 else "invalid_request"
            self._json(step.code, _error(message, kind), headers)
        elif isinstance(step, Garbage):
            self._send(200, step.body.encode(), step.content_type)
        elif isinstance(step, NoChoices):
            self._json(200, step.body)
        else:  # Drop
            self.close_connection = True

    def _json(self, code: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, code: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if not self.fake.keep_alive:
                self.send_header("Connection", "close")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up (e.g. it timed out); nothing to do
            return
        self.close_connection = not self.fake.keep_alive


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": None, "param": None}}
