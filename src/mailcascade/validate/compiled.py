"""A JSON Schema compiled once: the jsonschema validator plus the facts the repairs need, cached per schema."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jsonschema import FormatChecker, SchemaError, validators  # type: ignore[import-untyped, unused-ignore]

from mailcascade.errors import ConfigError
from mailcascade.validate.fastcheck import Unsure, Violation, compile_check, violations

PathPart = str | int
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH_PART = re.compile(r'\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


class CompiledSchema:
    """The validator for one schema and what is known about it (enums, descriptions, property names)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        cls = validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except SchemaError as exc:
            raise ConfigError(f"invalid JSON schema: {exc.message}", key="schema") from None
        text = json.dumps(schema)
        checker: FormatChecker | None = cls.FORMAT_CHECKER if '"format"' in text else None
        self.schema = schema
        self.snapshot = json.loads(text)  # compared with the caller's object to detect in-place edits
        self.validator = cls(schema, format_checker=checker)
        self._fast = compile_check(schema) if checker is None else None
        self.is_valid = self.validator.is_valid if self._fast is None else self._fast_is_valid
        self.top_type = schema.get("type")
        props = schema.get("properties")
        self.properties: dict[str, Any] = props if isinstance(props, dict) else {}
        self.enum_strings = frozenset(_enum_strings(schema))
        self.texts = frozenset(_norm_text(t) for t in _schema_texts(schema)) - {""}
        self.names = frozenset(_property_names(schema)) - self.enum_strings
        self.longest_text = max(map(len, self.texts), default=0)
        self.echo_keys = frozenset({"properties", "$schema", "required", "additionalProperties", "$defs",
                                    "definitions"}) - set(self.properties)

    def _fast_is_valid(self, value: Any) -> bool:
        """The fast check (fastcheck.py), which agrees with jsonschema; jsonschema itself where it is unsure."""
        assert self._fast is not None
        try:
            return self._fast(value)
        except Unsure:
            return bool(self.validator.is_valid(value))

    def errors(self, value: Any) -> list[Violation]:
        """Every schema error in `value`, in jsonschema's order (fastcheck.py's copy of it where it is exact)."""
        if self._fast is not None:
            try:
                return violations(self.schema, value)
            except Unsure:
                pass
        return [Violation(e.validator, e.validator_value, e.instance, tuple(e.absolute_path), text=e.message)
                for e in self.validator.iter_errors(value)]

    def subschema(self, path: Sequence[PathPart]) -> Mapping[str, Any] | None:
        """The schema that applies at `path`, following properties and items only."""
        node: Any = self.schema
        for part in path:
            if not isinstance(node, Mapping):
                return None
            if isinstance(part, int):
                node = node.get("items")
            else:
                props = node.get("properties")
                node = props.get(part) if isinstance(props, Mapping) else None
        return node if isinstance(node, Mapping) else None


def compile_schema(schema: Mapping[str, Any]) -> CompiledSchema:
    """The compiled schema, from an identity cache (checked for in-place edits) or a content cache."""
    compiled = _by_identity(_Identity(schema))
    if compiled.snapshot == schema:
        return compiled
    return _by_content(_canonical(schema))


class _Identity:
    """Hashes a schema object by identity; the cache holds a reference, so ids are not reused."""

    __slots__ = ("schema",)

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema

    def __hash__(self) -> int:
        return id(self.schema)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.schema is self.schema


@functools.lru_cache(maxsize=64)
def _by_identity(key: _Identity) -> CompiledSchema:
    return _by_content(_canonical(key.schema))


@functools.lru_cache(maxsize=64)
def _by_content(canonical: str) -> CompiledSchema:
    return CompiledSchema(json.loads(canonical))


def _canonical(schema: Mapping[str, Any]) -> str:
    """The schema as JSON text, key order kept (re-ask messages list properties in the schema's order)."""
    try:
        return json.dumps(schema, default=_plain)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the schema is not JSON: {exc}", key="schema") from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _walk_schema(node: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        yield node
        for key, value in node.items():
            if key in ("enum", "const", "examples", "default"):
                continue
            yield from _walk_schema(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_schema(item)


def _enum_strings(schema: Any) -> Iterator[str]:
    for node in _walk_schema(schema):
        enum = node.get("enum")
        if isinstance(enum, list):
            yield from (v for v in enum if isinstance(v, str))
        if isinstance(node.get("const"), str):
            yield node["const"]


def _schema_texts(schema: Any) -> Iterator[str]:
    for node in _walk_schema(schema):
        for key in ("description", "title"):
            if isinstance(node.get(key), str):
                yield node[key]


def _property_names(schema: Any) -> Iterator[str]:
    for node in _walk_schema(schema):
        props = node.get("properties")
        if isinstance(props, Mapping):
            yield from (str(k) for k in props)


def _norm_text(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def format_path(path: Sequence[PathPart]) -> str:
    """["a", 0, "b c"] -> '$.a[0]["b c"]'."""
    out = ["$"]
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENTIFIER.match(part):
            out.append(f".{part}")
        else:
            out.append(f"[{json.dumps(part)}]")
    return "".join(out)


def parse_path(where: str) -> list[PathPart] | None:
    """The inverse of format_path; None for anything that is not a JSON path (such as "offset 12")."""
    if not where.startswith("$"):
        return None
    parts: list[PathPart] = []
    pos = 1
    for m in _PATH_PART.finditer(where, 1):
        if m.start() != pos:
            return None
        name, index, quoted = m.groups()
        parts.append(name if name is not None else int(index) if index is not None else json.loads(quoted))
        pos = m.end()
    return parts if pos == len(where) else None


def dotted(path: str) -> list[PathPart]:
    """A context path such as "department", "draft.product_ids" or "$.reply" as path parts."""
    parsed = parse_path(path if path.startswith("$") else "$." + path)
    return parsed if parsed is not None else [path]


def get_at(value: Any, path: Sequence[PathPart]) -> tuple[bool, Any]:
    node = value
    for part in path:
        in_list = isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node)
        if not (in_list or (isinstance(part, str) and isinstance(node, dict) and part in node)):
            return False, None
        node = node[part]
    return True, node
