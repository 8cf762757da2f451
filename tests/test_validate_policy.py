"""Policy decisions, overrides and re-ask messages."""

from __future__ import annotations

import pytest

from fakes import DRAFT_SCHEMA, route_schema
from mailcascade.errors import ConfigError
from mailcascade.types import Finding, Verdict
from mailcascade.validate import CODES, Decision, ValidationContext, default_policy, reask_message, validate

DEPARTMENTS = ["orders", "shipping", "returns", "billing", "general"]
ROUTE = route_schema(DEPARTMENTS)
DRAFT = DRAFT_SCHEMA
GOOD = '{"department": "billing", "confidence": 0.9, "reason": "double charge"}'


def decide(text: str, finish: str | None = None, overrides: dict[str, str] | None = None) -> Decision:
    policy = default_policy().with_overrides(overrides or {})
    return policy.decide(validate(text, ROUTE, finish_reason=finish))


def test_default_table_covers_every_code() -> None:
    table = default_policy().table
    assert set(table) == set(CODES)
    assert table["refusal"] == "fail"
    assert table["truncated"] == "more_tokens"
    assert table["multiple_json"] == "repair"
    assert table["enum_violation"] == "repair"
    assert set(table.values()) <= {"repair", "reask", "fail", "more_tokens"}


@pytest.mark.parametrize(("text", "finish", "action", "codes"), [
    (GOOD, None, "accept", ()),
    ("```json\n" + GOOD + "\n```", None, "accept", ("code_fence",)),
    (GOOD + "\n" + GOOD.replace("billing", "returns"), None, "accept", ("multiple_json",)),
    (GOOD.replace("billing", "biling"), None, "accept", ("enum_violation",)),
    ('{"department": "billing", "confidence": 0.9, "reason": "double ch', "length", "more_tokens", ("truncated",)),
    ('{"department": "billing", "confid', "length", "more_tokens", ("truncated",)),
    ('{"department": "billing", "confidence": 0.9}', None, "reask", ("missing_field",)),
    (GOOD.replace("billing", "tech support"), None, "reask", ("enum_violation",)),
    ("I'm sorry, but I can't help with that.", None, "fail", ("refusal",)),
    ("The email is about billing.", None, "reask", ("no_json",)),
    ("", None, "reask", ("empty_output",)),
])
def test_default_decisions(text: str, finish: str | None, action: str, codes: tuple[str, ...]) -> None:
    decision = decide(text, finish)
    assert decision.action == action
    assert decision.codes == codes


def test_overrides_change_decisions() -> None:
    fenced = "```json\n" + GOOD + "\n```"
    assert decide(fenced, overrides={"code_fence": "reask"}) == Decision("reask", ("code_fence",))
    assert decide(fenced, overrides={"code_fence": "fail"}) == Decision("fail", ("code_fence",))
    near = GOOD.replace("billing", "biling")
    assert decide(near, overrides={"enum_violation": "reask"}) == Decision("reask", ("enum_violation",))
    cut = '{"department": "billing", "confidence": 0.9, "reason": "double ch'
    assert decide(cut, "length", overrides={"truncated": "repair"}).action == "accept"
    assert decide("I'm sorry, I can't help with that.", overrides={"refusal": "reask"}).action == "reask"


def test_with_overrides_does_not_change_the_original() -> None:
    base = default_policy()
    changed = base.with_overrides({"truncated": "reask"})
    assert base.action_for("truncated") == "more_tokens"
    assert changed.action_for("truncated") == "reask"
    assert base == default_policy()
    assert hash(base) == hash(default_policy())


def test_unknown_code_or_action_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="truncation") as info:
        default_policy().with_overrides({"truncation": "reask"})
    assert "truncation" in info.value.key
    with pytest.raises(ConfigError, match="retry"):
        default_policy().with_overrides({"truncated": "retry"})


def test_failed_verdict_is_never_accepted_even_if_every_code_says_repair() -> None:
    verdict = Verdict("failed", None, (Finding("wrong_type", "$.confidence", "rejected", "expected number"),))
    assert default_policy().decide(verdict) == Decision("reask", ("wrong_type",))
    truncated_and_missing = validate('{"department": "billing", "confid', ROUTE, finish_reason="length")
    assert default_policy().decide(truncated_and_missing).action == "more_tokens"


def test_reask_missing_field_names_path_and_type() -> None:
    message = reask_message(validate('{"department": "billing", "reason": "x y"}', ROUTE), ROUTE)
    assert '"confidence"' in message and "$.confidence" in message
    assert "number from 0 to 1" in message
    assert message.endswith("Reply with only the JSON object, no other text.")


def test_reask_enum_lists_allowed_values() -> None:
    message = reask_message(validate(GOOD.replace("billing", "tech support"), ROUTE), ROUTE)
    assert "$.department" in message
    for name in DEPARTMENTS:
        assert f'"{name}"' in message
    assert "tech support" in message


def test_reask_messages_are_specific_to_the_code() -> None:
    no_json = reask_message(validate("It is about billing.", ROUTE), ROUTE)
    placeholder = reask_message(validate(GOOD.replace("double charge", "N/A"), ROUTE), ROUTE)
    echo = reask_message(validate('{"type": "object", "properties": {"department": {"type": "string"}}}', ROUTE), ROUTE)
    cut = reask_message(validate('{"department": "billing", "confid', ROUTE, finish_reason="length"), ROUTE)
    syntax = reask_message(validate('{"department": billing}', ROUTE), ROUTE)
    assert "no JSON object" in no_json
    assert "$.reason" in placeholder and "placeholder" in placeholder
    assert "JSON Schema itself" in echo
    assert "cut off" in cut
    assert "not valid" in syntax
    assert len({no_json, placeholder, echo, cut, syntax}) == 5


def test_reask_grounding_messages_use_the_context() -> None:
    context = ValidationContext(known_product_ids=("P001", "P002"), prompt_texts=(
        "You are a friendly support agent for an online store. Write a short reply to the customer email.",))
    leak = validate('{"reply": "You are a friendly support agent for an online store. Write a short reply.", '
                    '"product_ids": ["P001"]}', DRAFT, context=context)
    assert leak.status == "failed"
    message = reask_message(leak, DRAFT, context)
    assert "$.reply" in message and "instructions" in message
    ids = Verdict("failed", None, (Finding("unknown_product_id", "$.product_ids[0]", "rejected", "P9"),))
    assert '"P001", "P002"' in reask_message(ids, DRAFT, context)
    routed = ValidationContext(departments=("billing", "orders"))
    open_schema = {"type": "object", "properties": {"department": {"type": "string"}}, "required": ["department"]}
    unknown = validate('{"department": "tech"}', open_schema, context=routed)
    assert '"billing", "orders"' in reask_message(unknown, open_schema, routed)
