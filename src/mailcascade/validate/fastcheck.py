"""A fast schema check for the JSON Schema subset prompt schemas use, with jsonschema's exact semantics.

`compile_check(schema)` returns a function value -> bool, or None when the schema uses anything outside the subset
(then the caller uses jsonschema). For a schema inside the subset, `violations(schema, value)` lists the errors
jsonschema's `iter_errors` yields, in its order, with its keyword, value, instance, path and message.

The subset: type, enum and const of strings, properties, required, additionalProperties (false or a schema),
items (one schema), minItems, maxItems, uniqueItems, minLength, maxLength, pattern, minimum, maximum,
exclusiveMinimum, exclusiveMaximum (numbers), and annotations. A value either cannot decide exactly (uniqueItems
over non-strings, and see `violations`) raises Unsure, and the caller asks jsonschema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any], bool]
_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "$schema", "$id",
                          "readOnly", "writeOnly", "deprecated"})
_DRAFTS = ("draft-06", "draft-07", "2019-09", "2020-12")


_PLAIN_TYPES: dict[str, type] = {"string": str, "object": dict, "array": list, "boolean": bool}


class Unsure(Exception):
    """This value needs the full validator."""


class _Unsupported(Exception):
    pass


def compile_check(schema: Mapping[str, Any]) -> Check | None:
    """The fast check for `schema`, or None when the schema is outside the subset."""
    declared = schema.get("$schema")
    if declared is not None and not (isinstance(declared, str) and any(d in declared for d in _DRAFTS)):
        return None
    try:
        return _node(schema)
    except _Unsupported:
        return None


def _is_type(value: Any, name: str) -> bool:
    if name == "string":
        return isinstance(value, str)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "number":
        return isinstance(value, int | float)
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    raise _Unsupported(name)


def _node(schema: Any) -> Check:
    if schema is True:
        return lambda value: True
    if schema is False:
        return lambda value: False
    if not isinstance(schema, Mapping):
        raise _Unsupported("not a schema")
    keys = {k: v for k, v in schema.items() if k not in _ANNOTATIONS}
    checks: list[Check] = []
    if keys.keys() & _OBJECT_KEYS:
        checks.append(_object(keys))
    checks.extend(_keyword(key, arg, schema) for key, arg in keys.items() if key not in _OBJECT_KEYS)
    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda value: first(value) and second(value)

    def every(value: Any) -> bool:  # a loop: faster than all() over a generator
        for check in checks:  # noqa: SIM110
            if not check(value):
                return False
        return True

    return every


_OBJECT_KEYS = frozenset({"properties", "required", "additionalProperties"})


def _object(schema: Mapping[str, Any]) -> Check:
    """properties, required and additionalProperties in one pass over the object."""
    props = schema.get("properties", {})
    required = schema.get("required", [])
    if not isinstance(props, Mapping) or not isinstance(required, list) or not all(
            isinstance(n, str) for n in required) or "patternProperties" in schema:
        raise _Unsupported("object keywords")
    subs = {name: _node(sub) for name, sub in props.items()}
    names = tuple(required)
    extra = _node(schema["additionalProperties"]) if "additionalProperties" in schema else None
    forbid_extra = schema.get("additionalProperties") is False

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        for name in names:
            if name not in value:
                return False
        for key, item in value.items():
            sub = subs.get(key)
            if sub is not None:
                if not sub(item):
                    return False
            elif forbid_extra or (extra is not None and not extra(item)):
                return False
        return True

    return check


def _keyword(key: str, arg: Any, schema: Mapping[str, Any]) -> Check:
    if key == "type":
        names = [arg] if isinstance(arg, str) else list(arg) if isinstance(arg, list) else None
        if not names or not all(isinstance(n, str) for n in names):
            raise _Unsupported(key)
        for name in names:
            _is_type(None, name)  # raises for an unknown type name
        if len(names) == 1 and names[0] in _PLAIN_TYPES:
            kind = _PLAIN_TYPES[names[0]]
            return lambda value: isinstance(value, kind)
        if names == ["number"]:
            return _number
        if names == ["null"]:
            return lambda value: value is None
        if len(names) == 1:
            name = names[0]
            return lambda value: _is_type(value, name)
        return lambda value: any(_is_type(value, n) for n in names)
    if key in ("enum", "const"):
        allowed = arg if key == "enum" else [arg]
        if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
            raise _Unsupported(key)
        members = frozenset(allowed)
        return lambda value: isinstance(value, str) and value in members
    if key == "items":
        if isinstance(arg, list) or "prefixItems" in schema:
            raise _Unsupported(key)
        item = _node(arg)

        def items(value: Any) -> bool:
            if isinstance(value, list):
                for v in value:
                    if not item(v):
                        return False
            return True

        return items
    if key in ("minItems", "maxItems", "minLength", "maxLength"):
        if not isinstance(arg, int) or isinstance(arg, bool):
            raise _Unsupported(key)
        kind = list if key.endswith("Items") else str
        if key.startswith("min"):
            return lambda value: not isinstance(value, kind) or len(value) >= arg
        return lambda value: not isinstance(value, kind) or len(value) <= arg
    if key == "uniqueItems":
        if arg is not True:
            return lambda value: True
        return _unique
    if key == "pattern":
        if not isinstance(arg, str):
            raise _Unsupported(key)
        regex = re.compile(arg)
        return lambda value: not isinstance(value, str) or regex.search(value) is not None
    if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if not isinstance(arg, int | float) or isinstance(arg, bool):
            raise _Unsupported(key)
        return _bound(key, arg)
    raise _Unsupported(key)


def _unique(value: Any) -> bool:
    if not isinstance(value, list):
        return True
    if all(isinstance(v, str) for v in value):
        return len(set(value)) == len(value)
    raise Unsure("uniqueItems over non-strings")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bound(key: str, limit: float) -> Check:
    # the same comparisons as jsonschema, so NaN behaves the same
    if key == "minimum":
        return lambda value: not _number(value) or not value < limit
    if key == "maximum":
        return lambda value: not _number(value) or not value > limit
    if key == "exclusiveMinimum":
        return lambda value: not _number(value) or not value <= limit
    return lambda value: not _number(value) or not value >= limit


@dataclass(slots=True)
class Violation:
    """One schema error, as jsonschema reports it (`validator` is the keyword; None for a false schema).

    `message` is built when asked for, from `text` (jsonschema's message, when known) or from `name` (the missing
    property, for `required`)."""

    validator: str | None
    validator_value: Any
    instance: Any
    path: tuple[str | int, ...]
    name: str = ""
    text: str | None = None

    @property
    def message(self) -> str:
        if self.text is not None:
            return self.text
        if self.validator is None:
            return f"False schema does not allow {self.instance!r}"
        if self.validator == "required":
            return f"{self.name!r} is a required property"
        return _MESSAGES[self.validator](self.validator_value, self.instance)


def violations(schema: Any, value: Any) -> list[Violation]:
    """jsonschema's errors for `value`, for a schema `compile_check` accepted. Raises Unsure where it cannot be
    exact (uniqueItems over non-strings; errors under more than one additional property, which jsonschema visits in
    set order)."""
    out: list[Violation] = []
    _errors(schema, value, (), out)
    return out


def _errors(schema: Any, value: Any, path: tuple[str | int, ...], out: list[Violation]) -> None:
    if schema is True:
        return
    if schema is False:  # jsonschema reports it at the parent's path
        out.append(Violation(None, None, value, path[:-1]))
        return
    for key, arg in schema.items():
        broken = _BROKEN.get(key)
        if broken is not None:
            if broken(arg, value):
                out.append(Violation(key, arg, value, path))
        elif key == "properties":
            if isinstance(value, dict):
                for name, sub in arg.items():
                    if name in value:
                        _errors(sub, value[name], (*path, name), out)
        elif key == "items":
            if isinstance(value, list):
                if arg is False and value:
                    raise Unsure("items: false reads differently in each draft")
                for i, item in enumerate(value):
                    _errors(arg, item, (*path, i), out)
        elif key == "required":
            if isinstance(value, dict):
                out.extend(Violation(key, arg, value, path, name) for name in arg if name not in value)
        elif key == "additionalProperties":
            _additional(schema, arg, value, path, out)


def _additional(schema: Mapping[str, Any], arg: Any, value: Any, path: tuple[str | int, ...],
                out: list[Violation]) -> None:
    if not isinstance(value, dict):
        return
    props = schema.get("properties", {})
    extras = [k for k in value if k not in props]
    if isinstance(arg, dict):
        found: list[list[Violation]] = []
        for k in extras:
            errs: list[Violation] = []
            _errors(arg, value[k], (*path, k), errs)
            if errs:
                found.append(errs)
        if len(found) > 1:
            raise Unsure("errors under several additional properties")
        out.extend(found[0] if found else ())
    elif not arg and extras:
        names = sorted(set(extras), key=str)
        verb = "was" if len(names) == 1 else "were"
        listed = ", ".join(repr(n) for n in names)
        out.append(Violation("additionalProperties", arg, value, path,
                             text=f"Additional properties are not allowed ({listed} {verb} unexpected)"))


def _names(arg: str | list[str]) -> list[str]:
    return [arg] if isinstance(arg, str) else arg


def _type_broken(arg: Any, value: Any) -> bool:
    if isinstance(arg, str):
        return not _is_type(value, arg)
    return not any(_is_type(value, n) for n in arg)


def _unique_broken(arg: Any, value: Any) -> bool:
    return arg is True and not _unique(value)


# keyword -> does `value` break it (jsonschema's comparisons, so NaN behaves the same); then its message
_BROKEN: dict[str, Callable[[Any, Any], bool]] = {
    "type": _type_broken,
    "enum": lambda arg, value: not (isinstance(value, str) and value in arg),
    "const": lambda arg, value: not (isinstance(value, str) and value == arg),
    "minItems": lambda arg, value: isinstance(value, list) and len(value) < arg,
    "maxItems": lambda arg, value: isinstance(value, list) and len(value) > arg,
    "minLength": lambda arg, value: isinstance(value, str) and len(value) < arg,
    "maxLength": lambda arg, value: isinstance(value, str) and len(value) > arg,
    "uniqueItems": _unique_broken,
    "pattern": lambda arg, value: isinstance(value, str) and not re.search(arg, value),
    "minimum": lambda arg, value: _number(value) and value < arg,
    "maximum": lambda arg, value: _number(value) and value > arg,
    "exclusiveMinimum": lambda arg, value: _number(value) and value <= arg,
    "exclusiveMaximum": lambda arg, value: _number(value) and value >= arg,
}
def _too_short(arg: Any, value: Any) -> str:
    return f"{value!r} {'should be non-empty' if arg == 1 else 'is too short'}"


def _too_long(arg: Any, value: Any) -> str:
    return f"{value!r} {'is expected to be empty' if arg == 0 else 'is too long'}"


_MESSAGES: dict[str, Callable[[Any, Any], str]] = {
    "type": lambda arg, value: f"{value!r} is not of type {', '.join(map(repr, _names(arg)))}",
    "enum": lambda arg, value: f"{value!r} is not one of {arg!r}",
    "const": lambda arg, value: f"{arg!r} was expected",
    "minItems": _too_short,
    "minLength": _too_short,
    "maxItems": _too_long,
    "maxLength": _too_long,
    "uniqueItems": lambda arg, value: f"{value!r} has non-unique elements",
    "pattern": lambda arg, value: f"{value!r} does not match {arg!r}",
    "minimum": lambda arg, value: f"{value!r} is less than the minimum of {arg!r}",
    "maximum": lambda arg, value: f"{value!r} is greater than the maximum of {arg!r}",
    "exclusiveMinimum": lambda arg, value: f"{value!r} is less than or equal to the minimum of {arg!r}",
    "exclusiveMaximum": lambda arg, value: f"{value!r} is greater than or equal to the maximum of {arg!r}",
}
