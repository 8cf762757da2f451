"""The FastAPI app over one Pipeline: a lifespan that opens and closes it, auth as a dependency, no logic in routes.

    app = create_app(settings)          # or create_app(settings, pipeline=my_pipeline)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailcascade.config import Settings
from mailcascade.email_parse import parse_json_object
from mailcascade.errors import EmailParseError, MailcascadeError
from mailcascade.pipeline import STAGES, Pipeline
from mailcascade.record import ResultRecord, record_line
from mailcascade.serve.auth import require_key
from mailcascade.serve.batches import BatchWorker
from mailcascade.serve.metrics import Metrics
from mailcascade.serve.models import (
    BatchAccepted,
    BatchIn,
    BatchOut,
    Check,
    EmailIn,
    ErrorOut,
    FeedbackIn,
    FeedbackOut,
    HealthOut,
    ReadyOut,
)
from mailcascade.store import Store, open_store
from mailcascade.types import Email, Result

log = logging.getLogger(__name__)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in (
        (401, "missing or invalid API key"), (413, "request body too large"), (422, "invalid request"),
        (503, "too much work in flight: try again after Retry-After seconds"))}


class Busy(Exception):
    """More work is in flight than `serve.max_in_flight` (or queued than `serve.max_queued_emails`)."""


@dataclass
class State:
    settings: Settings
    pipeline: Pipeline | None = None
    store: Store | None = None
    worker: BatchWorker | None = None
    metrics: Metrics = field(default_factory=Metrics)
    in_flight: int = 0
    parts: dict[str, Check] = field(default_factory=dict)  # "router", "index": loaded at start-up, or why not
    warmup: asyncio.Task[None] | None = None


def parse_stages(value: str | None, default: str) -> tuple[str, ...]:
    """`route,retrieve` -> ("route", "retrieve"); unknown names raise MailcascadeError naming them."""
    items = tuple(s.strip() for s in (value if value is not None else default).split(",") if s.strip())
    bad = [s for s in items if s not in STAGES]
    if bad or not items:
        raise MailcascadeError(f"stages: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(STAGES)}")
    return items


def to_email(item: EmailIn, source: str) -> Email:
    """The same parsing and normalisation as `mailcascade run` applies to a JSON input."""
    try:
        return parse_json_object(item.model_dump(by_alias=True), source)
    except EmailParseError as exc:
        raise MailcascadeError(f"email {item.id}: {exc.reason}") from None


def create_app(settings: Settings, *, pipeline: Pipeline | None = None) -> FastAPI:
    """The service. Without `pipeline`, one is built from `settings` at start-up and closed at shutdown."""
    state = State(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = pipeline is None
        running: Pipeline = (pipeline if pipeline is not None else
                             await asyncio.to_thread(lambda: Pipeline.from_config(settings=settings)))
        state.pipeline = running
        state.store = running.store or open_store(settings.store)
        state.worker = BatchWorker(running, state.store, settings.serve.batch_concurrency,
                                   lambda email, result: _served(state, email, result, "batch"))
        state.worker.start()
        worker = state.worker
        state.metrics.in_flight.labels(via="batch").set_function(lambda: worker.in_flight)
        state.warmup = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            await state.worker.stop()  # uvicorn has drained the requests; now the batch emails in flight
            state.warmup.cancel()
            if own:
                await running.aclose()

    app = FastAPI(title="mailcascade", version="0.1.0", lifespan=lifespan,
                  description="Route, retrieve and draft replies to customer email; feedback from the agents.")
    app.state.drain = lambda: state.worker.drain() if state.worker is not None else None  # on SIGTERM (run.py)
    app.add_middleware(BodyLimit, limit=settings.serve.max_request_bytes)
    auth = [Depends(require_key(settings.serve.api_keys))]
    _errors(app, state)

    @app.get("/healthz", response_model=HealthOut, tags=["ops"])
    async def healthz() -> HealthOut:
        """The process is up."""
        return HealthOut()

    @app.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}}, tags=["ops"])
    async def readyz() -> JSONResponse:
        """Ready when the index is loaded and the model endpoint answers (each only if the default stages need it)."""
        out = await _readiness(state)
        return JSONResponse(out.model_dump(), status_code=200 if out.ready else 503)

    @app.get("/metrics", tags=["ops"], dependencies=auth, response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics() -> Response:
        """Prometheus metrics: emails, stage latency histograms, failure codes, tokens, in flight."""
        return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/emails", response_model=ResultRecord, dependencies=auth, responses=ERRORS, tags=["emails"])
    async def process_email(
        item: EmailIn, stages: str | None = Query(None, description="comma-separated, e.g. route,retrieve"),
    ) -> Response:
        """Run the cascade on one email and answer with its result record (the shape `mailcascade run` writes)."""
        chosen = parse_stages(stages, settings.serve.stages)
        email = to_email(item, "api")
        if state.in_flight >= settings.serve.max_in_flight:
            state.metrics.rejected.labels(endpoint="emails").inc()
            raise Busy(f"{state.in_flight} emails in flight (serve.max_in_flight)")
        state.in_flight += 1
        state.metrics.in_flight.labels(via="api").inc()
        try:
            result = await _pipeline(state).arun(email, stages=chosen)
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.labels(via="api").dec()
        line = _served(state, email, result, "api")  # queued for the store: no wait here
        return Response(line, media_type="application/json")  # serialised once, by the record model

    @app.post("/v1/batches", status_code=202, response_model=BatchAccepted, dependencies=auth, responses=ERRORS,
              tags=["batches"])
    async def submit_batch(
        batch: BatchIn, stages: str | None = Query(None, description="comma-separated, e.g. route,retrieve"),
    ) -> BatchAccepted:
        """Queue a batch; answered once every email is written durably to the store. A worker processes it."""
        chosen = ",".join(parse_stages(stages, settings.serve.stages))
        emails = [to_email(item, f"emails[{n}]") for n, item in enumerate(batch.emails)]
        store = _store(state)
        queued = await asyncio.to_thread(store.queued_emails)
        if queued + len(emails) > settings.serve.max_queued_emails:
            state.metrics.rejected.labels(endpoint="batches").inc()
            raise Busy(f"{queued} batch emails waiting (serve.max_queued_emails)")
        batch_id = uuid.uuid4().hex
        rows = [(e.id, item.model_dump_json(by_alias=True)) for e, item in zip(emails, batch.emails, strict=True)]
        await asyncio.to_thread(store.add_batch, batch_id, chosen, rows)
        if state.worker is not None:
            state.worker.wake()
        return BatchAccepted(id=batch_id)

    @app.get("/v1/batches/{batch_id}", response_model=BatchOut, dependencies=auth,
             responses={404: {"model": ErrorOut}, 401: ERRORS[401]}, tags=["batches"])
    async def get_batch(batch_id: str) -> BatchOut:
        """The batch's status and the results finished so far."""
        found = await asyncio.to_thread(_store(state).batch, batch_id)
        if found is None:
            raise StarletteHTTPException(404, f"no batch {batch_id}: use the id POST /v1/batches answered with")
        return BatchOut.model_validate(found)

    @app.post("/v1/emails/{email_id}/feedback", status_code=201, response_model=FeedbackOut, dependencies=auth,
              responses={404: {"model": ErrorOut}, **ERRORS}, tags=["feedback"])
    async def feedback(email_id: str, item: FeedbackIn) -> FeedbackOut:
        """What the agent did with the email: its department, the reply sent, and the outcome."""
        store = _store(state)
        if await asyncio.to_thread(store.served, email_id) is None:
            raise StarletteHTTPException(404, f"no result for email {email_id}: feedback is for emails this service "
                                         "has answered")
        feedback_id = uuid.uuid4().hex
        await asyncio.to_thread(store.add_feedback, feedback_id, email_id, item.department, item.sent_reply,
                                item.outcome)
        state.metrics.feedback.labels(outcome=item.outcome).inc()
        return FeedbackOut(id=feedback_id, email_id=email_id)

    return app


def _pipeline(state: State) -> Pipeline:
    if state.pipeline is None:
        raise MailcascadeError("the service is starting: try again in a moment")
    return state.pipeline


def _store(state: State) -> Store:
    if state.store is None:
        raise MailcascadeError("the service is starting: try again in a moment")
    return state.store


def _served(state: State, email: Email, result: Result, via: str) -> str:
    """Count the result and keep it for feedback (the email text only with store.store_email_bodies); returns the
    record as JSON."""
    state.metrics.observe(result, via)
    keep = state.settings.store.store_email_bodies
    line = record_line(result)
    _store(state).put_served(email.id, line, subject=email.subject if keep else None,
                             body=email.body if keep else None, sender=email.sender if keep else None)
    return line


async def _warm_up(state: State) -> None:
    """Load what the default stages need (router, index) and start the model, before traffic asks for them."""
    pipeline = _pipeline(state)
    needs = pipeline.needs(parse_stages(None, state.settings.serve.stages))
    for part, stage in (("router", "route"), ("index", "retrieve")):
        if part in needs:
            state.parts[part] = Check(ok=False, detail="loading")
            try:
                await pipeline.astart([stage])
                state.parts[part] = Check(ok=True, detail="loaded")
            except Exception as exc:
                state.parts[part] = Check(ok=False, detail=f"cannot load the {part}: {exc}")
                log.warning("cannot load the %s: %s", part, exc)
    if "model" in needs:
        try:
            await pipeline.astart(["draft"])  # the embedded model server, if the settings point at it
        except MailcascadeError as exc:
            log.warning("the model server did not start: %s", exc)


async def _readiness(state: State) -> ReadyOut:
    """Each part the default stages need: loaded (router, index) or answering (the model endpoint)."""
    needs = _pipeline(state).needs(parse_stages(None, state.settings.serve.stages))
    loading = Check(ok=False, detail="loading")
    checks: dict[str, Check] = {part: state.parts.get(part, loading) for part in ("router", "index") if part in needs}
    if "model" in needs:
        checks["model"] = await _model_answers(state.settings)
    return ReadyOut(ready=all(c.ok for c in checks.values()), checks=checks)


async def _model_answers(settings: Settings) -> Check:
    url = settings.llm.base_url.rstrip("/") + "/models"
    try:
        async with httpx.AsyncClient(timeout=settings.llm.connect_timeout_s) as client:
            response = await client.get(url, headers={"Authorization": f"Bearer {settings.llm.api_key}"})
    except httpx.HTTPError as exc:
        return Check(ok=False, detail=f"model endpoint not answering: {type(exc).__name__}")
    if response.status_code != 200:
        return Check(ok=False, detail=f"model endpoint answered {response.status_code} to GET /models")
    return Check(ok=True, detail="answering")


def _errors(app: FastAPI, state: State) -> None:
    """Every error a client can cause is `{"error": "one line"}`."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _one_line(exc)}, status_code=422)

    @app.exception_handler(MailcascadeError)
    async def user_error(request: Request, exc: MailcascadeError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"error": f"busy: {exc}; try again after {state.settings.serve.retry_after_s} s"},
                            status_code=503, headers={"Retry-After": str(state.settings.serve.retry_after_s)})


def _one_line(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}".replace("\n", " ")


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """413 for a request body over `limit` bytes: by Content-Length before reading; a body without one (chunked) is
    read up to the limit first, then handed on."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None:  # the HTTP server holds the body to its Content-Length
            if length.isdigit() and int(length) > self.limit:
                await self._refuse(send)
            else:
                await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse({"error": f"request body over {self.limit} bytes (serve.max_request_bytes): send "
                                 "smaller batches"}, status_code=413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
