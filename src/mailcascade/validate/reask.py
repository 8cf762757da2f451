"""Corrective messages for a re-ask: specific to each failure code, naming paths, fields and allowed values."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from mailcascade.types import Finding, Verdict
from mailcascade.validate.compiled import CompiledSchema, compile_schema, parse_path
from mailcascade.validate.context import ValidationContext

_SYNTAX = {
    "single_quotes": "use straight double quotes (\") for every key and string",
    "trailing_comma": "no comma before } or ]",
    "missing_comma": "a comma between every two members or items",
    "unquoted_key": "every key in double quotes",
    "comments": "no comments",
    "python_literal": "write true, false and null, not True, False, None",
    "non_finite_number": "only finite numbers (no NaN or Infinity)",
    "control_char": "escape newlines and tabs inside strings as \\n and \\t",
    "invalid_escape": "only JSON escapes inside strings (\\\" \\\\ \\n \\t \\uXXXX); an apostrophe needs no backslash",
    "unescaped_quote": "escape double quotes inside strings as \\\"",
    "unbalanced_brackets": "every { and [ closed exactly once",
    "malformed_json": "valid JSON",
}
_END = "Reply with only the JSON object, no other text."


def reask_message(verdict: Verdict, schema: Mapping[str, Any], context: ValidationContext | None = None) -> str:
    """A user message telling the model exactly what was wrong and what to send instead."""
    compiled = compile_schema(schema)
    lines: list[str] = []
    syntax: list[str] = []
    seen: set[str] = set()
    for finding in verdict.findings:
        if finding.code in _SYNTAX:
            if finding.code not in seen:
                where = f" (at {finding.where}: {finding.detail})" if finding.code == "malformed_json" else ""
                syntax.append(_SYNTAX[finding.code] + where)
        else:
            line = _line(finding, compiled, context)
            if line and line not in lines:
                lines.append(line)
        seen.add(finding.code)
    if syntax:
        lines.append(f"Your JSON was not valid; write {'; '.join(syntax)}.")
    if not lines:
        lines.append("Your previous answer did not match the required format.")
    lines.append(f"The object must have: {skeleton(compiled)}.")
    lines.append(_END)
    return "\n".join(lines)


def _line(f: Finding, compiled: CompiledSchema, context: ValidationContext | None) -> str:
    handler = _HANDLERS.get(f.code)
    return handler(f, compiled, context) if handler else ""


def _where(f: Finding) -> str:
    return f.where if f.where.startswith("$") else "the output"


def _allowed(f: Finding, compiled: CompiledSchema) -> str:
    path = parse_path(f.where) or []
    sub = compiled.subschema(path) or {}
    enum = sub.get("enum")
    return ", ".join(json.dumps(v) for v in enum) if isinstance(enum, list) else ""


def _describe(path_text: str, compiled: CompiledSchema) -> str:
    path = parse_path(path_text)
    sub = compiled.subschema(path) if path is not None else None
    return describe(sub) if sub else "a value"


def describe(sub: Mapping[str, Any]) -> str:
    """'a number from 0 to 1', 'one of "a", "b"', 'an array of strings' ..."""
    if isinstance(sub.get("enum"), list):
        return "one of " + ", ".join(json.dumps(v) for v in sub["enum"])
    kind = sub.get("type", "value")
    kind = " or ".join(kind) if isinstance(kind, list) else str(kind)
    text = {"array": "an array", "object": "an object", "integer": "an integer"}.get(kind, f"a {kind}")
    items = sub.get("items")
    if kind == "array" and isinstance(items, Mapping) and items.get("type"):
        text += f" of {items['type']}s"
    limits = []
    if "minimum" in sub or "maximum" in sub:
        limits.append(f"from {sub.get('minimum', '-inf')} to {sub.get('maximum', 'inf')}")
    for key, word in (("minLength", "at least {} character"), ("maxLength", "at most {} character"),
                      ("minItems", "at least {} item"), ("maxItems", "at most {} item"), ("pattern", "matching {}")):
        if key in sub:
            limits.append(word.format(sub[key]) + ("s" if key != "pattern" and sub[key] != 1 else ""))
    return text + (" " + ", ".join(limits) if limits else "")


def skeleton(compiled: CompiledSchema) -> str:
    """{"department": <one of ...>, "confidence": <a number from 0 to 1>} for the top-level properties."""
    props = compiled.properties
    if not props:
        return describe(compiled.schema)
    required = set(compiled.schema.get("required") or ())
    parts = [f"{json.dumps(name)}: <{describe(sub) if isinstance(sub, Mapping) else 'a value'}>"
             + ("" if name in required else " (optional)") for name, sub in props.items()]
    return "{" + ", ".join(parts) + "}"


def _missing(f: Finding, c: CompiledSchema, _: ValidationContext | None) -> str:
    name = (parse_path(f.where) or ["?"])[-1]
    return f"The required field {json.dumps(name)} ({f.where}) is missing; it must be {_describe(f.where, c)}."


def _extra(f: Finding, c: CompiledSchema, _: ValidationContext | None) -> str:
    return f"Do not add fields the schema does not allow ({f.detail or f.where}); use only: {', '.join(c.properties)}."


def _type(f: Finding, c: CompiledSchema, _: ValidationContext | None) -> str:
    return f"{_where(f)} must be {_describe(f.where, c)} ({f.detail})."


def _enum(f: Finding, c: CompiledSchema, _: ValidationContext | None) -> str:
    return f"{_where(f)} must be exactly one of: {_allowed(f, c)} ({f.detail})."


def _constraint(f: Finding, c: CompiledSchema, _: ValidationContext | None) -> str:
    return f"{_where(f)} breaks a constraint ({f.detail}); it must be {_describe(f.where, c)}."


def _placeholder(f: Finding, c: CompiledSchema, _: ValidationContext | None) -> str:
    return f"{_where(f)} holds a placeholder ({f.detail}); write the real value, {_describe(f.where, c)}."


def _department(f: Finding, c: CompiledSchema, ctx: ValidationContext | None) -> str:
    names = ", ".join(json.dumps(d) for d in (ctx.departments or ())) if ctx else ""
    return f"{_where(f)} must be one of the configured departments: {names} ({f.detail})."


def _product(f: Finding, c: CompiledSchema, ctx: ValidationContext | None) -> str:
    known = ", ".join(json.dumps(p) for p in (ctx.known_product_ids or ())) if ctx else ""
    return f"Cite only product ids of the products you were given: {known or 'none'} ({f.detail})."


def _leak(f: Finding, c: CompiledSchema, _: ValidationContext | None) -> str:
    return (f"{_where(f)} copies the instructions ({f.detail}); write the content in your own words and do not "
            "repeat the instructions.")


_HANDLERS: dict[str, Callable[[Finding, CompiledSchema, ValidationContext | None], str]] = {
    "empty_output": lambda f, c, x: "Your reply was empty.",
    "refusal": lambda f, c, x: "This is a routine customer-service task; please do it rather than decline.",
    "no_json": lambda f, c, x: "Your reply contained no JSON object.",
    "prefix_text": lambda f, c, x: "Do not write anything before the JSON object.",
    "suffix_text": lambda f, c, x: "Do not write anything after the JSON object.",
    "code_fence": lambda f, c, x: "Do not wrap the JSON in a markdown code fence.",
    "reasoning_leak": lambda f, c, x: "Do not include your reasoning; output only the final JSON.",
    "multiple_json": lambda f, c, x: "Send exactly one JSON object, not several.",
    "truncated": lambda f, c, x: "Your reply was cut off; keep it shorter so the JSON object is complete.",
    "schema_echo": lambda f, c, x: "You sent back the JSON Schema itself; send an object that follows it, with "
                                   "real values.",
    "wrong_top_level": lambda f, c, x: "Send the object itself at the top level, not inside a list, a string or "
                                       "another object.",
    "missing_field": _missing,
    "extra_field": _extra,
    "wrong_type": _type,
    "enum_violation": _enum,
    "constraint_violation": _constraint,
    "placeholder_value": _placeholder,
    "unknown_department": _department,
    "unknown_product_id": _product,
    "prompt_leak": _leak,
}
