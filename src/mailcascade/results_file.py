"""The `--out` file of `mailcascade run`: locked while written, never lost, resumable.

While a run works, each finished record is appended (in completion order) to a journal beside the output,
`OUT.partial`, which is locked so that a second run on the same `--out` fails at once. When the run ends, or is
interrupted by SIGINT/SIGTERM, the records are written in input order to a temporary file that replaces `OUT`, and
the journal is removed. A run killed outright (SIGKILL, a crash) leaves the journal; `--resume` continues from it and
from `OUT`, skipping every input that already has a complete record (infrastructure errors, such as a dead model
server, are run again). `OUT` itself is only ever replaced whole, never truncated before a run starts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from mailcascade.errors import EmailParseError, MailcascadeError
from mailcascade.jsonl import cut_torn_line, read_jsonl_records
from mailcascade.types import Email

Key = tuple[str, str]  # (id, source): an input's identity across runs


def record_key(record: dict[str, Any]) -> Key:
    return str(record.get("id", "")), str(record.get("source", ""))


def input_key(item: Email | EmailParseError) -> Key:
    """The key the record of this input will have (see `pipeline.parse_failure` for unreadable inputs)."""
    if isinstance(item, Email):
        return item.id, item.source
    return item.source or "unknown", item.source


def is_complete(record: dict[str, Any]) -> bool:
    """A record that a resumed run keeps: a result, or a failure that running again would not change.

    A failure caused by the infrastructure (no answer from the model: a timeout, a refused connection, an open
    circuit breaker) is not complete: running again may succeed.
    """
    if record.get("status") == "ok":
        return True
    return not any(s.get("status") == "error" for s in record.get("stages") or [])


class ResultsFile:
    """Where a run's records go. Use as a context manager; `put` may be called from any thread."""

    def __init__(self, path: str | Path, *, resume: bool = False) -> None:
        self.path = Path(path)
        self.journal = self.path.with_name(self.path.name + ".partial")
        self._lock = threading.Lock()
        self._closed = False
        self._written: dict[Key, tuple[int, int]] = {}  # key -> (offset, length) in the journal
        self._previous: dict[Key, bytes] = {}
        self._failed: set[Key] = set()  # keys whose record (earlier or new) is a failure
        if self.path.is_dir():
            raise MailcascadeError(f"--out {self.path} is a folder: give a file name, "
                                   f"e.g. {self.path / 'results.jsonl'}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: a write that fails leaves nothing behind to be flushed later
            self._file: BinaryIO = open(self.journal, "a+b", buffering=0)  # noqa: SIM115 (held, and locked)
        except OSError as exc:
            raise MailcascadeError(f"cannot write --out {self.path}: {exc.strerror or exc} "
                                   f"({exc.filename or self.path}); choose a writable place") from None
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise MailcascadeError(f"--out {self.path} is being written by another mailcascade run: wait for it, or "
                                   "choose another --out") from None
        self._load(resume)

    def _load(self, resume: bool) -> None:
        fix = f"delete that line (its email will be run again with --resume) or remove {self.journal}"
        journal = read_jsonl_records(self.journal, fix=fix)
        if (journal.records or journal.torn) and not resume:
            self._file.close()
            raise MailcascadeError(f"{self.journal} holds {len(journal.records)} records of a run that did not finish: "
                                   f"add --resume to continue it, or delete {self.journal.name}")
        if not resume:
            return
        out = read_jsonl_records(self.path, fix=f"delete that line, or remove {self.path} to start over")
        for record in out.records + journal.records:  # the journal is newer
            line = json.dumps(record, ensure_ascii=False).encode("utf-8")
            key = record_key(record)
            self._failed.discard(key)
            if is_complete(record):
                self._previous[key] = line
                if record.get("status") != "ok":
                    self._failed.add(key)
        cut_torn_line(self.journal, journal)
        self._file.seek(0, os.SEEK_END)

    def done(self, key: Key) -> bool:
        """True when the input with this key already has a complete record from an earlier run (--resume)."""
        return key in self._previous

    @property
    def n_previous(self) -> int:
        return len(self._previous)

    def put(self, key: Key, line: str, *, failed: bool = False) -> None:
        """Append one record to the journal; a failed write leaves no partial line and raises MailcascadeError."""
        data = (line + "\n").encode("utf-8")
        with self._lock:
            if self._closed:
                return  # interrupted: this email is run again by --resume
            offset = self._file.seek(0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    n = self._file.write(view)
                    if not n:
                        raise OSError(errno.ENOSPC, "no byte written")
                    view = view[n:]
            except OSError as exc:
                with contextlib.suppress(OSError):
                    self._file.truncate(offset)
                raise self._write_error(exc, self.journal) from None
            self._written[key] = (offset, len(data))
            if failed:
                self._failed.add(key)
            else:
                self._failed.discard(key)

    def failed_among(self, keys: Sequence[Key]) -> int:
        """How many of these inputs have a failure record (this run's or a kept one)."""
        return sum(key in self._failed for key in keys)

    def finish(self, keys: Sequence[Key]) -> int:
        """Write OUT in input order from this run's and earlier records, then drop the journal; returns the count.

        Inputs with no record yet (an interrupted run) are left out; `--resume` runs them.
        """
        with self._lock:
            self._closed = True
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            count = 0
            try:
                with open(tmp, "wb") as out:
                    for key in keys:
                        line = self._line(key)
                        if line is not None:
                            out.write(line)
                            count += 1
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise self._write_error(exc, self.path) from None
            self.journal.unlink(missing_ok=True)
            self._file.close()
            return count

    def close(self) -> None:
        """Release the lock, keeping the journal (after an error, for --resume)."""
        with self._lock:
            self._closed = True
            with contextlib.suppress(OSError):
                self._file.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, key: Key) -> bytes | None:
        if key in self._written:
            offset, length = self._written[key]
            self._file.seek(offset)
            return self._file.read(length)
        line = self._previous.get(key)
        return line + b"\n" if line is not None else None

    def _write_error(self, exc: OSError, where: Path) -> MailcascadeError:
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else exc.strerror
        return MailcascadeError(f"cannot write {where}: {reason or exc}; the {len(self._written)} records written so "
                                f"far are complete in {self.journal}: free space, then run again with --resume")


class OrderedStream:
    """`--out -`: records on stdout in input order as soon as a prefix is complete (no journal, no resume)."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self._out = out
        self._pending: dict[int, str] = {}
        self._next = 0
        self._lock = threading.Lock()

    def put(self, position: int, line: str) -> None:
        with self._lock:
            self._pending[position] = line
            while self._next in self._pending:
                self._out.write(self._pending.pop(self._next) + "\n")
                self._next += 1
            self._out.flush()

    def flush_all(self) -> None:
        """After an interrupt: write what is waiting, in input order, gaps and all."""
        with self._lock:
            for position in sorted(self._pending):
                self._out.write(self._pending.pop(position) + "\n")
            self._out.flush()
