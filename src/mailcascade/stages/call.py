"""One validated model call: render, ask, validate, and re-ask or retry as the policy says.

The validator's verdict and the policy's decision decide whether another attempt is made (transport retries are
the client's, with tenacity). The loop stops when a value is accepted, when max_attempts is reached, when the same
failure codes come back twice in a row, or when the email's re-ask token budget is spent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mailcascade.config import ValidationSettings
from mailcascade.errors import LLMError
from mailcascade.llm.base import LLM
from mailcascade.prompts import Prompt
from mailcascade.types import Attempt, ChatRequest, ChatResponse, StageRecord
from mailcascade.validate import Policy, ValidationContext, reask_message, validate

T = TypeVar("T")


@dataclass
class Budget:
    """Re-ask tokens left for one email; shared by that email's stages, never across emails."""

    reask_tokens_left: int


@dataclass
class Call:
    """Everything one stage call needs; `actions` and `attempts` fill in as it runs."""

    stage: str
    prompt: Prompt
    messages: list[tuple[str, str]]
    schema: dict[str, Any]
    context: ValidationContext
    policy: Policy
    settings: ValidationSettings
    budget: Budget
    max_tokens: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    value: Any = None
    accepted: bool = False
    stop_reason: str = ""
    _last_codes: tuple[str, ...] | None = None

    def request(self) -> ChatRequest:
        return ChatRequest(
            messages=tuple(self.messages),
            max_tokens=self.max_tokens or self.prompt.max_tokens,
            temperature=self.prompt.temperature,
            schema=self.schema,
            schema_name=self.stage,
        )

    def observe(self, response: ChatResponse) -> bool:
        """Record one answer; True when another attempt should be made."""
        number = len(self.attempts) + 1
        verdict = validate(response.text, self.schema, finish_reason=response.finish_reason, context=self.context)
        decision = self.policy.decide(verdict)
        findings = verdict.findings
        if number > 1:
            self.budget.reask_tokens_left -= response.tokens_in + response.tokens_out
        again = decision.action in ("reask", "more_tokens")
        if again:
            driving = set(decision.codes)
            findings = tuple(
                dataclasses.replace(f, action="reasked") if f.code in driving else f for f in verdict.findings
            )
        self.attempts.append(
            Attempt(
                number=number, raw=response.text, finish_reason=response.finish_reason, status=verdict.status,
                findings=findings, tokens_in=response.tokens_in, tokens_out=response.tokens_out,
                latency_ms=response.latency_ms, cached=response.cached, http_attempts=response.attempts,
                queue_ms=response.queue_ms,
            )
        )
        self.actions.append(decision.action)
        if decision.action == "accept":
            self.value, self.accepted = verdict.value, True
            return False
        if decision.action == "fail":
            self.stop_reason = f"policy says fail on {', '.join(decision.codes) or verdict.status}"
            return False
        codes = tuple(sorted(verdict.codes))
        if codes == self._last_codes:
            self.stop_reason = f"same failure twice in a row ({', '.join(codes)})"
            return False
        self._last_codes = codes
        if number >= self.settings.max_attempts:
            self.stop_reason = f"no valid output after {number} attempts ({', '.join(codes)})"
            return False
        if self.budget.reask_tokens_left <= 0:
            self.stop_reason = f"re-ask token budget spent ({', '.join(codes)})"
            return False
        if decision.action == "more_tokens":
            self.max_tokens = int((self.max_tokens or self.prompt.max_tokens) * self.settings.max_tokens_growth)
        else:
            self.messages += [("assistant", response.text), ("user", reask_message(verdict, self.schema, self.context))]
        return True

    def record(self, model: str, input_hash: str, started: float, lost: LLMError | None = None) -> StageRecord:
        """The stage's trace; `lost` is the model error that ended the call without an answer, if any."""
        ok = self.accepted and lost is None
        error = f"{self.stage}: model call failed: {lost}" if lost else f"{self.stage}: {self.stop_reason}"
        queued = sum(a.queue_ms for a in self.attempts)
        return StageRecord(
            stage=self.stage,
            status="ok" if ok else "error" if lost else "failed",
            prompt_hash=self.prompt.hash,
            model=model,
            attempts=tuple(self.attempts),
            input_hash=input_hash,
            latency_ms=max(0.0, (time.perf_counter() - started) * 1000 - queued),
            queue_ms=queued,
            error="" if ok else error,
            error_code=lost.code if lost else "",
            lost_http_attempts=lost.attempts if lost else 0,
        )


def run_call(call: Call, llm: LLM, input_hash: str) -> StageRecord:
    """Run a call to completion synchronously; model errors become a failed record, never an exception.

    `observe` decides whether another attempt is made (there is no wait between attempts: a re-ask is a new
    question, not a retry); the client retries transport failures itself, with tenacity's backoff."""
    started = time.perf_counter()
    try:
        while call.observe(llm.complete(call.request())):
            pass
    except LLMError as exc:
        return call.record(llm.model, input_hash, started, lost=exc)
    return call.record(llm.model, input_hash, started)


async def arun_call(call: Call, llm: LLM, input_hash: str) -> StageRecord:
    """Async `run_call`."""
    started = time.perf_counter()
    try:
        while call.observe(await llm.acomplete(call.request())):
            pass
    except LLMError as exc:
        return call.record(llm.model, input_hash, started, lost=exc)
    return call.record(llm.model, input_hash, started)


@dataclass(frozen=True)
class StageOutput(Generic[T]):
    """A stage's value (None when it failed), its trace, and what the failure log needs to replay it."""

    value: T | None
    record: StageRecord
    schema: Mapping[str, Any] | None = None
    context: Mapping[str, Any] | None = None
    actions: tuple[str, ...] = ()


def output_of(call: Call, record: StageRecord, value: T | None) -> StageOutput[T]:
    return StageOutput(
        value=value if record.status == "ok" else None,
        record=record,
        schema=call.schema,
        # its fields are tuples and strings: nothing to copy deeper (dataclasses.asdict would, at a cost)
        context={f.name: getattr(call.context, f.name) for f in dataclasses.fields(call.context)},
        actions=tuple(call.actions),
    )


def input_hash(messages: Sequence[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps(list(messages), ensure_ascii=False).encode()).hexdigest()[:12]
