"""Grounding checks: a configured department, cited products among the hits, no prompt text in the output."""

from __future__ import annotations

import functools
import re
from typing import Any

from mailcascade.types import Finding
from mailcascade.validate.compiled import CompiledSchema, dotted, format_path, get_at
from mailcascade.validate.conform import json_copy, near_miss
from mailcascade.validate.context import ValidationContext

LEAK_MIN_CHARS = 40  # a verbatim span at least this long is a leak ...
LEAK_SENTENCE_WORDS = 6  # ... and so is a whole prompt sentence (ending in . ! or ?) of at least this many words
_SHINGLE = 5
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+")


def ground(value: Any, compiled: CompiledSchema, context: ValidationContext) -> tuple[Any, list[Finding]]:
    """Check `value` against the context. Never mutates `value`; returns a changed copy when ids were dropped."""
    findings: list[Finding] = []
    if not isinstance(value, dict | list):
        return value, findings
    if context.departments is not None:
        value = _department(value, compiled, context, findings)
    if context.known_product_ids is not None:
        value = _product_ids(value, context, findings)
    for text_path in context.text_paths if context.prompt_texts else ():
        path = dotted(text_path)
        found, text = get_at(value, path)
        if not found or not isinstance(text, str):
            continue
        for prompt in context.prompt_texts:
            span = leaked_span(text, prompt)
            if span:
                excerpt = span if len(span) <= 60 else span[:57] + "..."
                findings.append(Finding("prompt_leak", format_path(path), "rejected",
                                        f"copies {len(span)} characters of prompt text: {excerpt!r}"))
                break
    return value, findings


def _department(value: Any, compiled: CompiledSchema, context: ValidationContext, findings: list[Finding]) -> Any:
    departments = context.departments or ()
    path = dotted(context.department_path)
    found, dep = get_at(value, path)
    if not found or not isinstance(dep, str) or dep in departments:
        return value
    sub = compiled.subschema(path)
    enum = sub.get("enum") if sub is not None else None
    where = format_path(path)
    if isinstance(enum, list):
        if dep in enum:  # allowed by the schema but not configured: the schema and the config disagree
            findings.append(Finding("unknown_department", where, "rejected", f"{dep!r} is not configured"))
        return value  # otherwise the schema stage reports enum_violation
    target, close = near_miss(dep, departments)
    if target is None:
        detail = f"{dep!r} is close to several: {', '.join(close)}" if close else f"{dep!r} is not configured"
        findings.append(Finding("unknown_department", where, "rejected", detail))
        return value
    findings.append(Finding("unknown_department", where, "accepted", f"mapped {dep!r} to {target!r}"))
    return _replace(value, path, target)


def _product_ids(value: Any, context: ValidationContext, findings: list[Finding]) -> Any:
    known = set(context.known_product_ids or ())
    path = dotted(context.product_ids_path)
    found, ids = get_at(value, path)
    if not found or not isinstance(ids, list):
        return value
    unknown = [(i, x) for i, x in enumerate(ids) if isinstance(x, str) and x not in known]
    if not unknown:
        return value
    for i, pid in unknown:
        findings.append(Finding("unknown_product_id", format_path([*path, i]), "accepted",
                                f"dropped {pid!r}: not among the retrieved products"))
    dropped = {i for i, _ in unknown}
    return _replace(value, path, [x for i, x in enumerate(ids) if i not in dropped])


def _replace(value: Any, path: list[str | int], new: Any) -> Any:
    out = json_copy(value)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = new
    return out


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"').split())


@functools.lru_cache(maxsize=32)
def _prompt_index(prompt: str) -> tuple[str, frozenset[str], tuple[str, ...]]:
    norm = _norm(prompt)
    words = norm.split(" ")
    shingles = frozenset(" ".join(words[i:i + _SHINGLE]) for i in range(len(words) - _SHINGLE + 1))
    sentences = tuple(s for s in _SENTENCE_END.split(norm)  # whole sentences only, not fragments around a variable
                      if len(s.split()) >= LEAK_SENTENCE_WORDS and s[-1] in ".!?")
    return norm, shingles, sentences


def leaked_span(text: str, prompt: str) -> str | None:
    """The longest verbatim span of `prompt` in `text` if it is long enough to count as a leak (whitespace and
    case are ignored): at least LEAK_MIN_CHARS characters, or a whole prompt sentence of LEAK_SENTENCE_WORDS words."""
    if not prompt.strip() or not text.strip():
        return None
    norm_prompt, shingles, sentences = _prompt_index(prompt)
    norm = _norm(text)
    words = norm.split(" ")
    best = ""
    i = 0
    while i <= len(words) - _SHINGLE:
        if " ".join(words[i:i + _SHINGLE]) not in shingles:
            i += 1
            continue
        end = i + _SHINGLE
        while end < len(words) and " ".join(words[i:end + 1]) in norm_prompt:
            end += 1
        span = " ".join(words[i:end])
        if span in norm_prompt and len(span) > len(best):
            best = span
        i = end if span in norm_prompt else i + 1
    if len(best) >= LEAK_MIN_CHARS:
        return best
    for sentence in sentences:
        if sentence in norm:
            return sentence
    return None
