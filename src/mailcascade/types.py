"""Plain, frozen data types shared by every layer. No I/O, no imports from the package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

OUT_OF_SCOPE = "out_of_scope"

Action = Literal["repaired", "reasked", "rejected", "accepted"]
VerdictStatus = Literal["clean", "repaired", "lossy", "failed"]


@dataclass(frozen=True)
class Email:
    """One customer email, already parsed to text."""

    id: str
    subject: str
    body: str
    sender: str = ""
    source: str = ""  # file path (and line) it came from
    attachments: tuple[str, ...] = ()  # names of attachments that were ignored
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """One failure mode the validator saw: which, where, and what was done about it."""

    code: str
    where: str  # "offset 12" or a JSON path such as "$.department"
    action: Action
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.code, "where": self.where, "action": self.action}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class Verdict:
    """The validator's answer for one raw model output."""

    status: VerdictStatus
    value: Any = None  # the recovered JSON value; None when failed
    findings: tuple[Finding, ...] = ()

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(f.code for f in self.findings)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "value": self.value,
            "codes": [f.to_dict() for f in self.findings],
        }


@dataclass(frozen=True)
class ChatRequest:
    """What is sent to the model: rendered messages plus generation parameters."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    max_tokens: int = 256
    temperature: float = 0.0
    schema: dict[str, Any] | None = None  # JSON Schema for structured output, if any
    schema_name: str = "output"


@dataclass(frozen=True)
class ChatResponse:
    """What came back, with the cost of getting it."""

    text: str
    finish_reason: str | None
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    attempts: int = 1  # HTTP attempts, retries included
    cached: bool = False
    queue_ms: float = 0.0  # waiting for a free server slot in the client (not part of latency_ms)


@dataclass(frozen=True)
class RouteDecision:
    department: str
    confidence: float
    reason: str = ""
    decided_by: str = ""  # "router" (embedding/trained) or "llm"; empty when given or from an older record
    # a router with an out-of-scope threshold (embedding, trained): the score it compares with the threshold and
    # the department it ranks first before the threshold applies (None from the LLM, a given label or old records)
    oos_score: float | None = None
    before_threshold: str | None = None


@dataclass(frozen=True)
class Hit:
    """One retrieved catalogue passage."""

    product_id: str
    passage_id: str
    score: float
    text: str


@dataclass(frozen=True)
class Draft:
    reply: str
    product_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attempt:
    """One model call inside a stage and the validator's verdict on it."""

    number: int
    raw: str
    finish_reason: str | None
    status: VerdictStatus
    findings: tuple[Finding, ...]
    tokens_in: int
    tokens_out: int
    latency_ms: float
    cached: bool = False
    http_attempts: int = 1  # requests sent for this answer, transport retries (429, 5xx, timeouts) included
    queue_ms: float = 0.0  # waiting for a free server slot before the request(s) went out


@dataclass(frozen=True)
class StageRecord:
    """The trace of one stage for one email."""

    stage: str
    # failed: the model answered but no answer was valid; error: no answer came (transport, deadline), which says
    # nothing about the model or the prompt; given: the output was supplied (e.g. a gold label)
    status: Literal["ok", "failed", "error", "skipped", "given"]
    prompt_hash: str = ""
    model: str = ""
    attempts: tuple[Attempt, ...] = ()
    input_hash: str = ""
    latency_ms: float = 0.0  # the stage's own time: model calls (retries and re-asks included) and validation
    queue_ms: float = 0.0  # time its model calls waited for a free server slot (not in latency_ms)
    error: str = ""
    error_code: str = ""  # with status "error": why no answer came (errors.TRANSPORT_CODES)
    lost_http_attempts: int = 0  # requests sent for the call that produced no answer (retries included)

    @property
    def failure_codes(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for a in self.attempts:
            for f in a.findings:
                seen.setdefault(f.code, None)
        if self.error_code:
            seen.setdefault(self.error_code, None)
        return tuple(seen)

    @property
    def tokens_in(self) -> int:
        return sum(a.tokens_in for a in self.attempts)

    @property
    def tokens_out(self) -> int:
        return sum(a.tokens_out for a in self.attempts)


@dataclass(frozen=True)
class Result:
    """The outcome for one email: a result or an explicit failure record (its JSON shape: record.ResultRecord)."""

    id: str
    status: Literal["ok", "failed"]
    source: str = ""
    route: RouteDecision | None = None
    hits: tuple[Hit, ...] = ()
    draft: Draft | None = None
    stages: tuple[StageRecord, ...] = ()
    error: str = ""

    @property
    def department(self) -> str | None:
        return self.route.department if self.route else None
