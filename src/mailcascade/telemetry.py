"""Traces: OpenTelemetry spans with OpenInference attributes, or nothing at all.

The pipeline talks to a `Tracer`: `NoTracer` (the default) does nothing and imports nothing; `OTelTracer` imports the
OpenTelemetry SDK when it is built (`pip install 'mailcascade[telemetry]'`). Spans: one per email (CHAIN), one per
stage (CHAIN; the retrieve stage is a RETRIEVER with its document ids and scores), one per model call (LLM: model
name, token counts, invocation parameters, attempt number). Email, prompt, output and passage text go into spans
only with `telemetry.include_content = true`.

The tracer provider is the pipeline's own (the global one is left alone), unless you pass one in.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from mailcascade.config import TelemetrySettings
from mailcascade.errors import ConfigError, LLMError
from mailcascade.llm.base import LLM
from mailcascade.types import ChatRequest, ChatResponse, Hit

KIND = "openinference.span.kind"
AttributeValue = str | bool | int | float


class Span(Protocol):
    def set(self, attributes: Mapping[str, AttributeValue]) -> None: ...

    def fail(self, message: str) -> None: ...


class Tracer(Protocol):
    include_content: bool

    def span(
        self, name: str, kind: str, attributes: Mapping[str, AttributeValue]
    ) -> contextlib.AbstractContextManager[Span]: ...

    def flush(self) -> None: ...


class _NoSpan(contextlib.AbstractContextManager["_NoSpan"]):
    """A span that records nothing, and its own context manager (one object for every span: no cost per span)."""

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, attributes: Mapping[str, AttributeValue]) -> None:
        pass

    def fail(self, message: str) -> None:
        pass


_NO_SPAN = _NoSpan()


class NoTracer:
    """Telemetry off: every span is a no-op."""

    include_content = False

    def span(self, name: str, kind: str, attributes: Mapping[str, AttributeValue]) -> _NoSpan:
        return _NO_SPAN

    def flush(self) -> None:
        pass


class _OTelSpan:
    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, attributes: Mapping[str, AttributeValue]) -> None:
        self._span.set_attributes(dict(attributes))

    def fail(self, message: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, message))


class OTelTracer:
    """Spans through an OpenTelemetry `TracerProvider` (yours, or one built from `[telemetry]` settings)."""

    def __init__(self, provider: Any, *, include_content: bool = False, owned: bool = False) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("mailcascade")
        self.include_content = include_content
        self._owned = owned

    @classmethod
    def from_settings(cls, settings: TelemetrySettings) -> OTelTracer:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
        except ImportError:
            raise ConfigError(f"telemetry.exporter = {settings.exporter!r} needs the OpenTelemetry SDK: "
                              "pip install 'mailcascade[telemetry]'", key="telemetry.exporter") from None
        exporter: SpanExporter
        if settings.exporter == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                raise ConfigError("telemetry.exporter = 'otlp' needs opentelemetry-exporter-otlp-proto-http: "
                                  "pip install 'mailcascade[telemetry]'", key="telemetry.exporter") from None
            exporter = OTLPSpanExporter(endpoint=settings.endpoint)
        else:
            exporter = ConsoleSpanExporter(out=sys.stderr)  # stdout may carry records (`run --out -`)
        provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, include_content=settings.include_content, owned=True)

    @contextlib.contextmanager
    def span(self, name: str, kind: str, attributes: Mapping[str, AttributeValue]) -> Iterator[Span]:
        with self._tracer.start_as_current_span(name, attributes={KIND: kind, **attributes}) as span:
            yield _OTelSpan(span)

    def flush(self) -> None:
        """Export the spans still buffered, if the provider was built here (a provider passed in is the caller's)."""
        if self._owned:
            self._provider.force_flush()


def tracer_from_settings(settings: TelemetrySettings) -> Tracer:
    return NoTracer() if settings.exporter == "none" else OTelTracer.from_settings(settings)


class TracedLLM:
    """An LLM whose every call is an LLM span; `attempt` counts this stage's calls (re-asks included)."""

    def __init__(self, inner: LLM, tracer: Tracer, stage: str) -> None:
        self._inner = inner
        self._tracer = tracer
        self._stage = stage
        self._calls = 0

    @property
    def model(self) -> str:
        return self._inner.model

    def complete(self, request: ChatRequest) -> ChatResponse:
        self._calls += 1
        with self._tracer.span(f"{self._stage}.llm", "LLM", self._request_attributes(request)) as span:
            try:
                response = self._inner.complete(request)
            except LLMError as exc:
                _failed(span, exc)
                raise
            span.set(self._response_attributes(response))
            return response

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        self._calls += 1
        with self._tracer.span(f"{self._stage}.llm", "LLM", self._request_attributes(request)) as span:
            try:
                response = await self._inner.acomplete(request)
            except LLMError as exc:
                _failed(span, exc)
                raise
            span.set(self._response_attributes(response))
            return response

    def _request_attributes(self, request: ChatRequest) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            "llm.system": "openai", "llm.model_name": self._inner.model, "mailcascade.stage": self._stage,
            "mailcascade.attempt": self._calls,
            "llm.invocation_parameters": json.dumps({"max_tokens": request.max_tokens,
                                                     "temperature": request.temperature}),
        }
        if self._tracer.include_content:
            attributes["input.value"] = json.dumps([{"role": r, "content": c} for r, c in request.messages],
                                                   ensure_ascii=False)
            attributes["input.mime_type"] = "application/json"
            for i, (role, content) in enumerate(request.messages):
                attributes[f"llm.input_messages.{i}.message.role"] = role
                attributes[f"llm.input_messages.{i}.message.content"] = content
        return attributes

    def _response_attributes(self, response: ChatResponse) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            "llm.model_name": response.model or self._inner.model,
            "llm.token_count.prompt": response.tokens_in, "llm.token_count.completion": response.tokens_out,
            "llm.token_count.total": response.tokens_in + response.tokens_out,
            "mailcascade.finish_reason": response.finish_reason or "", "mailcascade.cached": response.cached,
            "mailcascade.http_attempts": response.attempts,
        }
        if self._tracer.include_content:
            attributes["output.value"] = response.text
            attributes["llm.output_messages.0.message.role"] = "assistant"
            attributes["llm.output_messages.0.message.content"] = response.text
        return attributes


def _failed(span: Span, exc: LLMError) -> None:
    span.set({"mailcascade.error_code": exc.code, "mailcascade.http_attempts": exc.attempts})
    span.fail(exc.code)


def document_attributes(hits: Sequence[Hit], include_content: bool) -> dict[str, AttributeValue]:
    """OpenInference retrieval attributes: each hit's passage id and score (and its text with content on)."""
    attributes: dict[str, AttributeValue] = {}
    for i, hit in enumerate(hits):
        prefix = f"retrieval.documents.{i}.document"
        attributes[f"{prefix}.id"] = hit.passage_id
        attributes[f"{prefix}.score"] = float(hit.score)
        attributes[f"{prefix}.metadata"] = json.dumps({"product_id": hit.product_id})
        if include_content:
            attributes[f"{prefix}.content"] = hit.text
    return attributes
