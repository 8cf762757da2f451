"""Find the JSON in a raw model output: reasoning blocks, candidates, refusals and the prose around them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mailcascade.validate.syntax import TOO_DEEP, Note, Parsed, ParseFailure, parse_at

_TAGS = "think|thinking|thought|reasoning|reflection|scratchpad|analysis"
_REASONING = re.compile(
    rf"<({_TAGS})>.*?(?:</\1>|\Z)|\[(THINK)\].*?(?:\[/THINK\]|\Z)|\u25c1think\u25b7.*?(?:\u25c1/think\u25b7|\Z)"
    r"|<\|begin_of_thought\|>.*?(?:<\|end_of_thought\|>|\Z)"
    r"|<\|channel\|>analysis<\|message\|>.*?(?:<\|end\|>|\Z)",
    re.S | re.I,
)
_ORPHAN_CLOSE = re.compile(rf"</(?:{_TAGS})>|\[/THINK\]", re.I)
_OPENERS = re.compile(r"[{\[]")
_FENCE = re.compile(r"(?:```+|~~~+)[A-Za-z0-9_+\-]*|`")
_APOS = "(?:'|\u2019)"
_NEG = (rf"(?:can\s*{_APOS}?t|cannot|can\s+not|won\s*{_APOS}?t(?:\s+be\s+able\s+to)?|will\s+not|"
        rf"(?:am\s+|{_APOS}m\s+)?(?:unable|not\s+able)\s+to|am\s+not\s+going\s+to|{_APOS}m\s+not\s+going\s+to)")
_REFUSAL = re.compile(
    rf"\bi\s*{_NEG}\s+(?:help|assist|comply)\b"
    rf"|\bi\s*{_NEG}\s+(?:do|fulfil+|complete|answer|respond\s+to|process|provide|create|generate|write)\s+"
    r"(?:that|this|it|such|your\s+request|the\s+request|this\s+request|that\s+request)\b"
    r"|\bas\s+an\s+ai\b|\bi\s+(?:must|have\s+to|need\s+to)\s+(?:respectfully\s+)?decline\b",
    re.I,
)


@dataclass
class Scan:
    """Every JSON candidate outside reasoning blocks, plus what failed to parse."""

    candidates: list[Parsed] = field(default_factory=list)
    failures: list[ParseFailure] = field(default_factory=list)  # only those that looked like JSON for a while
    reasoning: list[tuple[int, int]] = field(default_factory=list)
    inside_reasoning: bool = False  # the candidates were found only inside reasoning blocks


def reasoning_spans(text: str) -> list[tuple[int, int]]:
    spans = [(m.start(), m.end()) for m in _REASONING.finditer(text)]
    if not spans:
        close = _ORPHAN_CLOSE.search(text)
        if close:
            spans.append((0, close.end()))
    return spans


def _counts(value: Any, top_type: Any) -> bool:
    """Is this parsed value a plausible answer, or just brackets in prose like "[1]"?"""
    if isinstance(value, dict):
        return True
    if isinstance(value, list):
        if top_type == "array":
            return True
        return any(isinstance(v, dict) for v in value)
    return False


def _scan_range(text: str, lo: int, hi: int, top_type: Any, scan: Scan) -> None:
    pos = lo
    for m in _OPENERS.finditer(text, lo, hi):
        start = m.start()
        if start < pos:
            continue
        try:
            parsed = parse_at(text, start)
        except ParseFailure as exc:
            if exc.progress:  # kept without its traceback: thousands of live frames slow the GC down
                scan.failures.append(ParseFailure(exc.offset, exc.message, exc.progress, exc.start))
            if exc.message == TOO_DEEP:
                pos = exc.offset  # every start inside is at least as deep
            continue
        if _counts(parsed.value, top_type):
            scan.candidates.append(parsed)
        pos = parsed.end


def scan(text: str, top_type: Any) -> Scan:
    """Parse every candidate JSON value in `text`; candidates inside reasoning blocks count only if none is outside.

    Reasoning tags inside a strictly valid JSON value (a reply that mentions "</think>") are content, not tags;
    a lenient parse that runs across a tag (broken JSON inside a think block) is not trusted.
    """
    full = Scan()
    _scan_range(text, 0, len(text), top_type, full)
    raw_spans = reasoning_spans(text)
    if not raw_spans:
        return full
    if any(_crosses(c, raw_spans) and (c.notes or c.truncated) for c in full.candidates):
        out = Scan(reasoning=raw_spans)
        pos = 0
        for lo, hi in raw_spans:
            _scan_range(text, pos, lo, top_type, out)
            pos = hi
        _scan_range(text, pos, len(text), top_type, out)
        inner = Scan()
        for lo, hi in raw_spans:
            _scan_range(text, lo, hi, top_type, inner)
    else:
        spans = reasoning_spans(_blank(text, [(c.start, c.end) for c in full.candidates]))
        outside = [f for f in full.failures if not any(lo <= f.start < hi for lo, hi in spans)]
        out = Scan(failures=outside, reasoning=spans)
        inner = Scan()
        for c in full.candidates:
            (inner if any(lo <= c.start and c.end <= hi for lo, hi in spans) else out).candidates.append(c)
    if not out.candidates and inner.candidates:
        out.candidates = inner.candidates
        out.inside_reasoning = True
    return out


def _crosses(c: Parsed, spans: list[tuple[int, int]]) -> bool:
    return any(c.start < hi and c.end > lo and not (lo <= c.start and c.end <= hi) for lo, hi in spans)


def is_refusal(text: str) -> bool:
    return _REFUSAL.search(text[:600]) is not None


def prose_notes(text: str, chosen: Parsed, others: list[Parsed], reasoning: list[tuple[int, int]]) -> list[Note]:
    """Classify the text around the chosen candidate: fences, stray brackets, text before and after."""
    if not reasoning and not others and not (text[:chosen.start] + text[chosen.end:]).replace("\ufeff", " ").strip():
        return []  # nothing but whitespace around the JSON
    notes: list[Note] = []
    flat = _blank(text, [*reasoning, *((o.start, o.end) for o in others), (chosen.start, chosen.end)])
    flat = flat.replace("\ufeff", " ")  # a byte-order mark is not text
    fences = [m for m in _FENCE.finditer(flat) if m.group() != "`" or _touches(flat, m, chosen)]
    if fences:
        notes.append(("code_fence", fences[0].start(), fences[0].group().lstrip("`")))
        flat = _blank(flat, [m.span() for m in fences])
    before, after = flat[:chosen.start], flat[chosen.end:]
    stray_open = re.search(r"[{\[][\s{\[]*$", before)
    if stray_open:
        notes.append(("unbalanced_brackets", stray_open.start(), "stray " + stray_open.group().strip()[:1]))
        before = before[:stray_open.start()]
    stray_close = re.match(r"\s*[}\]][\s}\]]*", after)
    if stray_close:
        notes.append(("unbalanced_brackets", chosen.end + len(after) - len(after.lstrip()),
                      "stray " + stray_close.group().strip()[:1]))
        after = " " * stray_close.end() + after[stray_close.end():]
    lead = len(before) - len(before.lstrip())
    if before.strip():
        notes.append(("prefix_text", lead, _excerpt(before)))
    if after.strip():
        notes.append(("suffix_text", chosen.end + len(after) - len(after.lstrip()), _excerpt(after)))
    return notes


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each span (inside it) replaced by as many spaces."""
    for lo, hi in spans:
        text = f"{text[:lo]}{' ' * (hi - lo)}{text[hi:]}"
    return text


def _touches(flat: str, m: re.Match[str], chosen: Parsed) -> bool:
    if m.end() <= chosen.start:
        return flat[m.end():chosen.start].strip() == ""
    return flat[chosen.end:m.start()].strip() == ""


def _excerpt(text: str, limit: int = 60) -> str:
    s = " ".join(text.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
