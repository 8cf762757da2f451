"""Draft: the LLM writes a reply from the email and the retrieved passages, citing the products it relies on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailcascade.config import Settings
from mailcascade.llm.base import LLM
from mailcascade.prompts import Prompt
from mailcascade.stages.call import Budget, Call, StageOutput, arun_call, input_hash, output_of, run_call
from mailcascade.stages.route import email_value
from mailcascade.types import Draft, Email, Hit, StageRecord
from mailcascade.untrusted import neutralise
from mailcascade.validate import Policy, ValidationContext


def passages_value(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """The `passages` prompt variable: {product_id, passage_id, text, score}; catalogue text is data, too."""
    return [{"product_id": h.product_id, "passage_id": h.passage_id, "text": neutralise(h.text), "score": h.score}
            for h in hits]


def prepare(
    email: Email, department: str, hits: Sequence[Hit], prompt: Prompt, settings: Settings, policy: Policy,
    budget: Budget,
) -> Call:
    shown = tuple(hits) if settings.draft.include_passages else ()
    values = {
        "department": department,
        "passages": passages_value(shown),
        "email": email_value(email, settings),
    }
    return Call(
        stage="draft",
        prompt=prompt,
        messages=list(prompt.render(values)),
        schema=prompt.schema(values),
        context=ValidationContext(
            known_product_ids=tuple(dict.fromkeys(h.product_id for h in shown)),
            prompt_texts=prompt.instruction_text,
        ),
        policy=policy,
        settings=settings.validation,
        budget=budget,
    )


def finish(call: Call, record: StageRecord) -> StageOutput[Draft]:
    value = call.value if isinstance(call.value, dict) else {}
    ids = value.get("product_ids") or []
    draft = Draft(reply=str(value.get("reply", "")), product_ids=tuple(str(i) for i in ids))
    return output_of(call, record, draft)


def draft(
    email: Email, department: str, hits: Sequence[Hit], llm: LLM, prompt: Prompt, settings: Settings,
    policy: Policy, budget: Budget,
) -> StageOutput[Draft]:
    call = prepare(email, department, hits, prompt, settings, policy, budget)
    return finish(call, run_call(call, llm, input_hash(call.messages)))


async def adraft(
    email: Email, department: str, hits: Sequence[Hit], llm: LLM, prompt: Prompt, settings: Settings,
    policy: Policy, budget: Budget,
) -> StageOutput[Draft]:
    call = prepare(email, department, hits, prompt, settings, policy, budget)
    return finish(call, await arun_call(call, llm, input_hash(call.messages)))
