"""Read emails from .eml, JSON, JSONL and plain-text files (and directories of them) into `Email` objects.

`read_inputs` never raises for bad input: each unreadable input becomes an `EmailParseError` in the stream,
with `.source` naming the input ("data/x.jsonl:7" for line 7) and `.reason` saying what is wrong.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from email import policy
from email.errors import InvalidBase64LengthDefect
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path
from typing import Any, BinaryIO

from mailcascade.errors import EmailParseError
from mailcascade.html_text import html_to_text
from mailcascade.types import Email

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SNIFF_BYTES = 8192
_MAX_MIME_DEPTH = 20
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
_BINARY_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x19\x1c-\x1f]")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEADER_LINE = re.compile(rb"[!-9;-~]+:")
_KNOWN_HEADERS = frozenset(
    b"from to cc bcc subject date message-id mime-version received return-path content-type reply-to "
    b"delivered-to sender in-reply-to references x-mailer user-agent".split()
)
_ESCAPED_8BIT = re.compile("[\udc80-\udcff]")  # how the parser keeps undecoded 8-bit header bytes
_SUBJECT_LINE = re.compile(r"subject:[ \t]*(.*)", re.IGNORECASE)
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


# ---------------------------------------------------------------- reading paths


def read_inputs(paths: Sequence[str | Path], *, max_bytes: int) -> Iterator[Email | EmailParseError]:
    """Yield one `Email` or `EmailParseError` per email found in `paths`, in input order.

    Directories are walked recursively in sorted order, skipping hidden files and folders.
    A single input (a file, or one line of a JSONL file) larger than `max_bytes` is refused without being read.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = False
            for item in _walk(path, set()):
                found = True
                if isinstance(item, EmailParseError):
                    yield item
                else:
                    yield from _read_file_safely(item, max_bytes)
            if not found:
                yield EmailParseError("directory contains no files", str(path))
        elif path.exists() or path.is_symlink():
            yield from _read_file_safely(path, max_bytes)
        else:
            yield EmailParseError("no such file or directory", str(path))


def _walk(directory: Path, seen: set[Path]) -> Iterator[Path | EmailParseError]:
    real = directory.resolve()
    if real in seen:  # a symlink loop
        return
    seen.add(real)
    try:
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        yield EmailParseError(f"cannot list directory: {exc.strerror or exc}", str(directory))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry, seen)
        else:
            yield entry


def _read_file_safely(path: Path, max_bytes: int) -> Iterator[Email | EmailParseError]:
    source = str(path)
    try:
        yield from _read_file(path, source, max_bytes)
    except Exception as exc:  # a parser bug must not stop the batch; report it as this input's failure
        yield EmailParseError(f"could not be parsed ({type(exc).__name__}: {exc})", source)


def _read_file(path: Path, source: str, max_bytes: int) -> Iterator[Email | EmailParseError]:
    try:
        stat = path.stat()
    except OSError as exc:
        yield EmailParseError(f"cannot read file: {exc.strerror or exc}", source)
        return
    if not path.is_file():
        yield EmailParseError("not a regular file", source)
        return
    if stat.st_size == 0:
        yield EmailParseError("empty file", source)
        return
    suffix = path.suffix.lower()
    try:
        with path.open("rb") as handle:
            if suffix in JSONL_SUFFIXES:
                head = handle.read(_SNIFF_BYTES)
                handle.seek(0)
                yield from _read_jsonl(_stream_lines(handle, max_bytes), source, max_bytes, head)
                return
            if stat.st_size > max_bytes:
                yield _too_big(stat.st_size, max_bytes, "file", source)
                return
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        yield EmailParseError(f"cannot read file: {exc.strerror or exc}", source)
        return
    if len(data) > max_bytes:  # the file grew after stat
        yield _too_big(len(data), max_bytes, "file", source)
        return
    yield from _parse_file_bytes(data, suffix, source, max_bytes=max_bytes)


def _too_big(size: int, max_bytes: int, what: str, source: str) -> EmailParseError:
    return EmailParseError(f"{what} is {size:,} bytes, over the size limit of {max_bytes:,} bytes", source)


def _parse_file_bytes(data: bytes, suffix: str, source: str, *, max_bytes: int) -> Iterator[Email | EmailParseError]:
    """Parse the whole content of one file, choosing the format by `suffix` (".eml", ".json", ...) or by sniffing."""
    if not _strip_bom(data).strip():
        yield EmailParseError("empty file (only whitespace)", source)
        return
    suffix = suffix.lower()
    if suffix == ".eml":
        yield _attempt(parse_eml, data, source)
    elif suffix == ".json":
        yield from _parse_json_document(data, source, max_bytes)
    elif suffix in JSONL_SUFFIXES:
        yield from _read_jsonl(_split_lines(data), source, max_bytes, data[:_SNIFF_BYTES])
    elif _looks_binary(data):
        yield EmailParseError("binary file, not an email", source)
    elif suffix == ".txt":
        parser = parse_eml if _looks_like_headers(data, min_known=2) else parse_text
        yield _attempt(parser, data, source)
    else:
        yield from _sniff(data, source, max_bytes)


def _sniff(data: bytes, source: str, max_bytes: int) -> Iterator[Email | EmailParseError]:
    """Unknown extension: JSON, JSONL, RFC 822 headers, else plain text."""
    start = _strip_bom(data).lstrip()[:1]
    if start in (b"{", b"["):
        lines = [line.strip() for line in _strip_bom(data).splitlines() if line.strip()]
        try:
            json.loads(_decode_json(data))
        except (ValueError, RecursionError):
            if all(line.startswith(b"{") for line in lines):
                yield from _read_jsonl(_split_lines(data), source, max_bytes, data[:_SNIFF_BYTES])
                return
        else:
            yield from _parse_json_document(data, source, max_bytes)
            return
    parser = parse_eml if _looks_like_headers(data, min_known=1) else parse_text
    yield _attempt(parser, data, source)


def _attempt(parser: Callable[[bytes, str], Email], data: bytes, source: str) -> Email | EmailParseError:
    try:
        return parser(data, source)
    except EmailParseError as exc:
        return exc


# ---------------------------------------------------------------- JSON and JSONL


def _parse_json_document(data: bytes, source: str, max_bytes: int) -> Iterator[Email | EmailParseError]:
    if _looks_binary(data):
        yield EmailParseError("binary file, not an email", source)
        return
    try:
        value = json.loads(_decode_json(data))
    except UnicodeDecodeError as exc:
        yield EmailParseError(f"not valid UTF-8 text (bad byte at offset {exc.start})", source)
        return
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and _strip_bom(data).lstrip().startswith(b"{"):
            # several objects, one per line: really JSONL with a .json name
            yield from _read_jsonl(_split_lines(data), source, max_bytes, b"")
            return
        yield EmailParseError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", source)
        return
    except RecursionError:
        yield EmailParseError("invalid JSON: nested too deeply", source)
        return
    if isinstance(value, list):
        if not value:
            yield EmailParseError("no emails in file (the JSON list is empty)", source)
        for number, item in enumerate(value, start=1):
            yield _attempt_json(item, f"{source}#{number}")
    elif isinstance(value, dict):
        yield _attempt_json(value, source)
    else:
        yield EmailParseError(f"expected a JSON object or a list of objects, got {_json_type(value)}", source)


def _read_jsonl(
    lines: Iterable[tuple[int, bytes | int]], source: str, max_bytes: int, head: bytes
) -> Iterator[Email | EmailParseError]:
    """One email per line; blank lines skipped; a bad line gives one error and the rest continue."""
    if _looks_binary(head):
        yield EmailParseError("binary file, not an email", source)
        return
    emails = 0
    for number, line in lines:
        where = f"{source}:{number}"
        if isinstance(line, int):
            emails += 1
            yield _too_big(line, max_bytes, "line", where)
            continue
        if number == 1:
            line = _strip_bom(line)
        if not line.strip():
            continue
        emails += 1
        try:
            value = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield EmailParseError(f"line is not valid UTF-8 (bad byte at offset {exc.start})", where)
        except json.JSONDecodeError as exc:
            yield EmailParseError(f"invalid JSON: {exc.msg} at column {exc.colno}", where)
        except RecursionError:
            yield EmailParseError("invalid JSON: nested too deeply", where)
        else:
            yield _attempt_json(value, where)
    if not emails:
        yield EmailParseError("empty file (only blank lines)", source)


def _stream_lines(handle: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | int]]:
    """(line number, line) pairs; a line longer than max_bytes is skipped unread and given as its size."""
    number = 0
    while line := handle.readline(max_bytes + 1):
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            size = len(line)
            while chunk := handle.readline(1 << 16):
                size += len(chunk)
                if chunk.endswith(b"\n"):
                    break
            yield number, size
        else:
            yield number, line


def _split_lines(data: bytes) -> Iterator[tuple[int, bytes | int]]:
    yield from enumerate(data.split(b"\n"), start=1)


def _attempt_json(value: object, source: str) -> Email | EmailParseError:
    try:
        return parse_json_object(value, source)
    except EmailParseError as exc:
        return exc


def parse_json_object(obj: object, source: str) -> Email:
    """An `Email` from a decoded JSON object, flat or eval-case shaped; raises EmailParseError.

    Flat: {"id", "subject", "body", "from", "attachments"?, ...}; "text" and "sender" are accepted for body and from.
    Eval case: {"id", "email": {"subject", "body", "from"}, "expected": {...}, "meta": {...}}.
    "expected" and "meta" are kept in Email.meta under those keys; other unknown fields under "extra".
    """
    if not isinstance(obj, dict):
        raise EmailParseError(f"expected a JSON object, got {_json_type(obj)}", source)
    outer: dict[str, Any] = obj
    inner = outer.get("email")
    nested = isinstance(inner, dict)
    fields: dict[str, Any] = inner if isinstance(inner, dict) else outer
    email_id = _id_field(outer, source) or (_id_field(fields, source) if nested else "") or _default_id(source)
    subject = _normalise_subject(_text_field(fields, "subject", source))
    body = _normalise_text(_text_field(fields, "body", source) or _text_field(fields, "text", source))
    sender = _text_field(fields, "from", source) or _text_field(fields, "sender", source)
    attachments = fields.get("attachments") or []
    if not isinstance(attachments, list) or not all(isinstance(a, str) for a in attachments):
        raise EmailParseError("field 'attachments' must be a list of strings", source)
    if not subject and not body:
        raise EmailParseError("empty email (no subject and no body)", source)
    meta: dict[str, Any] = {key: outer[key] for key in ("expected", "meta") if key in outer}
    known = {"id", "subject", "body", "text", "from", "sender", "attachments", "email", "expected", "meta"}
    extra = {k: v for k, v in fields.items() if k not in known}
    if nested:
        extra.update({k: v for k, v in outer.items() if k not in known})
    if extra:
        meta["extra"] = extra
    return Email(email_id, subject, body, sender.strip(), source, tuple(attachments), meta)


def _text_field(fields: dict[str, Any], key: str, source: str) -> str:
    value = fields.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EmailParseError(f"field '{key}' must be a string, got {_json_type(value)}", source)
    return value


def _id_field(fields: dict[str, Any], source: str) -> str:
    value = fields.get("id")
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise EmailParseError(f"field 'id' must be a string or an integer, got {_json_type(value)}", source)
    return value.strip()


def _json_type(value: object) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _decode_json(data: bytes) -> str:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding)
    return data.decode("utf-8")


def _default_id(source: str) -> str:
    """File stem, plus the line (JSONL) or item number (JSON list): "orders-7"."""
    match = re.fullmatch(r"(.*?)[:#](\d+)", source)
    if match:
        return f"{Path(match.group(1)).stem}-{match.group(2)}"
    return Path(source).stem or "email"


# ---------------------------------------------------------------- plain text


def parse_text(data: bytes, source: str) -> Email:
    """Plain text: an optional first line "Subject: ...", the rest is the body. Raises EmailParseError."""
    if _looks_binary(data):
        raise EmailParseError("binary file, not an email", source)
    text, note = _decode_bytes(data, None)
    text = _normalise_text(text)
    subject = ""
    first, _, rest = text.partition("\n")
    match = _SUBJECT_LINE.fullmatch(first.strip())
    if match:
        subject, text = _normalise_subject(match.group(1)), rest
    body = _normalise_text(text)
    if not subject and not body:
        raise EmailParseError("empty email (no subject and no body)", source)
    meta: dict[str, Any] = {"warnings": [note]} if note else {}
    return Email(_default_id(source), subject, body, "", source, (), meta)


# ---------------------------------------------------------------- .eml (RFC 822 / MIME)


def parse_eml(data: bytes, source: str) -> Email:
    """An RFC 822/MIME message: text/plain preferred, else HTML as text; attachments noted. Raises EmailParseError."""
    data = _strip_bom(data).lstrip(b"\r\n")  # blank lines before the headers would end them at once
    message = BytesParser(policy=policy.default).parsebytes(data)
    if not message.keys():
        if _looks_binary(data):
            raise EmailParseError("binary file, not an email", source)
        raise EmailParseError(
            "no email headers found (an .eml file starts with headers such as From: and Subject:)", source
        )
    parts = _MimeParts(source)
    parts.collect(message, 0)
    plain = [text for text in parts.plain if text.strip()]
    html = [text for text in (html_to_text(h) for h in parts.html) if text.strip()]
    body = _normalise_text("\n\n".join(plain or html))
    subject = _normalise_subject(_header(message, "subject"))
    if not body and parts.undecodable:
        raise EmailParseError(f"broken MIME: the text body could not be decoded ({parts.undecodable[0]})", source)
    if not body and not subject:
        only = f" (only attachments: {', '.join(parts.attachments)})" if parts.attachments else ""
        raise EmailParseError(f"empty email (no subject and no text body{only})", source)
    warnings = list(dict.fromkeys(parts.notes))
    if not plain and html:
        warnings.append("body converted from HTML")
    message_id = _header(message, "message-id").strip().strip("<>").strip()
    email_id = message_id or _default_id(source)
    meta: dict[str, Any] = {"warnings": warnings} if warnings else {}
    sender = " ".join(_header(message, "from").split())
    return Email(email_id, subject, body, sender, source, tuple(parts.attachments), meta)


class _MimeParts:
    """Walks a message tree and sorts its leaves into plain bodies, HTML bodies and attachments."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[str] = []
        self.undecodable: list[str] = []
        self.notes: list[str] = []

    def collect(self, part: Message, depth: int) -> None:
        if depth > _MAX_MIME_DEPTH:
            raise EmailParseError(f"broken MIME: parts nested more than {_MAX_MIME_DEPTH} deep", self.source)
        ctype = part.get_content_type()
        if part.get_content_maintype() == "message":
            self.attachments.append(part.get_filename() or _attached_message_name(part))
        elif part.is_multipart():
            children = part.get_payload()
            if not isinstance(children, list) or not children:
                raise EmailParseError(f"broken MIME: {ctype} message has no parts", self.source)
            for child in children:
                if isinstance(child, Message):
                    self.collect(child, depth + 1)
        elif part.get_content_maintype() == "multipart":
            raise EmailParseError(
                f"broken MIME: the message says {ctype} but its parts cannot be found (missing or wrong boundary)",
                self.source,
            )
        elif _is_attachment(part) or ctype not in ("text/plain", "text/html"):
            self.attachments.append(part.get_filename() or f"unnamed {ctype}")
        else:
            self._add_text(part, ctype)

    def _add_text(self, part: Message, ctype: str) -> None:
        payload = part.get_payload(decode=True)
        if any(isinstance(d, InvalidBase64LengthDefect) for d in part.defects):
            self.undecodable.append(f"invalid base64 in the {ctype} part")
            return
        if not isinstance(payload, bytes):
            return
        raw = part.get_payload()
        base64 = str(part.get("content-transfer-encoding", "")).strip().lower() == "base64"
        if base64 and not payload.strip() and isinstance(raw, str) and raw.strip():
            self.undecodable.append(f"the {ctype} part decodes to nothing (invalid base64?)")
            return
        text, note = _decode_bytes(payload, part.get_content_charset())
        if note:
            self.notes.append(note)
        (self.html if ctype == "text/html" else self.plain).append(text)


def _attached_message_name(part: Message) -> str:
    inner = part.get_payload()
    if isinstance(inner, list) and inner and isinstance(inner[0], Message):
        subject = _normalise_subject(_header(inner[0], "subject"))
        if subject:
            return f"attached message: {subject}"
    return f"attached message ({part.get_content_type()})"


def _is_attachment(part: Message) -> bool:
    if isinstance(part, EmailMessage):
        return part.is_attachment()
    return part.get_content_disposition() == "attachment"


def _header(message: Message, name: str) -> str:
    raw = next((v for k, v in message.raw_items() if k.lower() == name), None)
    if isinstance(raw, str) and _ESCAPED_8BIT.search(raw):  # raw 8-bit bytes (not RFC 2047): decode them ourselves
        data = raw.encode("utf-8", "surrogateescape")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = _decode_bytes(data, _declared_charset(message))[0]
        try:
            return str(policy.default.header_fetch_parse(name, text))  # unfolds; decodes any RFC 2047 words too
        except Exception:  # a header the parser cannot read; its decoded raw text is the best there is
            return " ".join(text.split())
    try:
        value = message.get(name)
    except Exception:  # a malformed header the parser cannot fold; fall back to its raw text
        value = next((v for k, v in message.raw_items() if k.lower() == name), None)
    text = "" if value is None else str(value)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _declared_charset(message: Message) -> str | None:
    """The charset the message or its first text part declares (raw 8-bit headers are most likely in it)."""
    return next((c for part in message.walk() if part.get_content_maintype() == "text"
                 and (c := part.get_content_charset())), None)


def _looks_like_headers(data: bytes, *, min_known: int) -> bool:
    """True when the data starts with an RFC 822 header block naming at least `min_known` well-known fields."""
    lines = _strip_bom(data[:_SNIFF_BYTES]).lstrip(b"\r\n").splitlines()
    if lines and lines[0].startswith(b"From "):  # mbox envelope line
        lines = lines[1:]
    known = 0
    for index, line in enumerate(lines):
        if not line.strip():
            break
        if line[:1] in (b" ", b"\t") and index > 0:
            continue
        match = _HEADER_LINE.match(line)
        if not match:
            return False
        known += match.group(0)[:-1].lower() in _KNOWN_HEADERS
    return known >= min_known


# ---------------------------------------------------------------- decoding and normalising


def _decode_bytes(data: bytes, declared: str | None) -> tuple[str, str]:
    """Decode text in the declared charset, falling back sensibly; returns (text, note on any fallback).

    Order: BOM; the declared charset; UTF-8; the declared charset with replacement (non-UTF-8 charsets only);
    UTF-8 with replacement when the bytes look mostly UTF-8; Windows-1252; Latin-1.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding, "replace"), ""
    declared = (declared or "").strip().strip("\"'").lower() or None
    known = ""
    problem = ""
    if declared:
        try:
            return data.decode(declared), ""
        except LookupError:
            problem = f"unknown charset {declared!r}"
        except ValueError:  # UnicodeDecodeError and codec-specific errors
            problem = f"text is not valid {declared}"
            known = codecs.lookup(declared).name
    try:
        text = data.decode("utf-8")
        return text, f"{problem}; decoded as utf-8" if problem else ""
    except UnicodeDecodeError:
        pass
    prefix = f"{problem}; " if problem else ""
    if known and known not in ("ascii", "utf-8"):
        return data.decode(known, "replace"), f"{prefix}undecodable bytes replaced"
    if _UTF8_MULTIBYTE.search(data):
        return data.decode("utf-8", "replace"), f"{prefix}decoded as utf-8, undecodable bytes replaced"
    try:
        return data.decode("cp1252"), f"{prefix}decoded as windows-1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), f"{prefix}decoded as latin-1"


def _normalise_text(text: str) -> str:
    """Strip a BOM and control characters, use \\n newlines, strip trailing whitespace and outer blank lines."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in _CONTROL_CHARS.sub("", text).split("\n")]
    return "\n".join(lines).strip("\n")


def _normalise_subject(subject: str) -> str:
    return " ".join(_CONTROL_CHARS.sub("", subject.removeprefix("\ufeff")).split())


def _strip_bom(data: bytes) -> bytes:
    for bom, _ in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :]
    return data


def _looks_binary(data: bytes) -> bool:
    """NUL bytes or many control bytes near the start, unless a UTF-16/32 BOM explains them."""
    sample = data[:_SNIFF_BYTES]
    if any(sample.startswith(bom) for bom, _ in _BOMS):
        return False
    if b"\x00" in sample:
        return True
    return len(_BINARY_CONTROL.findall(sample)) > max(2, len(sample) // 50)
