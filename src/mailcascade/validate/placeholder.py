"""Template placeholders and filler that stand in for a real value: "<department>", "N/A", "string", "..."."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from mailcascade.validate.compiled import CompiledSchema, PathPart

FILLER = frozenset({
    "n/a", "na", "n.a.", "none", "null", "nil", "undefined", "tbd", "todo", "fixme", "placeholder", "example",
    "sample", "string", "str", "text", "number", "integer", "int", "float", "boolean", "bool", "array", "list",
    "object", "value", "xxx", "lorem ipsum", "...", "…", "-", "--", "?", "???", "your reply here", "reply here",
    "your answer here", "insert reply here", "id", "product_id", "reason", "department", "reply",
})
_TEMPLATE = re.compile(
    r"<[^<>]{1,80}>|<[^<>]{1,40}|\{\{?[^{}]{1,80}\}?\}|\[[^\[\]0-9]{1,80}\]|\.{2,}|…+|_{2,}|x{3,}"
    r"|(?:your|insert|enter|put)\b.{0,60}\bhere\.?",
    re.I | re.S,
)


def is_placeholder(text: str, compiled: CompiledSchema | None = None) -> bool:
    """Is this whole string a placeholder rather than a value? Values the schema allows (enum, const) never are."""
    if len(text) > (compiled.longest_text if compiled is not None else 0) + 100:
        return False  # placeholders are short; long text is content
    if compiled is not None and text in compiled.enum_strings:
        return False
    norm = " ".join(text.lower().split())
    if compiled is not None and (norm.rstrip(".") in compiled.texts or norm in compiled.names):
        return True
    return norm in FILLER or _TEMPLATE.fullmatch(norm) is not None


def has_placeholder(value: Any, compiled: CompiledSchema, *, or_non_finite: bool = False) -> bool:
    """Fast check: any string anywhere that is a placeholder (or, with `or_non_finite`, a NaN or infinity)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if is_placeholder(node, compiled):
                return True
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif or_non_finite and isinstance(node, float) and not math.isfinite(node):
            return True
    return False


def placeholders(value: Any, compiled: CompiledSchema) -> Iterator[tuple[list[PathPart], str]]:
    """Every placeholder string with its path."""
    for path, node in leaves(value):
        if isinstance(node, str) and is_placeholder(node, compiled):
            yield path, node


def leaves(value: Any) -> Iterator[tuple[list[PathPart], Any]]:
    """Every scalar in a JSON value with its path, in document order."""
    stack: list[tuple[list[PathPart], Any]] = [([], value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            stack.extend(([*path, k], v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend(([*path, i], v) for i, v in reversed(list(enumerate(node))))
        else:
            yield path, node
