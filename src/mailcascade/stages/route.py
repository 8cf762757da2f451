"""Route: the LLM picks a department (from configuration) with a confidence and a reason.

With the hybrid strategy the LLM chooses only among a shortlist the router made (`route_shortlist.md`): each
candidate with its description and its nearest examples, and out_of_scope.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mailcascade.config import Settings
from mailcascade.llm.base import LLM
from mailcascade.prompts import Prompt
from mailcascade.router.shortlist import Candidate
from mailcascade.stages.call import Budget, Call, StageOutput, arun_call, input_hash, output_of, run_call
from mailcascade.types import OUT_OF_SCOPE, Email, RouteDecision, StageRecord
from mailcascade.untrusted import neutralise, prompt_fields
from mailcascade.validate import Policy, ValidationContext


def departments_value(settings: Settings) -> list[dict[str, str]]:
    """The `departments` prompt variable: {name, description}, out_of_scope last ("none of the above").

    With `route.describe_departments` off every description is blank, so the prompt shows names only."""
    describe = settings.route.describe_departments
    shown = [{"name": d.name, "description": d.description if describe else ""}
             for d in settings.departments if d.name != OUT_OF_SCOPE]
    return [*shown, {"name": OUT_OF_SCOPE, "description": "none of the above" if describe else ""}]


def examples_value(examples: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The `examples` prompt variable: {text, department}; the text on one line, neutralised (email text is data)
    and cut to 300 characters."""
    return [{"text": neutralise(" ".join(text.split()))[:300], "department": label} for text, label in examples]


def email_value(email: Email, settings: Settings) -> dict[str, str]:
    """The `email` prompt variable: {subject, body, sender}, neutralised, the body cut to input.max_prompt_chars."""
    return {**prompt_fields(email, settings.input.max_prompt_chars), "sender": neutralise(email.sender)}


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
    values = {
        "departments": departments_value(settings),
        "department_names": names,
        "examples": examples_value(examples),
        "email": email_value(email, settings),
    }
    return _call(prompt, values, names, settings, policy, budget)


def _call(
    prompt: Prompt, values: dict[str, object], names: Sequence[str], settings: Settings, policy: Policy,
    budget: Budget,
) -> Call:
    """The route call for rendered prompt `values`, validated against the department `names` it offers."""
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
        decided_by="llm",
    )
    return output_of(call, record, decision)


def candidates_value(candidates: Sequence[Candidate], settings: Settings) -> list[dict[str, object]]:
    """The `candidates` prompt variable: {name, description, examples} per shortlisted department (examples
    neutralised, on one line, at most 300 characters each), out_of_scope last with no examples."""
    described = {d.name: d.description for d in settings.departments}
    describe = settings.route.describe_departments
    shown: list[dict[str, object]] = [
        {"name": c.department, "description": described.get(c.department, "") if describe else "",
         "examples": [e["text"] for e in examples_value([(t, c.department) for t in c.examples])]}
        for c in candidates if c.department != OUT_OF_SCOPE]
    return [*shown, {"name": OUT_OF_SCOPE, "description": "none of the above" if describe else "", "examples": []}]


def prepare_shortlist(
    email: Email, prompt: Prompt, settings: Settings, policy: Policy, budget: Budget,
    candidates: Sequence[Candidate],
) -> Call:
    names = [c.department for c in candidates if c.department != OUT_OF_SCOPE] + [OUT_OF_SCOPE]
    values = {
        "candidates": candidates_value(candidates, settings),
        "department_names": names,
        "email": email_value(email, settings),
    }
    return _call(prompt, values, names, settings, policy, budget)


def overrule(router: StageOutput[RouteDecision], llm: StageOutput[RouteDecision]) -> StageOutput[RouteDecision]:
    """The hybrid's route output: the LLM's decision and trace; when the LLM gave no valid answer, its trace with
    the router's decision (decided_by "router")."""
    if llm.value is not None or router.value is None:
        return llm
    kept = dataclasses.replace(router.value, decided_by="router",
                               reason=f"the LLM gave no valid answer ({llm.record.status}); router: "
                                      f"{router.value.reason}")
    return dataclasses.replace(llm, value=kept)


def route_shortlist(
    email: Email, llm: LLM, prompt: Prompt, settings: Settings, policy: Policy, budget: Budget,
    candidates: Sequence[Candidate],
) -> StageOutput[RouteDecision]:
    call = prepare_shortlist(email, prompt, settings, policy, budget, candidates)
    return finish(call, run_call(call, llm, input_hash(call.messages)))


async def aroute_shortlist(
    email: Email, llm: LLM, prompt: Prompt, settings: Settings, policy: Policy, budget: Budget,
    candidates: Sequence[Candidate],
) -> StageOutput[RouteDecision]:
    call = prepare_shortlist(email, prompt, settings, policy, budget, candidates)
    return finish(call, await arun_call(call, llm, input_hash(call.messages)))


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
