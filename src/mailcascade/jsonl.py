"""Reading JSONL files that a killed process may have left behind: complete lines, a torn last line, bad lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcascade.errors import MailcascadeError


@dataclass(frozen=True)
class JsonlContents:
    records: list[dict[str, Any]]
    complete_bytes: int  # length of the file up to the end of its last complete line
    torn: bool  # the file ends in a partial line (a process was killed while writing it)


def read_jsonl_records(path: Path, *, fix: str) -> JsonlContents:
    """The JSON objects of a JSONL file, one per complete line; nothing is changed on disk.

    A last line without its newline is a torn write and is left out (`torn`); cut it with `cut_torn_line` once the
    caller has decided to go on. A complete line that is not a JSON object raises MailcascadeError naming the file
    and line, with `fix` saying what to do.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return JsonlContents([], 0, False)
    except OSError as exc:
        raise MailcascadeError(f"cannot read {path}: {exc.strerror or exc}") from None
    end = data.rfind(b"\n") + 1
    records: list[dict[str, Any]] = []
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            value = None
        if not isinstance(value, dict):
            raise MailcascadeError(f"{path}:{number}: not a JSON record (a damaged line): {fix}")
        records.append(value)
    return JsonlContents(records, end, end < len(data))


def cut_torn_line(path: Path, contents: JsonlContents) -> None:
    """Drop the partial last line found by `read_jsonl_records`, so appends start on a fresh line."""
    if contents.torn:
        with path.open("r+b") as f:
            f.truncate(contents.complete_bytes)
