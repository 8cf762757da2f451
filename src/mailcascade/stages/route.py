"""Route: the LLM picks a department (from configuration) with a confidence and a reason."""

from __future__ import annotations

from mailcascade.config import Settings
from mailcascade.llm.base import LLM
from mailcascade.prompts import Prompt
from mailcascade.stages.call import Budget, Call, StageOutput, arun_call, input_hash, output_of, run_call
from mailcascade.types import OUT_OF_SCOPE, Email, RouteDecision, StageRecord
from mailcascade.validate import Policy, ValidationContext


def prepare(
    email: Email, prompt: Prompt, settings: Settings, policy: Policy, budget: Budget, examples: str = ""
) -> Call:
    names = list(settings.department_names)
    lines = [f"- {d.name}: {d.description}" for d in settings.departments if d.name != OUT_OF_SCOPE]
    lines.append(f"- {OUT_OF_SCOPE}: none of the above")
    values = {
        "departments": "\n".join(lines),
        "department_names": names,
        "examples": examples,
        "subject": email.subject,
        "body": email.body[: settings.input.max_prompt_chars],
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
    email: Email, llm: LLM, prompt: Prompt, settings: Settings, policy: Policy, budget: Budget, examples: str = ""
) -> StageOutput[RouteDecision]:
    call = prepare(email, prompt, settings, policy, budget, examples)
    return finish(call, run_call(call, llm, input_hash(call.messages)))


async def aroute(
    email: Email, llm: LLM, prompt: Prompt, settings: Settings, policy: Policy, budget: Budget, examples: str = ""
) -> StageOutput[RouteDecision]:
    call = prepare(email, prompt, settings, policy, budget, examples)
    return finish(call, await arun_call(call, llm, input_hash(call.messages)))
