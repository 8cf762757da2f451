"""Prometheus metrics of one app, in a registry the app owns (never the process-global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mailcascade.types import Result

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.emails = Counter("mailcascade_emails", "Emails processed", ["via", "status"], registry=self.registry)
        self.stage_latency = Histogram("mailcascade_stage_latency_seconds", "Stage latency", ["stage"],
                                       buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.failure_codes = Counter("mailcascade_failure_codes", "Failure codes seen per stage", ["stage", "code"],
                                     registry=self.registry)
        self.tokens = Counter("mailcascade_tokens", "Model tokens", ["stage", "direction"], registry=self.registry)
        self.in_flight = Gauge("mailcascade_in_flight", "Emails being processed now", ["via"],
                               registry=self.registry)
        self.rejected = Counter("mailcascade_rejected", "Requests refused with 503 (too much work in flight)",
                                ["endpoint"], registry=self.registry)
        self.feedback = Counter("mailcascade_feedback", "Agent feedback received", ["outcome"],
                                registry=self.registry)

    def observe(self, result: Result, via: str) -> None:
        self.emails.labels(via=via, status=result.status).inc()
        for stage in result.stages:
            if stage.status in ("skipped", "given"):
                continue
            self.stage_latency.labels(stage=stage.stage).observe(stage.latency_ms / 1000.0)
            for code in stage.failure_codes:
                self.failure_codes.labels(stage=stage.stage, code=code).inc()
            if stage.tokens_in or stage.tokens_out:
                self.tokens.labels(stage=stage.stage, direction="in").inc(stage.tokens_in)
                self.tokens.labels(stage=stage.stage, direction="out").inc(stage.tokens_out)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
