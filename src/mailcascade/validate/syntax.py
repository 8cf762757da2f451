"""Parse one JSON value starting at an offset: strict first, then a lenient parser that records every repair.

The lenient parser accepts exactly the JSON grammar plus the dialects models produce (single or curly
quotes, unquoted keys, trailing or missing commas, comments, Python literals, NaN, raw control characters,
bad escapes, unescaped inner quotes, stray or missing brackets) and a text that ends inside a value.
On valid JSON it yields the same value as `json.loads`.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

Note = tuple[str, int, str]  # code, offset, detail
MAX_DEPTH = 200
TOO_DEEP = "nested too deeply"

_WS = frozenset(" \t\n\r\ufeff\u00a0")
_WS_RUN = re.compile("[ \t\n\r\ufeff\u00a0]+")
_CLOSE_AFTER = frozenset(",:}]/#\"")
_PLAIN = {
    '"': re.compile(r'[^"\\\x00-\x1f]*'),
    "'": re.compile(r"[^'\\\x00-\x1f]*"),
    "\u201c": re.compile("[^\u201c\u201d\\\\\x00-\x1f]*"),
    "\u2018": re.compile("[^\u2018\u2019\\\\\x00-\x1f]*"),
}
_CLOSERS = {'"': '"', "'": "'", "\u201c": "\u201c\u201d", "\u2018": "\u2018\u2019",
            "\u201d": "\u201c\u201d", "\u2019": "\u2018\u2019"}
_QUOTE_KEY = {"\u201d": "\u201c", "\u2019": "\u2018"}
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_PARTIAL_NUMBER = re.compile(r"[-+.eE0-9]*")
_IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$\-]*")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS: dict[str, tuple[Any, str]] = {
    "true": (True, ""), "false": (False, ""), "null": (None, ""),
    "True": (True, "python_literal"), "False": (False, "python_literal"), "None": (None, "python_literal"),
    "NaN": (float("nan"), "non_finite_number"), "nan": (float("nan"), "non_finite_number"),
    "Infinity": (float("inf"), "non_finite_number"), "inf": (float("inf"), "non_finite_number"),
}
_VALUE_START = frozenset('{["\'\u201c\u2018-0123456789') | frozenset("tfnTFNI")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


@functools.lru_cache(maxsize=1)
def _decoder() -> json.JSONDecoder:
    return json.JSONDecoder(parse_constant=_reject_constant)


@dataclass
class Parsed:
    """One JSON value found in a text, with the repairs that were needed to read it."""

    value: Any
    start: int
    end: int
    notes: list[Note] = field(default_factory=list)
    truncated: bool = False


class ParseFailure(Exception):
    """The text at `start` is not JSON, even leniently. `progress` says it looked like JSON for a while."""

    def __init__(self, offset: int, message: str, progress: bool, start: int = 0) -> None:
        super().__init__(f"offset {offset}: {message}")
        self.start = start
        self.offset = offset
        self.message = message
        self.progress = progress


class _Cut(Exception):
    """The text ended inside a token that cannot be completed (a key, a partial literal or number)."""


def parse_at(text: str, start: int) -> Parsed:
    """Parse the value at `start` strictly if possible, else leniently. Raises ParseFailure."""
    try:
        value, end = _decoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        pass
    else:
        return Parsed(value, start, end)
    return _Lenient(text, start).run()


class _Lenient:
    def __init__(self, text: str, start: int) -> None:
        self.s = text
        self.n = len(text)
        self.i = start
        self.start = start
        self.notes: list[Note] = []
        self.truncated = False
        self.progress = False
        self.closers: list[str] = []

    def run(self) -> Parsed:
        try:
            value = self.value()
        except _Cut:
            raise ParseFailure(self.i, "text ends inside the first token", self.progress, self.start) from None
        return Parsed(value, self.start, self.i, self.notes, self.truncated)

    def fail(self, message: str) -> ParseFailure:
        return ParseFailure(self.i, message, self.progress, self.start)

    def note(self, code: str, offset: int, detail: str = "") -> None:
        self.notes.append((code, offset, detail))

    def ws(self) -> None:
        s, n = self.s, self.n
        while self.i < n:
            c = s[self.i]
            if c in _WS:
                run = _WS_RUN.match(s, self.i)
                self.i = run.end() if run else self.i + 1
            elif (c == "/" and s.startswith("//", self.i)) or c == "#":
                self.note("comments", self.i)
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end + 1
            elif c == "/" and s.startswith("/*", self.i):
                self.note("comments", self.i)
                end = s.find("*/", self.i + 2)
                if end < 0:
                    self.i = n
                    self.truncated = True
                else:
                    self.i = end + 2
            else:
                return

    def value(self) -> Any:
        self.ws()
        if self.i >= self.n:
            raise _Cut
        c = self.s[self.i]
        if c == "{":
            return self.container("}")
        if c == "[":
            return self.container("]")
        if c in _CLOSERS:
            return self.string()
        if c == "-" or c.isdigit():
            return self.number()
        if c.isalpha() or c in "_$":
            return self.literal()
        raise self.fail(f"unexpected {c!r}")

    def number(self) -> Any:
        s, i = self.s, self.i
        if s.startswith("-I", i) or s.startswith("-i", i):
            self.i += 1
            value = self.literal()
            return -value
        m = _NUMBER.match(s, i)
        if not m:
            if _PARTIAL_NUMBER.fullmatch(s, i):
                raise _Cut
            raise self.fail("bad number")
        end = m.end()
        if end >= self.n:
            self.truncated = True
        elif _PARTIAL_NUMBER.fullmatch(s, end):
            raise _Cut
        elif s[end].isalnum() or s[end] in "._":
            raise self.fail("bad number")
        self.i = end
        text = m.group()
        return float(text) if any(ch in text for ch in ".eE") else int(text)

    def literal(self) -> Any:
        m = _IDENT.match(self.s, self.i)
        if not m:
            raise self.fail("bad literal")
        word = m.group()
        if word in _LITERALS:
            value, code = _LITERALS[word]
            if code:
                self.note(code, self.i, word)
            self.i = m.end()
            return value
        if m.end() >= self.n and any(lit.startswith(word) for lit in _LITERALS):
            raise _Cut
        raise self.fail(f"unquoted value {word!r}")

    def string(self) -> str:
        s, n = self.s, self.n
        opener = s[self.i]
        opener = _QUOTE_KEY.get(opener, opener)
        closers = _CLOSERS[opener]
        plain = _PLAIN[opener]
        if opener != '"':
            self.note("single_quotes", self.i, "curly quotes" if opener in "\u201c\u2018" else "")
        self.i += 1
        parts: list[str] = []
        while True:
            m = plain.match(s, self.i)
            if m is not None:  # always: the pattern matches the empty string
                parts.append(m.group())
                self.i = m.end()
            if self.i >= n:
                self.truncated = True
                return "".join(parts)
            c = s[self.i]
            if c in closers:
                j = self.i + 1
                while j < n and s[j] in _WS:
                    j += 1
                if j >= n or s[j] in _CLOSE_AFTER or s[j] in _CLOSERS:
                    self.i += 1
                    return "".join(parts)
                if opener == '"':
                    self.note("unescaped_quote", self.i)
                parts.append(c)
                self.i += 1
            elif c == "\\":
                parts.append(self.escape(opener))
            else:
                self.note("control_char", self.i, f"U+{ord(c):04X}")
                parts.append(c)
                self.i += 1

    def escape(self, opener: str) -> str:
        s, i = self.s, self.i
        if i + 1 >= self.n:
            self.i = self.n
            self.truncated = True
            return ""
        c = s[i + 1]
        if c in _ESCAPES:
            self.i = i + 2
            return _ESCAPES[c]
        if c == "u":
            hexa = s[i + 2:i + 6]
            if len(hexa) == 4 and all(h in "0123456789abcdefABCDEF" for h in hexa):
                code = int(hexa, 16)
                self.i = i + 6
                if 0xD800 <= code <= 0xDBFF and s.startswith("\\u", self.i):
                    low = s[self.i + 2:self.i + 6]
                    if len(low) == 4 and all(h in "0123456789abcdefABCDEF" for h in low):
                        low_code = int(low, 16)
                        if 0xDC00 <= low_code <= 0xDFFF:
                            self.i += 6
                            return chr(0x10000 + ((code - 0xD800) << 10) + (low_code - 0xDC00))
                return chr(code)
            if i + 6 > self.n:
                self.i = self.n
                self.truncated = True
                return ""
        self.i = i + 2
        if c == "'" or (opener != '"' and c == opener):
            if opener == '"':
                self.note("invalid_escape", i, "\\'")
            return c
        self.note("invalid_escape", i, "\\" + c)
        return "\\" + c

    def key(self) -> str:
        c = self.s[self.i]
        if c in _CLOSERS:
            key = self.string()
            self.progress = True
            return key
        m = _IDENT.match(self.s, self.i)
        if not m:
            raise self.fail(f"expected a key, got {c!r}")
        if m.end() >= self.n:
            raise _Cut
        self.note("unquoted_key", self.i, m.group())
        self.i = m.end()
        return m.group()

    def container(self, closer: str) -> Any:
        if len(self.closers) >= MAX_DEPTH:
            raise ParseFailure(self.i, TOO_DEEP, self.progress, self.start)
        is_obj = closer == "}"
        out_obj: dict[str, Any] = {}
        out_arr: list[Any] = []
        self.i += 1
        self.closers.append(closer)
        expect_item = True
        first = True
        comma_at = -1
        try:
            while True:
                self.ws()
                if self.i >= self.n:
                    self.truncated = True
                    return out_obj if is_obj else out_arr
                c = self.s[self.i]
                if c in "}]":
                    if c != closer:
                        if c in self.closers[:-1]:
                            self.note("unbalanced_brackets", self.i, f"missing {closer}")
                            return out_obj if is_obj else out_arr
                        rest = self.s[self.i + 1:].strip()
                        self.note("unbalanced_brackets", self.i, f"stray {c}")
                        self.i += 1
                        if not rest:
                            return out_obj if is_obj else out_arr
                        continue
                    if expect_item and not first:
                        self.note("trailing_comma", comma_at)
                    self.i += 1
                    return out_obj if is_obj else out_arr
                if not expect_item:
                    if c == ",":
                        comma_at = self.i
                        self.i += 1
                        expect_item = True
                        continue
                    if c in _VALUE_START or (is_obj and (c.isalpha() or c in "_$")):
                        self.note("missing_comma", self.i)
                    else:
                        raise self.fail(f"expected , or {closer}")
                elif c == ",":
                    raise self.fail("unexpected ,")
                if is_obj:
                    self.member(out_obj)
                else:
                    try:
                        out_arr.append(self.value())
                    except _Cut:
                        self.truncated = True
                        self.i = self.n
                        return out_arr
                    self.progress = True
                expect_item = False
                first = False
        finally:
            self.closers.pop()

    def member(self, out: dict[str, Any]) -> None:
        try:
            key = self.key()
            self.ws()
            if self.i >= self.n:
                raise _Cut
            if self.s[self.i] != ":":
                raise self.fail("expected :")
            self.i += 1
            self.progress = True
            out[key] = self.value()
        except _Cut:
            self.truncated = True
            self.i = self.n
