"""HTML to readable plain text, with the standard library's html.parser only."""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

# Elements whose content is never shown to a reader.
_SKIP = frozenset({"script", "style", "title", "noscript", "template", "svg", "object", "iframe"})
# Elements that start a new paragraph (a blank line before and after).
_PARAGRAPH = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "ul", "ol", "dl", "pre", "hr", "figure"}
)
# Elements that start a new line.
_BLOCK = frozenset(
    {
        "div", "section", "article", "header", "footer", "main", "nav", "aside", "address", "form",
        "fieldset", "tr", "dt", "dd", "figcaption", "caption", "center", "body", "html", "details", "summary",
    }
)  # fmt: skip
_CELL = frozenset({"td", "th"})
# Invisible characters common in marketing HTML: zero-width space, word joiner, BOM, soft hyphen.
_INVISIBLE = str.maketrans("", "", "\u200b\u2060\ufeff\u00ad\u034f")
_TAG = re.compile(r"<[^>]*>")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.pending = 0  # newlines owed before the next visible text
        self.skip_depth = 0
        self.pre_depth = 0

    def _break(self, newlines: int) -> None:
        """Ask for at least `newlines` line breaks before the next text (block edges do not add up)."""
        self.pending = max(self.pending, newlines)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip_depth += 1
        elif tag == "br":
            self.pending += 1  # each <br> is one more line break
        elif tag == "li":
            self._break(1)
            self._text("- ")
        elif tag in _PARAGRAPH:
            self._break(2)
            if tag == "pre":
                self.pre_depth += 1
        elif tag in _BLOCK:
            self._break(1)
        elif tag in _CELL:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _PARAGRAPH:
            self._break(2)
            if tag == "pre":
                self.pre_depth = max(0, self.pre_depth - 1)
        elif tag in _BLOCK or tag == "li":
            self._break(1)
        elif tag in _CELL:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        data = data.translate(_INVISIBLE).replace("\xa0", " ")
        if self.pre_depth:
            self._text(data.replace("\r\n", "\n").replace("\r", "\n"))
        elif data.strip():
            self._text(re.sub(r"\s+", " ", data))
        elif data and not self.pending:
            self.parts.append(" ")

    def _text(self, text: str) -> None:
        if self.pending:
            self.parts.append("\n" * self.pending)
            self.pending = 0
        self.parts.append(text)


def _tidy(text: str) -> str:
    """Collapse spaces within lines and runs of blank lines; strip the ends."""
    lines: list[str] = []
    for raw in text.split("\n"):
        line = " ".join(raw.split())
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def html_to_text(html: str) -> str:
    """Readable text from HTML: no scripts or styles, line breaks at blocks and <br>, entities unescaped."""
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError, IndexError):
        # html.parser can still trip on some malformed markup; fall back to stripping tags.
        return _tidy(unescape(_TAG.sub(" ", html)).translate(_INVISIBLE).replace("\xa0", " "))
    return _tidy("".join(parser.parts))
