"""The validator against the fixture corpus (every code) and against real raw outputs of SmolLM2-135M."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest

from mailcascade.validate import CODES, ValidationContext, default_policy, validate

CORPUS = Path(__file__).parent / "corpus" / "validator"
SCHEMAS: dict[str, Any] = json.loads((CORPUS / "schemas.json").read_text(encoding="utf-8"))
CASES = [json.loads(line) for line in (CORPUS / "cases.jsonl").read_text(encoding="utf-8").splitlines() if line]
RAW = [json.loads(line) for line in (CORPUS / "smollm2_raw.jsonl").read_text(encoding="utf-8").splitlines() if line]
# the failure-mode table of design.md; the validator may add codes, never drop one
DESIGN_CODES = {
    "empty_output", "refusal", "no_json", "prefix_text", "suffix_text", "code_fence", "reasoning_leak",
    "multiple_json", "truncated", "schema_echo", "single_quotes", "trailing_comma", "missing_comma", "unquoted_key",
    "comments", "python_literal", "non_finite_number", "control_char", "unbalanced_brackets", "malformed_json",
    "wrong_top_level", "missing_field", "extra_field", "wrong_type", "enum_violation", "constraint_violation",
    "placeholder_value", "unknown_department", "unknown_product_id", "prompt_leak",
}


def _context(case: dict[str, Any]) -> ValidationContext | None:
    raw: dict[str, list[str]] | None = case.get("context")
    if not raw:
        return None
    return ValidationContext(departments=_opt(raw.get("departments")), known_product_ids=_opt(
        raw.get("known_product_ids")), prompt_texts=tuple(raw.get("prompt_texts", ())))


def _opt(items: list[str] | None) -> tuple[str, ...] | None:
    return None if items is None else tuple(items)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_corpus_case(case: dict[str, Any]) -> None:
    schema = SCHEMAS[case["schema"]]
    verdict = validate(case["raw"], schema, finish_reason=case["finish_reason"], context=_context(case))
    assert verdict.status == case["status"], verdict.findings
    assert set(verdict.codes) == set(case["codes"]), verdict.findings
    if "value" in case:
        assert verdict.value == case["value"]
    if verdict.status == "failed":
        assert verdict.value is None
        assert any(f.action == "rejected" for f in verdict.findings)
    else:
        jsonschema.validate(verdict.value, schema)
    for finding in verdict.findings:
        assert finding.code in CODES
        assert finding.action in ("repaired", "accepted", "rejected")
        assert finding.where.startswith(("offset ", "$"))


def test_corpus_covers_every_code() -> None:
    seen = {code for case in CASES for code in case["codes"]}
    assert set(CODES) <= seen, sorted(set(CODES) - seen)
    assert set(CODES) >= DESIGN_CODES
    assert {"clean", "repaired", "lossy", "failed"} <= {c["status"] for c in CASES}


def test_corpus_never_clean_when_truncated_ambiguous_or_out_of_enum() -> None:
    for case in CASES:
        verdict = validate(case["raw"], SCHEMAS[case["schema"]], finish_reason=case["finish_reason"],
                           context=_context(case))
        if {"truncated", "multiple_json", "enum_violation"} & set(case["codes"]) or case["finish_reason"] == "length":
            assert verdict.status != "clean", case["id"]


def test_corpus_finding_offsets_point_into_the_text() -> None:
    for case in CASES:
        verdict = validate(case["raw"], SCHEMAS[case["schema"]], finish_reason=case["finish_reason"],
                           context=_context(case))
        for f in verdict.findings:
            if f.where.startswith("offset "):
                assert 0 <= int(f.where.split()[1]) <= len(case["raw"]), (case["id"], f)


@pytest.mark.parametrize("row", RAW, ids=[r["id"] for r in RAW])
def test_smollm2_raw_outputs(row: dict[str, Any]) -> None:
    """Real outputs of the embedded model: each gets a verdict; every accepted value satisfies the schema."""
    schema = SCHEMAS[row["schema"]]
    verdict = validate(row["raw"], schema, finish_reason=row["finish_reason"])
    assert verdict.status in ("clean", "repaired", "lossy", "failed")
    decision = default_policy().decide(verdict)
    if verdict.status == "failed":
        assert verdict.value is None and decision.action != "accept"
    else:
        jsonschema.validate(verdict.value, schema)
    if row["finish_reason"] == "length":
        assert verdict.status != "clean"
        assert "truncated" in verdict.codes


def test_smollm2_corpus_is_varied() -> None:
    assert len(RAW) >= 40
    assert {r["stage"] for r in RAW} == {"route", "draft"}
    assert {r["structured"] for r in RAW} == {True, False}
    assert {r["finish_reason"] for r in RAW} >= {"stop", "length"}
    statuses = {validate(r["raw"], SCHEMAS[r["schema"]], finish_reason=r["finish_reason"]).status for r in RAW}
    assert {"clean", "failed"} <= statuses
