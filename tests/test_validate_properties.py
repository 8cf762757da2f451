"""Property tests: a valid document is clean and unchanged however it is serialised, and no repair of a
wrapped valid document changes it."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fakes import DRAFT_SCHEMA, route_schema
from mailcascade.validate import is_placeholder, validate
from mailcascade.validate.conform import NEAR_MISS_CUTOFF, near_miss

DEPARTMENTS = ["orders", "shipping", "returns", "billing", "products", "account", "general", "out_of_scope"]
ROUTE = route_schema(DEPARTMENTS)
DRAFT = DRAFT_SCHEMA
# text with the characters that trip repairs: quotes, brackets, fences, tags, escapes, control characters, unicode
TRICKY = st.text(
    alphabet=st.one_of(st.sampled_from(list("{}[]\"'`,:;/#*\\<>\n\t\r\u201c\u201d\u2019 ")),
                       st.characters(codec="utf-8", exclude_categories=["Cs"])),
    max_size=80,
) | st.sampled_from(["```json", "<think>", "</think>", "True", "NaN", "// not a comment", "it's", 'say "hi"'])
TEXT = TRICKY.filter(lambda s: not is_placeholder(s))

route_docs = st.fixed_dictionaries({
    "department": st.sampled_from(DEPARTMENTS),
    "confidence": st.floats(min_value=0, max_value=1, allow_nan=False) | st.integers(min_value=0, max_value=1),
    "reason": TEXT,
})
draft_docs = st.fixed_dictionaries({"reply": TEXT, "product_ids": st.lists(TEXT, max_size=4)})
docs = st.one_of(route_docs.map(lambda d: (d, ROUTE)), draft_docs.map(lambda d: (d, DRAFT)))


@st.composite
def serialised(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[str, Any]]:
    doc, schema = draw(docs)
    keys = draw(st.permutations(list(doc)))
    ordered = {k: doc[k] for k in keys}
    indent = draw(st.sampled_from([None, 0, 1, 2, 4, "\t"]))
    separators = draw(st.sampled_from([None, (",", ":"), (", ", ": "), (" ,", " : ")]))
    text = json.dumps(ordered, indent=indent, separators=separators, ensure_ascii=draw(st.booleans()))
    pad = draw(st.sampled_from(["", " ", "\n", "\n\n  ", "\t"]))
    return pad + text + draw(st.sampled_from(["", "\n", "  \n"])), doc, schema


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serialised())
def test_valid_document_is_clean_and_unchanged(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    text, doc, schema = item
    verdict = validate(text, schema)
    assert verdict.status == "clean", verdict.findings
    assert verdict.findings == ()
    assert verdict.value == doc
    assert json.dumps(verdict.value, sort_keys=True) == json.dumps(doc, sort_keys=True)  # 1 stays 1, 1.0 stays 1.0


WRAPPERS = [
    ("Sure! Here is the JSON:\n", ""),
    ("", "\nLet me know if you need anything else."),
    ("```json\n", "\n```"),
    ("```\n", "\n```\n"),
    ("<think>The customer asks something; I will answer.</think>\n", ""),
    ("Answer: ```json\n", "\n``` Hope this helps!"),
    ("", "}"),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serialised(), st.sampled_from(WRAPPERS))
def test_repairs_never_change_a_valid_document(item: tuple[str, dict[str, Any], dict[str, Any]],
                                                wrapper: tuple[str, str]) -> None:
    text, doc, schema = item
    verdict = validate(wrapper[0] + text + wrapper[1], schema)
    assert verdict.status == "repaired", verdict.findings
    assert verdict.value == doc
    assert all(f.action == "repaired" for f in verdict.findings)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serialised())
def test_finish_reason_length_is_never_clean(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    text, doc, schema = item
    verdict = validate(text, schema, finish_reason="length")
    assert verdict.status == "lossy"
    assert "truncated" in verdict.codes
    assert verdict.value == doc


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route_docs, st.integers(min_value=1, max_value=40))
def test_cut_documents_are_never_clean(doc: dict[str, Any], cut: int) -> None:
    text = json.dumps(doc)
    assume(cut < len(text))
    verdict = validate(text[:-cut], ROUTE)
    assert verdict.status in ("lossy", "failed")
    if verdict.status == "lossy":
        assert "truncated" in verdict.codes


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.sampled_from([None, "stop", "length"]))
def test_any_text_gets_a_verdict_and_accepted_values_fit(text: str, finish: str | None) -> None:
    verdict = validate(text, ROUTE, finish_reason=finish)
    assert verdict.status in ("clean", "repaired", "lossy", "failed")
    if verdict.status == "failed":
        assert verdict.value is None
    else:
        assert verdict.value["department"] in DEPARTMENTS
    assert validate(text, ROUTE, finish_reason=finish) == verdict  # deterministic


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid route document with a few characters deleted, inserted or replaced."""
    text = json.dumps(draw(route_docs), indent=draw(st.sampled_from([None, 2])))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        i = draw(st.integers(min_value=0, max_value=len(text)))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        ch = draw(st.sampled_from([*"{}[]\",:' \n", "//", "True", "NaN", "```"]))
        if op == "delete":
            text = text[:i] + text[i + 1:]
        elif op == "insert":
            text = text[:i] + ch + text[i:]
        else:
            text = text[:i] + ch + text[i + 1:]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.sampled_from([None, "stop", "length"]))
def test_mutated_documents(text: str, finish: str | None) -> None:
    verdict = validate(text, ROUTE, finish_reason=finish)
    if verdict.status == "clean":
        assert json.loads(text) == verdict.value  # clean only when the text is exactly a valid document
    elif verdict.status != "failed":
        assert verdict.value["department"] in DEPARTMENTS
        assert 0 <= verdict.value["confidence"] <= 1
        assert any(f.action in ("repaired", "accepted") for f in verdict.findings)
    else:
        assert verdict.value is None


NAMES = st.text(alphabet=st.sampled_from(list("abcdeilnoprst_ -SB")), max_size=14)


@st.composite
def _near_names(draw: st.DrawFn) -> tuple[str, list[str]]:
    """Allowed values and a value that is often one of them with a few characters changed."""
    allowed = draw(st.lists(NAMES, max_size=8))
    if not allowed or draw(st.booleans()):
        return draw(NAMES), allowed
    chars = list(draw(st.sampled_from(allowed)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(chars)))
        chars[at:at + draw(st.integers(0, 1))] = draw(st.text(alphabet="aeiost_x", max_size=1))
    return "".join(chars), allowed


@settings(max_examples=500, deadline=None)
@given(case=_near_names())
def test_near_miss_is_difflibs_ratio(case: tuple[str, list[str]]) -> None:
    """near_miss's bound only skips what difflib's own ratio would reject."""
    value, allowed = case
    def norm(text: str) -> str:
        return re.sub(r"[\s\-]+", "_", text.strip().lower())

    exact = [a for a in allowed if norm(a) == norm(value)]
    close = exact or [a for a in allowed
                      if difflib.SequenceMatcher(None, norm(a), norm(value)).ratio() >= NEAR_MISS_CUTOFF]
    assert near_miss(value, allowed) == ((close[0] if len(close) == 1 else None), close)
