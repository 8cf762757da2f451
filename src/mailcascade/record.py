"""The result record: THE one definition of its shape (pydantic models).

`mailcascade run` writes one `ResultRecord` per line and the HTTP service (`mailcascade serve`) answers with the same
model, so the JSONL files and the OpenAPI document cannot drift apart. `error` and a stage's `error`/`error_code` are
left out when empty, as documented in the README's "Output record" table.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mailcascade.types import Hit, Result, StageRecord


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _is_empty(value: object) -> bool:
    return not value


def _optional(description: str) -> Any:
    """A field that is left out of the record when empty."""
    return Field(None, description=description, exclude_if=_is_empty)


class HitRecord(_Record):
    """One retrieved catalogue passage."""

    product_id: str
    passage_id: str
    score: float
    text: str


class StageTrace(_Record):
    """The trace of one stage for one email."""

    stage: str
    status: Literal["ok", "failed", "error", "skipped", "given"]
    prompt_hash: str = ""
    model: str = ""
    attempts: int = Field(0, description="validated model answers, re-asks included")
    http_attempts: int = Field(0, description="requests sent, transport retries included")
    failure_codes: list[str] = Field(default_factory=list)
    validator_status: Literal["clean", "repaired", "lossy", "failed"] | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = Field(0.0, description="the stage's own time")
    queue_ms: float = Field(0.0, description="time spent waiting for a model slot (llm.max_in_flight)")
    input_hash: str = ""
    error: str | None = _optional("present when the stage did not succeed")
    error_code: str | None = _optional("with status error: why no answer came (a transport code)")


class ResultRecord(_Record):
    """The outcome for one email: a result or an explicit failure record."""

    id: str
    status: Literal["ok", "failed"]
    error: str | None = _optional("present when failed: a clear reason")
    source: str = ""
    department: str | None = None
    confidence: float | None = None
    route_reason: str | None = None
    decided_by: str | None = _optional("who routed: router (embedding or trained) or llm")
    oos_score: float | None = _optional("a router with an out-of-scope threshold: the score it compared with it")
    before_threshold: str | None = _optional("that router's first-ranked department before the threshold applied")
    hits: list[HitRecord] = Field(default_factory=list)
    draft: str | None = None
    cited_product_ids: list[str] = Field(default_factory=list)
    stages: list[StageTrace] = Field(default_factory=list)


def hit_record(hit: Hit) -> HitRecord:
    return HitRecord(product_id=hit.product_id, passage_id=hit.passage_id, score=round(hit.score, 6), text=hit.text)


def stage_trace(stage: StageRecord) -> StageTrace:
    return StageTrace(
        stage=stage.stage,
        status=stage.status,
        prompt_hash=stage.prompt_hash,
        model=stage.model,
        attempts=len(stage.attempts),
        http_attempts=sum(a.http_attempts for a in stage.attempts) + stage.lost_http_attempts,
        failure_codes=list(stage.failure_codes),
        validator_status=stage.attempts[-1].status if stage.attempts else None,
        tokens_in=stage.tokens_in,
        tokens_out=stage.tokens_out,
        latency_ms=round(stage.latency_ms, 1),
        queue_ms=round(stage.queue_ms, 1),
        input_hash=stage.input_hash,
        error=stage.error or None,
        error_code=stage.error_code or None,
    )


def result_record(result: Result) -> ResultRecord:
    route, draft = result.route, result.draft
    return ResultRecord(
        id=result.id,
        status=result.status,
        error=result.error or None,
        source=result.source,
        department=route.department if route else None,
        confidence=route.confidence if route else None,
        route_reason=route.reason if route else None,
        decided_by=(route.decided_by or None) if route else None,
        oos_score=route.oos_score if route else None,
        before_threshold=route.before_threshold if route else None,
        hits=[hit_record(h) for h in result.hits],
        draft=draft.reply if draft else None,
        cited_product_ids=list(draft.product_ids) if draft else [],
        stages=[stage_trace(s) for s in result.stages],
    )


def record_dict(result: Result) -> dict[str, Any]:
    """The record as plain JSON-ready data (what one line of `run`'s output holds)."""
    out: dict[str, Any] = result_record(result).model_dump(mode="json")
    return out


def record_line(result: Result) -> str:
    """One JSONL line (no newline) for `result`."""
    return result_record(result).model_dump_json()
