"""Traces: OpenInference spans through the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fakes import HashEmbedder, sensible
from fakeserver import FakeServer, Reply
from mailcascade.catalog import build_index, catalog_passages, load_catalog
from mailcascade.config import LLMSettings, Settings, TelemetrySettings, load_settings
from mailcascade.errors import ConfigError
from mailcascade.pipeline import Pipeline
from mailcascade.telemetry import NoTracer, OTelTracer, tracer_from_settings
from mailcascade.types import Email

CATALOG = Path(__file__).resolve().parents[1] / "data" / "catalog.jsonl"
BODY = "I returned the WOMBAT-7431 shoes last week. Where is my refund?"
EMAIL = Email(id="e1", subject="Refund please", body=BODY)


@pytest.fixture(scope="module")
def index():  # type: ignore[no-untyped-def]
    return build_index(catalog_passages(load_catalog(CATALOG)), HashEmbedder())


def traced_run(tmp_path: Path, index: Any, server: FakeServer, include_content: bool) -> list[ReadableSpan]:  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    base = Settings()
    settings = base.replace(
        llm=LLMSettings(base_url=server.base_url, model="fake-model", max_retries=1, backoff_initial_s=0.01,
                        timeout_s=5),
        store=dataclasses.replace(base.store, path=str(tmp_path / "log.db"), cache=False),
    )
    tracer = OTelTracer(provider, include_content=include_content)
    with Pipeline.from_config(settings=settings, index=index, tracer=tracer) as pipeline:
        result = pipeline.run(EMAIL)
    assert result.status == "ok", result.error
    return list(exporter.get_finished_spans())


def by_name(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


def test_one_span_per_email_stage_and_model_call_in_a_tree(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    route_json = json.dumps({"department": "returns", "confidence": 0.8, "reason": "refund"})
    with FakeServer(sensible) as server:
        server.push(Reply("no json here"), Reply(route_json))  # the route stage needs a re-ask: two LLM spans
        spans = traced_run(tmp_path, index, server, include_content=False)
    named = by_name(spans)
    assert sorted(named) == ["draft", "draft.llm", "email", "retrieve", "route", "route.llm"]
    email = named["email"][0]
    assert email.parent is None and email.attributes["openinference.span.kind"] == "CHAIN"
    assert email.attributes["mailcascade.email.id"] == "e1" and email.attributes["mailcascade.status"] == "ok"
    for stage in ("route", "retrieve", "draft"):
        span = named[stage][0]
        assert span.parent is not None and span.parent.span_id == email.context.span_id
        assert span.context.trace_id == email.context.trace_id
    assert named["route"][0].attributes["openinference.span.kind"] == "CHAIN"
    assert named["route"][0].attributes["mailcascade.department"] == "returns"

    calls = sorted(named["route.llm"], key=lambda s: s.attributes["mailcascade.attempt"])
    assert [c.attributes["mailcascade.attempt"] for c in calls] == [1, 2]
    for call in calls + named["draft.llm"]:
        parent = named[str(call.attributes["mailcascade.stage"])][0]
        assert call.parent is not None and call.parent.span_id == parent.context.span_id
        a = call.attributes
        assert a["openinference.span.kind"] == "LLM" and a["llm.model_name"] == "fake-model"
        assert a["llm.token_count.total"] == a["llm.token_count.prompt"] + a["llm.token_count.completion"] > 0
        assert json.loads(str(a["llm.invocation_parameters"]))["max_tokens"] > 0
    assert named["route"][0].attributes["mailcascade.attempts"] == 2

    retrieve = named["retrieve"][0].attributes
    assert retrieve["openinference.span.kind"] == "RETRIEVER"
    ids = [retrieve[f"retrieval.documents.{i}.document.id"] for i in range(5)]
    scores = [retrieve[f"retrieval.documents.{i}.document.score"] for i in range(5)]
    assert all(isinstance(i, str) and i for i in ids) and scores == sorted(scores, reverse=True)
    assert "retrieval.documents.5.document.id" not in retrieve


def _all_text(spans: list[ReadableSpan]) -> str:
    return "\n".join(f"{k}={v}" for s in spans for k, v in (s.attributes or {}).items())


def test_no_content_in_spans_by_default(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        spans = traced_run(tmp_path, index, server, include_content=False)
    text = _all_text(spans)
    assert "WOMBAT" not in text and "Refund please" not in text and "we are on it" not in text
    assert "input.value" not in text and "output.value" not in text and ".document.content" not in text


def test_content_in_spans_when_enabled(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        spans = traced_run(tmp_path, index, server, include_content=True)
    named = by_name(spans)
    assert BODY in str(named["email"][0].attributes["input.value"])
    assert "we are on it" in str(named["email"][0].attributes["output.value"])
    route_call = named["route.llm"][0].attributes
    assert BODY in str(route_call["input.value"]) and "returns" in str(route_call["output.value"])
    assert route_call["llm.input_messages.0.message.role"] == "system"
    assert named["retrieve"][0].attributes["retrieval.documents.0.document.content"]


def test_off_by_default_and_settings_are_checked() -> None:
    assert isinstance(tracer_from_settings(Settings().telemetry), NoTracer)
    assert isinstance(tracer_from_settings(TelemetrySettings(exporter="console")), OTelTracer)
    otlp = tracer_from_settings(TelemetrySettings(exporter="otlp", endpoint="http://127.0.0.1:9/v1/traces"))
    assert isinstance(otlp, OTelTracer)
    otlp.flush()
    with pytest.raises(ConfigError, match=r"telemetry\.exporter"):
        load_settings(env={"MAILCASCADE_TELEMETRY__EXPORTER": "jaeger"})


def test_no_opentelemetry_import_when_telemetry_is_off(tmp_path: Path) -> None:
    code = ("import sys; from mailcascade.pipeline import Pipeline; "
            "p = Pipeline.from_config(); p.close(); "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    env = {"MAILCASCADE_STORE__PATH": str(tmp_path / "x.db"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=True)
    assert out.stdout.strip() == "[]"


def _settings_with(tmp_path: Path, server: FakeServer, telemetry: TelemetrySettings) -> Settings:
    base = Settings()
    return base.replace(
        llm=LLMSettings(base_url=server.base_url, model="fake-model", max_retries=1, timeout_s=5),
        store=dataclasses.replace(base.store, path=str(tmp_path / "log.db"), cache=False), telemetry=telemetry)


def test_the_console_exporter_from_settings_writes_the_spans(tmp_path: Path, index, capsys) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(sensible) as server:
        settings = _settings_with(tmp_path, server, TelemetrySettings(exporter="console"))
        with Pipeline.from_config(settings=settings, index=index) as pipeline:
            assert pipeline.run(EMAIL).status == "ok"
    out = capsys.readouterr().err
    assert '"openinference.span.kind": "CHAIN"' in out and '"openinference.span.kind": "LLM"' in out
    assert '"mailcascade.email.id": "e1"' in out and "WOMBAT" not in out


def test_the_otlp_exporter_posts_the_spans_to_the_endpoint(tmp_path: Path, index) -> None:  # type: ignore[no-untyped-def]
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((self.path, self.headers.get("Content-Type", ""), body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
        with FakeServer(sensible) as server:
            settings = _settings_with(tmp_path, server, TelemetrySettings(exporter="otlp", endpoint=endpoint))
            with Pipeline.from_config(settings=settings, index=index) as pipeline:
                assert pipeline.run(EMAIL).status == "ok"
    finally:
        collector.shutdown()
        collector.server_close()
    assert received and all(path == "/v1/traces" for path, _, _ in received)
    assert received[0][1] == "application/x-protobuf"
    payload = b"".join(body for _, _, body in received)
    assert b"openinference.span.kind" in payload and b"RETRIEVER" in payload and b"WOMBAT" not in payload
