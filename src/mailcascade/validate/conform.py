"""Make a parsed value fit the schema: unwrap, coerce, map near misses, or name exactly what is wrong."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailcascade.types import Finding
from mailcascade.validate.compiled import CompiledSchema, PathPart, format_path
from mailcascade.validate.fastcheck import Violation
from mailcascade.validate.placeholder import has_placeholder, is_placeholder, leaves

_SEPARATORS = re.compile(r"[\s\-]+")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_SCHEMA_WORDS = frozenset({"type", "enum", "description", "minimum", "maximum", "items", "title", "default", "const",
                           "pattern", "minLength", "maxLength", "format", "examples", "properties", "required",
                           "minItems", "maxItems", "uniqueItems", "additionalProperties"})
_WRAP_ORDER = {"required": 0, "type": 1, "enum": 2, "additionalProperties": 3}
_RANK = {"rejected": 3, "accepted": 2, "repaired": 1, "reasked": 0}
NEAR_MISS_CUTOFF = 0.8


@dataclass
class Outcome:
    """A candidate value after the schema stage, with what was done to it."""

    value: Any
    findings: list[Finding] = field(default_factory=list)
    valid: bool = False  # the value is known to satisfy the schema

    @property
    def failed(self) -> bool:
        return any(f.action == "rejected" for f in self.findings)

    def rank(self) -> tuple[int, int, int]:
        worst = max((_RANK[f.action] for f in self.findings), default=0)
        return worst, sum(f.action == "rejected" for f in self.findings), len(self.findings)


def conform(value: Any, compiled: CompiledSchema, depth: int = 0) -> Outcome:
    """Unwrap, repair and check one candidate against the schema."""
    if is_schema_echo(value, compiled):
        return Outcome(value, [Finding("schema_echo", "$", "rejected", "the output is the JSON Schema itself")])
    if compiled.is_valid(value):
        return _repair(value, compiled, valid=True)
    if depth > 2 or compiled.top_type != "object":
        return _repair(value, compiled)
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            inner = json.loads(value)
        except ValueError:
            inner = None
        if isinstance(inner, dict | list):
            out = conform(inner, compiled, depth + 1)
            return _wrapped(out, "the object was sent as a JSON string")
    if isinstance(value, list):
        items = [(i, v) for i, v in enumerate(value) if isinstance(v, dict)]
        if len(items) == 1 and len(value) == 1:
            return _wrapped(conform(items[0][1], compiled, depth + 1), "unwrapped a list of one object")
        if items:
            return _pick([(f"item {i}", v) for i, v in items], compiled, depth, "a list of objects")
    if isinstance(value, dict) and len(value) == 1:
        (key, inner), = value.items()
        if key not in compiled.properties and isinstance(inner, dict | list):
            unwrapped = conform(inner, compiled, depth + 1)
            if unwrapped.rank() == (0, 0, 0) and not _has_non_finite(value):
                # the outer value is invalid, so its repair has at least one finding: the unwrapped one wins
                return _wrapped(unwrapped, f"unwrapped {{{json.dumps(key)}: ...}}")
            outer = _repair(value, compiled)
            if unwrapped.rank() < outer.rank():
                return _wrapped(unwrapped, f"unwrapped {{{json.dumps(key)}: ...}}")
            return outer
    return _repair(value, compiled)


def _has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, float) and not math.isfinite(node):
            return True
    return False


def _wrapped(out: Outcome, detail: str) -> Outcome:
    out.findings.insert(0, Finding("wrong_top_level", "$", "repaired", detail))
    return out


def _pick(options: list[tuple[str, Any]], compiled: CompiledSchema, depth: int, what: str) -> Outcome:
    outcomes = [(name, conform(v, compiled, depth + 1)) for name, v in options]
    best_i = min(range(len(outcomes)), key=lambda i: outcomes[i][1].rank())
    name, best = outcomes[best_i]
    rejected = [f"{n} ({', '.join(dict.fromkeys(f.code for f in o.findings)) or 'also valid'})"
                for i, (n, o) in enumerate(outcomes) if i != best_i]
    best.findings.insert(0, Finding("multiple_json", "$", "accepted",
                                    f"{what}: chose {name}; rejected {'; '.join(rejected)}"))
    best.findings.insert(0, Finding("wrong_top_level", "$", "repaired", f"unwrapped {what}"))
    return best


def is_schema_echo(value: Any, compiled: CompiledSchema) -> bool:
    """Is this the schema (or its property definitions) rather than an instance of it?"""
    if not isinstance(value, dict) or not value:
        return False
    if value == compiled.snapshot:
        return True
    if value.keys() & compiled.echo_keys and (
        isinstance(value.get("properties"), dict) or "$schema" in value
        or (value.get("type") == "object" and isinstance(value.get("required"), list))
    ):
        return True
    props = compiled.properties
    if props and value.keys() <= props.keys() and len(value) >= min(2, len(props)):
        return all(isinstance(v, dict) and v and v.keys() <= _SCHEMA_WORDS and "type" in v
                   and isinstance(props[k], dict) and props[k].get("type") != "object" for k, v in value.items())
    return False


def _repair(value: Any, compiled: CompiledSchema, valid: bool = False) -> Outcome:
    findings: list[Finding] = []
    skip: set[tuple[PathPart, ...]] = set()
    odd = has_placeholder(value, compiled, or_non_finite=True)  # the common no, without building paths
    for path, leaf in leaves(value) if odd else ():
        if isinstance(leaf, float) and not math.isfinite(leaf):
            skip.add(tuple(path))  # reported by the parser as non_finite_number
        elif isinstance(leaf, str) and is_placeholder(leaf, compiled):
            findings.append(Finding("placeholder_value", format_path(path), "rejected", f"{leaf!r} is a placeholder"))
            skip.add(tuple(path))
    reported = {(f.code, f.where) for f in findings}
    copied = False
    for n in range(0 if valid else 100):
        # the first pass is known to fail (conform checked); later ones often pass: the fast check says so
        errors = [] if n and compiled.is_valid(value) else sorted(compiled.errors(value),
                                                                  key=lambda e: _WRAP_ORDER.get(e.validator or "", 9))
        valid = not errors
        touched: list[tuple[PathPart, ...]] = []  # fixes in one pass must not overlap; the rest wait a pass
        for err in errors:
            where = err.path
            if skip and any(where[:n] in skip for n in range(len(where) + 1)):
                continue
            if touched and any(where[:len(t)] == t or t[:len(where)] == where for t in touched):
                continue
            if not copied:
                value, copied = json_copy(value), True
            new_value, finding = _fix(value, err, list(where), compiled)
            if finding.action != "rejected":
                value = new_value
                findings.append(finding)
                touched.append(where)
                continue
            if (finding.code, finding.where) not in reported:
                reported.add((finding.code, finding.where))
                findings.append(finding)
        if not touched:
            break
    return Outcome(value, findings, valid)


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON value (faster than copy.deepcopy)."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_copy(v) for v in value]
    return value


def _fix(root: Any, err: Violation, path: list[PathPart], compiled: CompiledSchema) -> tuple[Any, Finding]:
    kind = str(err.validator)
    instance = err.instance
    where = format_path(path)
    if kind == "required" and isinstance(instance, dict):
        name = _required_name(err, instance)
        sub = compiled.subschema(path) or {}
        props = sub.get("properties") or {}
        extras = [k for k in instance if k not in props]
        target, close = near_miss(name, extras)
        if target is not None:
            renamed = {name if k == target else k: v for k, v in instance.items()}
            return _set(root, path, renamed), Finding("missing_field", format_path([*path, name]), "accepted",
                                                      f"renamed {target!r} to {name!r}")
        return root, Finding("missing_field", format_path([*path, name]), "rejected", f"{name!r} is required")
    if kind == "additionalProperties" and err.validator_value is False and isinstance(instance, dict):
        sub = compiled.subschema(path) or {}
        props = sub.get("properties") or {}
        extras = [k for k in instance if k not in props]
        if extras:
            kept = {k: v for k, v in instance.items() if k in props}
            # dropping a field loses what the model put there: a lossy repair
            return _set(root, path, kept), Finding("extra_field", format_path([*path, extras[0]]) if len(extras) == 1
                                                   else where, "accepted", f"dropped {', '.join(map(repr, extras))}")
    if kind == "type":
        types = [err.validator_value] if isinstance(err.validator_value, str) else list(err.validator_value)
        ok, coerced = coerce(instance, types)
        if ok:
            return _set(root, path, coerced), Finding("wrong_type", where, "repaired", f"{instance!r} -> {coerced!r}")
        detail = f"expected {' or '.join(types)}, got {json_type(instance)}"
        return root, Finding("wrong_type", where, "rejected", detail)
    if kind == "enum":
        allowed = [v for v in err.validator_value if isinstance(v, str)]
        if isinstance(instance, str):
            target, close = near_miss(instance, allowed)
            if target is not None:
                return _set(root, path, target), Finding("enum_violation", where, "accepted",
                                                         f"mapped {instance!r} to {target!r}")
            if len(close) > 1:
                return root, Finding("enum_violation", where, "rejected",
                                     f"{instance!r} is close to several: {', '.join(close)}")
        return root, Finding("enum_violation", where, "rejected", f"{instance!r} is not allowed")
    if kind == "uniqueItems" and isinstance(instance, list):
        seen: dict[str, Any] = {}
        for item in instance:
            seen.setdefault(json.dumps(item, sort_keys=True), item)
        return _set(root, path, list(seen.values())), Finding("constraint_violation", where, "repaired",
                                                              "removed duplicate items")
    return root, Finding("constraint_violation", where, "rejected", _short(err.message))


def _required_name(err: Violation, instance: dict[str, Any]) -> str:
    """The property this error is about: fastcheck names it; jsonschema says "'name' is a required property"."""
    if err.name:
        return err.name
    missing = [r for r in err.validator_value if r not in instance]
    for name in missing:
        if isinstance(name, str) and err.message == f"{name!r} is a required property":
            return name
    return str(missing[0]) if missing else "?"


def near_miss(value: str, allowed: Sequence[str]) -> tuple[str | None, list[str]]:
    """The only allowed value close to `value` (case, spaces, a typo), or None and the close ones.

    Close: difflib's ratio >= NEAR_MISS_CUTOFF. Most allowed values are ruled out first by a bound on the ratio
    that costs no Python loop: the characters they share with `value`, counted with repeats."""
    if not allowed:
        return None, []
    norm = _norm(value)
    normed = [(a, _norm(a)) for a in allowed]
    exact = [a for a, n in normed if n == norm]
    if exact:
        return (exact[0] if len(exact) == 1 else None), exact
    others = dict.fromkeys(map(ord, norm))  # a translate table deleting the characters of `value`
    matcher: difflib.SequenceMatcher[str] | None = None
    close = []
    for a, n in normed:
        shared = len(n) - len(n.translate(others))  # >= the matches quick_ratio and ratio count
        if 2.0 * shared / (len(n) + len(norm)) < NEAR_MISS_CUTOFF:  # len > 0: two empty strings matched exactly
            continue
        if matcher is None:
            matcher = difflib.SequenceMatcher(None, b=norm)
        matcher.set_seq1(n)
        if (matcher.real_quick_ratio() >= NEAR_MISS_CUTOFF and matcher.quick_ratio() >= NEAR_MISS_CUTOFF
                and matcher.ratio() >= NEAR_MISS_CUTOFF):
            close.append(a)
    return (close[0] if len(close) == 1 else None), close


def _norm(text: str) -> str:
    return _SEPARATORS.sub("_", text.strip().lower())


def coerce(value: Any, types: Sequence[str]) -> tuple[bool, Any]:
    """Coerce a value to one of the JSON types without guessing: "0.9" -> 0.9, 3.0 -> 3, "true" -> True."""
    for t in types:
        if t in ("number", "integer") and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            number = float(value)
            if t == "number":
                return True, int(number) if re.fullmatch(r"[-+]?\d+", value.strip()) else number
            if number.is_integer():
                return True, int(number)
        if t == "integer" and isinstance(value, float) and value.is_integer():
            return True, int(value)
        if t == "boolean" and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return True, value.strip().lower() == "true"
        if t == "string" and isinstance(value, int | float) and not isinstance(value, bool):
            return True, json.dumps(value)
        if t in ("array", "object") and isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            try:
                decoded = json.loads(value)
            except ValueError:
                continue
            if isinstance(decoded, list if t == "array" else dict):
                return True, decoded
        if t == "array" and isinstance(value, str) and value.strip() and "," not in value:
            return True, [value]
    return False, None


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _set(root: Any, path: list[PathPart], new: Any) -> Any:
    if not path:
        return new
    node = root
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = new
    return root


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
