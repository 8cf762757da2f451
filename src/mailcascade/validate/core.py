"""`validate`: raw model text in, Verdict out. Pure: no I/O, no logging, deterministic.

Status: `failed` if any finding was rejected (value None); else `lossy` if any lossy repair or choice was
accepted; else `repaired` if anything was repaired; else `clean`. Finding actions: `repaired` (safe repair),
`accepted` (a lossy repair or choice, value kept), `rejected` (made it fail).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailcascade.types import Finding, Verdict, VerdictStatus
from mailcascade.validate.compiled import CompiledSchema, compile_schema
from mailcascade.validate.conform import Outcome, conform, is_schema_echo
from mailcascade.validate.context import ValidationContext
from mailcascade.validate.extract import Scan, is_refusal, prose_notes, scan
from mailcascade.validate.grounding import ground
from mailcascade.validate.placeholder import has_placeholder
from mailcascade.validate.syntax import Note, Parsed, _decoder

_REJECTED_SYNTAX = frozenset({"non_finite_number"})
_JSON_STARTS = frozenset('"{[-0123456789tfnNI')  # what a JSON value can start with, after JSON whitespace


_UNTRIED, _FAILED = object(), object()  # `validate` did not parse the text / the parse failed


def validate(text: str, schema: Mapping[str, Any], *, finish_reason: str | None = None,
             context: ValidationContext | None = None) -> Verdict:
    """Extract, repair and check one raw model output against `schema` (and `context`, when given)."""
    compiled = compile_schema(schema)
    first: Any = _UNTRIED
    if finish_reason != "length":
        head = text.lstrip(" \t\n\r")[:1]
        try:
            if not head or head not in _JSON_STARTS:
                raise ValueError("not JSON")  # what json.loads would say, without its error message's cost
            first = _decoder().decode(text)  # json.loads, with NaN and Infinity refused
        except (ValueError, RecursionError):
            first = _FAILED
        else:
            if compiled.is_valid(first) and _quick_ok(first, compiled, context):
                return Verdict("clean", first)
    return _slow(text, compiled, finish_reason, context, first)


def _quick_ok(value: Any, compiled: CompiledSchema, context: ValidationContext | None) -> bool:
    if isinstance(value, dict) and value.keys() & compiled.echo_keys and is_schema_echo(value, compiled):
        return False
    if has_placeholder(value, compiled):
        return False
    return context is None or not ground(value, compiled, context)[1]


def _slow(text: str, compiled: CompiledSchema, finish_reason: str | None,
          context: ValidationContext | None, first: Any = _UNTRIED) -> Verdict:
    cut = [Finding("truncated", f"offset {len(text)}", "accepted", "finish_reason=length")] \
        if finish_reason == "length" else []
    if not text.strip():
        return _verdict(None, [Finding("empty_output", "offset 0", "rejected"), *cut])
    found = _whole(text, first)
    if found is None:
        found = scan(text, compiled.top_type)
    head: list[Finding] = [Finding("reasoning_leak", f"offset {lo}", "repaired") for lo, _ in found.reasoning]
    if found.inside_reasoning:
        head = [Finding("reasoning_leak", f"offset {lo}", "accepted", "the JSON was inside the reasoning block")
                for lo, _ in found.reasoning]
    if not found.candidates:
        return _verdict(None, [*head, *_no_candidate(text, found, finish_reason), *cut])
    assessed = [(c, _assess(c, compiled, context)) for c in found.candidates]
    best_i = min(range(len(assessed)), key=lambda i: _score(assessed[i])) if len(assessed) > 1 else 0
    chosen, outcome = assessed[best_i]
    findings = [*head, *_notes_to_findings(prose_notes(text, chosen, [c for c, _ in assessed if c is not chosen],
                                                       found.reasoning))]
    if len(assessed) > 1:
        rejected = [f"offset {c.start} ({', '.join(dict.fromkeys(f.code for f in o.findings)) or 'also valid'})"
                    for i, (c, o) in enumerate(assessed) if i != best_i]
        detail = f"{len(assessed)} candidates; chose offset {chosen.start}; rejected {'; '.join(rejected)}"
        findings.append(Finding("multiple_json", f"offset {chosen.start}", "accepted", detail))
    outer = [f for f in found.failures if f.progress and f.start < chosen.start < f.offset]
    if outer:
        findings.append(Finding("malformed_json", f"offset {outer[0].offset}", "accepted",
                                f"took the object at offset {chosen.start} from inside a malformed value "
                                f"starting at offset {outer[0].start}: {outer[0].message}"))
    findings.extend(_notes_to_findings(chosen.notes))
    if chosen.truncated:
        cut = [Finding("truncated", f"offset {len(text)}", "accepted",
                       "closed the unfinished JSON" + (" (finish_reason=length)" if cut else ""))]
    elif cut:
        cut = [Finding("truncated", f"offset {len(text)}", "accepted",
                       "finish_reason=length; the JSON itself is complete")]
    findings.extend(cut)
    findings.extend(outcome.findings)
    return _verdict(outcome.value, findings, None if outcome.valid else compiled)


def _whole(text: str, first: Any) -> Scan | None:
    """The whole text is one JSON document (maybe not an object): a single candidate, no scanning.

    `first`: what `validate` got parsing the text as it is (_UNTRIED, _FAILED or the value), reused unless it
    failed on a text that stripping changes."""
    stripped = text.strip().lstrip("\ufeff")
    if first is not _UNTRIED and first is not _FAILED:
        value = first  # json.loads took the text, so around the value there is only JSON whitespace
    elif stripped == text and first is _FAILED:
        return None
    else:
        try:
            value = _decoder().decode(stripped)
        except (ValueError, RecursionError):
            return None
    if isinstance(value, str) and not value.strip().startswith(("{", "[")):
        return Scan()  # a bare JSON string: prose (or a refusal) in quotes
    start = text.find(stripped[:1])
    return Scan(candidates=[Parsed(value, start, start + len(stripped))])


def _assess(candidate: Parsed, compiled: CompiledSchema, context: ValidationContext | None) -> Outcome:
    outcome = conform(candidate.value, compiled)
    if context is not None and not any(f.code == "schema_echo" for f in outcome.findings):
        grounded, extra = ground(outcome.value, compiled, context)
        if grounded is not outcome.value:
            outcome.value, outcome.valid = grounded, False
        outcome.findings.extend(extra)
    return outcome


def _score(item: tuple[Parsed, Outcome]) -> tuple[int, int, int, int, int]:
    candidate, outcome = item
    syntax_rejected = any(code in _REJECTED_SYNTAX for code, _, _ in candidate.notes)
    return (*outcome.rank()[:2], int(candidate.truncated), int(syntax_rejected), len(candidate.notes))


def _no_candidate(text: str, found: Scan, finish_reason: str | None) -> list[Finding]:
    if found.failures:
        first = found.failures[0]
        return [Finding("malformed_json", f"offset {first.offset}", "rejected", first.message)]
    if is_refusal(text) or finish_reason == "content_filter":
        detail = "finish_reason=content_filter" if finish_reason == "content_filter" else ""
        return [Finding("refusal", "offset 0", "rejected", detail)]
    return [Finding("no_json", "offset 0", "rejected")]


def _notes_to_findings(notes: list[Note]) -> list[Finding]:
    """One finding per code, at its first offset; the count and first detail in `detail`."""
    if not notes:
        return []
    grouped: dict[str, list[tuple[int, str]]] = {}
    for code, offset, detail in notes:
        grouped.setdefault(code, []).append((offset, detail))
    out = []
    for code, hits in grouped.items():
        offset, detail = hits[0]
        if len(hits) > 1:
            detail = f"{len(hits)} times" + (f"; first: {detail}" if detail else "")
        out.append(Finding(code, f"offset {offset}", "rejected" if code in _REJECTED_SYNTAX else "repaired", detail))
    return out


def _verdict(value: Any, findings: list[Finding], compiled: CompiledSchema | None = None) -> Verdict:
    actions = {f.action for f in findings}
    if compiled is not None and "rejected" not in actions and not compiled.is_valid(value):
        again = [f for f in conform(value, compiled).findings if f.action == "rejected"]
        findings.extend(again or [Finding("constraint_violation", "$", "rejected", "the value breaks the schema")])
        actions.add("rejected")
    status: VerdictStatus
    if "rejected" in actions:
        return Verdict("failed", None, tuple(findings))
    status = "lossy" if "accepted" in actions else "repaired" if "repaired" in actions else "clean"
    return Verdict(status, value, tuple(findings))
