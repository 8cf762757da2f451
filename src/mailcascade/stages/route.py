"""Route: the LLM picks a department (from configuration) with a confidence and a reason."""

from __future__ import annotations

from collections.abc import Sequence

from mailcascade.config import Settings
from mailcascade.llm.base import LLM
from mailcascade.prompts import Prompt
from mailcascade.stages.call import Budget, Call, StageOutput, arun_call, input_hash, output_of, run_call
from mailcascade.types import OUT_OF_SCOPE, Email, RouteDecision, StageRecord
from mailcascade.untrusted import neutralise, prompt_fields
from mailcascade.validate import Policy, ValidationContext


def format_examples(examples: Sequence[tuple[str, str]]) -> str:
    """The few-shot block: labelled example emails (neutralised, like any email text), one per line."""
    if not examples:
        return ""
    lines = ["Examples:"] + [f'- "{neutralise(" ".join(text.split()))[:300]}" -> {label}' for text, label in examples]
    return "\n".join(lines)


def pick_few_shot(pool: Sequence[tuple[str, str]], n: int) -> tuple[tuple[str, str], ...]:
    """n examples, taking labels in turn (in order of first appearance) so every department gets shown."""
    by_label: dict[str, list[tuple[str, str]]] = {}
    for text, label in pool:
        by_label.setdefault(label, []).append((text, label))
    picked: list[tuple[str, str]] = []
    depth = 0
    while len(picked) < n and any(depth < len(v) for v in by_label.values()):
        picked.extend(v[depth] for v in by_label.values() if depth < len(v))
        depth += 1
    return tuple(picked[:n])


def prepare(
    email: Email, prompt: Prompt, settings: Settings, policy: Policy, budget: Budget,
    examples: Sequence[tuple[str, str]] = (),
) -> Call:
    names = list(settings.department_names)
    describe = settings.route.describe_departments
    lines = [f"- {d.name}: {d.description}" if describe and d.description else f"- {d.name}"
             for d in settings.departments if d.name != OUT_OF_SCOPE]
    lines.append(f"- {OUT_OF_SCOPE}: none of the above" if describe else f"- {OUT_OF_SCOPE}")
    values = {
        "departments": "\n".join(lines),
        "department_names": names,
        "examples": format_examples(examples),
        **prompt_fields(email, settings.input.max_prompt_chars),
    }
    return Call(
        stage="route",
        prompt=prompt,
        messages=list(prompt.render(values)),
        schema=prompt.schema(values),
        context=ValidationContext(departments=tuple(names)),
        policy=policy,
        settings=settings.validation,
        budget=budget,
    )


def finish(call: Call, record: StageRecord) -> StageOutput[RouteDecision]:
    value = call.value if isinstance(call.value, dict) else {}
    decision = RouteDecision(
        department=str(value.get("department", "")),
        confidence=float(value.get("confidence", 0.0)),
        reason=str(value.get("reason", "")),
    )
    return output_of(call, record, decision)


def route(
    email: Email, llm: LLM, prompt: Prompt, settings: Settings, policy: Policy, budget: Budget,
    examples: Sequence[tuple[str, str]] = (),
) -> StageOutput[RouteDecision]:
    call = prepare(email, prompt, settings, policy, budget, examples)
    return finish(call, run_call(call, llm, input_hash(call.messages)))


async def aroute(
    email: Email, llm: LLM, prompt: Prompt, settings: Settings, policy: Policy, budget: Budget,
    examples: Sequence[tuple[str, str]] = (),
) -> StageOutput[RouteDecision]:
    call = prepare(email, prompt, settings, policy, budget, examples)
    return finish(call, await arun_call(call, llm, input_hash(call.messages)))
