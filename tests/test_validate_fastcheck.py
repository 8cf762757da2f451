"""The validator's fast schema check agrees with jsonschema on every value, and refuses schemas outside its subset."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import validators  # type: ignore[import-untyped, unused-ignore]

from mailcascade.validate.fastcheck import Unsure, compile_check, violations

SCHEMAS: dict[str, Any] = json.loads((Path(__file__).parent / "corpus" / "validator" / "schemas.json").read_text())
JSONSCHEMA = {name: validators.validator_for(s)(s) for name, s in SCHEMAS.items()}
WORDS = st.sampled_from(["orders", "billing", "Billing", "open", "a_b", "A", "", "x" * 5, "department", "reply",
                         "tags", "priority", "urgent", "confidence", "reason", "product_ids", "state", "P001"])
SCALARS = st.none() | st.booleans() | st.integers(-3, 7) | st.floats(allow_nan=True, allow_infinity=True) | WORDS
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(WORDS, inner, max_size=5),
                      max_leaves=12)


def _near_instance(schema: dict[str, Any]) -> Any:
    """Objects built from the schema's own property names, so the interesting branches are reached."""
    props = list(schema.get("properties", {}))
    return st.dictionaries(st.sampled_from(props) | WORDS, VALUES, max_size=len(props) + 1)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_fast_check_agrees_with_jsonschema(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS[name]
    check = compile_check(schema)
    assert check is not None  # every corpus schema is inside the subset
    value = data.draw(_near_instance(schema) | VALUES)
    expected = JSONSCHEMA[name].is_valid(value)
    with contextlib.suppress(Unsure):  # the check defers to jsonschema there
        assert check(value) == expected


@pytest.mark.parametrize("schema", [
    {"anyOf": [{"type": "string"}, {"type": "null"}]},
    {"$ref": "#/$defs/x", "$defs": {"x": {"type": "string"}}},
    {"type": "string", "format": "email"},
    {"type": "array", "items": [{"type": "string"}]},
    {"enum": [1, True]},
    {"type": "object", "patternProperties": {"^x": {"type": "string"}}, "additionalProperties": False},
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "number", "exclusiveMinimum": True, "minimum": 0},
])
def test_schemas_outside_the_subset_use_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_check(schema) is None


def test_unique_items_over_non_strings_defers() -> None:
    check = compile_check({"type": "array", "uniqueItems": True})
    assert check is not None and check(["a", "b"]) and not check(["a", "a"])
    with pytest.raises(Unsure):
        check([1, True])


EXTRA_SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"type": ["integer", "null"]}, "b": {"const": "x"}, "c": False,
                                      "d": {"type": "string", "minLength": 2, "maxLength": 0}},
     "additionalProperties": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 5}},
    {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 3}, "minItems": 2, "maxItems": 0,
     "uniqueItems": True},
    {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": {"properties": {"a": False}},
     "minItems": 1, "maxItems": 1, "uniqueItems": True},
    {"required": ["a", "b"], "properties": {"a": True, "b": {"enum": ["x", "y"]}}, "type": "object",
     "additionalProperties": False},
]


def _errors(validator: Any, value: Any) -> list[tuple[Any, ...]]:
    return [(e.validator, e.validator_value, e.instance, tuple(e.absolute_path), e.message)
            for e in validator.iter_errors(value)]


@pytest.mark.parametrize("schema", [*SCHEMAS.values(), *EXTRA_SCHEMAS])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_violations_are_jsonschemas_errors(schema: dict[str, Any], data: st.DataObject) -> None:
    assert compile_check(schema) is not None
    items = schema.get("items", {})
    near = _near_instance(schema) if schema.get("properties") else st.lists(
        _near_instance(items) if items.get("properties") else VALUES, max_size=4)
    value = data.draw(near | VALUES | st.lists(WORDS, max_size=4))
    expected = _errors(validators.validator_for(schema)(schema), value)
    with contextlib.suppress(Unsure):
        got = [(v.validator, v.validator_value, v.instance, v.path, v.message) for v in violations(schema, value)]
        assert got == expected
