"""Eval cases: the JSONL case format, strict loading, and writing.

One JSON object per line::

    {"id": "e001",
     "email": {"subject": "...", "body": "...", "from": "a@example.com"},
     "expected": {"department": "orders",
                  "relevant": ["P024"] | [{"id": "P024", "grade": 2}] | {"P024": 2},
                  "reference_reply": "..."},
     "meta": {...},
     "split": "test"}

`from`, every `expected` key, `meta` and `split` are optional. Blank lines are skipped; any other bad
line, and any duplicate id, is an EvalError naming the file and line: eval sets must be clean.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailcascade.errors import EvalError
from mailcascade.types import Email

_CASE_KEYS = {"id", "email", "expected", "meta", "split"}
_EMAIL_KEYS = {"subject", "body", "from"}
_EXPECTED_KEYS = {"department", "relevant", "reference_reply"}


@dataclass(frozen=True)
class Expected:
    """What a human decided for one case. Any part may be absent."""

    department: str | None = None
    relevant: Mapping[str, int] = field(default_factory=dict)  # product or passage id -> grade (1 when ungraded)
    reference_reply: str | None = None


@dataclass(frozen=True)
class EvalCase:
    """One email to run through the cascade, with what a human expected."""

    id: str
    email: Email
    expected: Expected
    meta: Mapping[str, Any] = field(default_factory=dict)
    split: str = "test"


def make_case(
    case_id: str,
    *,
    subject: str,
    body: str,
    expected: Expected,
    sender: str = "",
    source: str = "",
    meta: Mapping[str, Any] | None = None,
    split: str = "test",
) -> EvalCase:
    """Build a case whose Email carries the case id."""
    email = Email(id=case_id, subject=subject, body=body, sender=sender, source=source)
    return EvalCase(id=case_id, email=email, expected=expected, meta=dict(meta or {}), split=split)


def load_cases(path: str | Path) -> list[EvalCase]:
    """Read a JSONL cases file. Raises EvalError (file:line) on any bad line or duplicate id."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise EvalError(f"cases file not found: {p}") from None
    except UnicodeDecodeError as exc:
        raise EvalError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise EvalError(f"{p}: cannot read cases file: {exc.strerror or exc}") from None
    cases: list[EvalCase] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        case = case_from_json(record, where)
        if case.id in first_line:
            raise EvalError(f"{where}: duplicate case id {case.id!r} (first on line {first_line[case.id]})")
        first_line[case.id] = number
        cases.append(case)
    if not cases:
        raise EvalError(f"{p}: no cases in file")
    return cases


def case_from_json(record: Any, where: str = "case") -> EvalCase:
    """One case from its JSON object. `where` prefixes every error message."""
    if not isinstance(record, dict):
        raise EvalError(f"{where}: expected a JSON object, got {_kind(record)}")
    _no_unknown(record, _CASE_KEYS, where, "case")
    case_id = _id(record.get("id"), f"{where}: id")
    email = record.get("email")
    if not isinstance(email, dict):
        raise EvalError(f"{where}: email must be an object with subject and body, got {_kind(email)}")
    _no_unknown(email, _EMAIL_KEYS, where, "email")
    subject = _string(email, "subject", f"{where}: email.subject", required=True) or ""
    body = _string(email, "body", f"{where}: email.body", required=True) or ""
    if not subject.strip() and not body.strip():
        raise EvalError(f"{where}: email has an empty subject and an empty body")
    sender = _string(email, "from", f"{where}: email.from") or ""
    expected = _expected(record.get("expected", {}), where)
    meta = record.get("meta", {})
    if not isinstance(meta, dict):
        raise EvalError(f"{where}: meta must be an object, got {_kind(meta)}")
    split = _string(record, "split", f"{where}: split") or "test"
    return make_case(case_id, subject=subject, body=body, sender=sender, source=where,
                     expected=expected, meta=meta, split=split)


def case_to_json(case: EvalCase) -> dict[str, Any]:
    """The JSON object for one case; `case_from_json` reads it back to an equal case (source aside)."""
    email: dict[str, Any] = {"subject": case.email.subject, "body": case.email.body}
    if case.email.sender:
        email["from"] = case.email.sender
    expected: dict[str, Any] = {}
    if case.expected.department is not None:
        expected["department"] = case.expected.department
    if case.expected.relevant:
        grades = dict(case.expected.relevant)
        if all(g == 1 for g in grades.values()):
            expected["relevant"] = list(grades)
        else:
            expected["relevant"] = [{"id": k, "grade": g} for k, g in grades.items()]
    if case.expected.reference_reply is not None:
        expected["reference_reply"] = case.expected.reference_reply
    out: dict[str, Any] = {"id": case.id, "email": email, "expected": expected}
    if case.meta:
        out["meta"] = dict(case.meta)
    if case.split != "test":
        out["split"] = case.split
    return out


def write_cases(path: str | Path, cases: Iterable[EvalCase]) -> None:
    """Write cases as JSONL (UTF-8, one case per line)."""
    p = Path(path)
    lines = [json.dumps(case_to_json(c), ensure_ascii=False, sort_keys=False) for c in cases]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _expected(value: Any, where: str) -> Expected:
    if not isinstance(value, dict):
        raise EvalError(f"{where}: expected must be an object, got {_kind(value)}")
    _no_unknown(value, _EXPECTED_KEYS, where, "expected")
    department = _string(value, "department", f"{where}: expected.department")
    if department is not None and not department.strip():
        raise EvalError(f"{where}: expected.department is empty; omit it or use null")
    relevant = _relevant(value.get("relevant", []), f"{where}: expected.relevant")
    reply = _string(value, "reference_reply", f"{where}: expected.reference_reply")
    return Expected(department=department, relevant=relevant, reference_reply=reply)


def _relevant(value: Any, where: str) -> dict[str, int]:
    pairs: list[tuple[Any, Any]]
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                extra = sorted(set(item) - {"id", "grade"})
                if "id" not in item or extra:
                    raise EvalError(f"{where}[{i}]: expected {{\"id\", \"grade\"}}, got keys {sorted(item)}")
                pairs.append((item["id"], item.get("grade", 1)))
            else:
                pairs.append((item, 1))
    else:
        raise EvalError(f"{where}: expected a list of ids, a list of {{id, grade}} or an object id -> grade, "
                        f"got {_kind(value)}")
    out: dict[str, int] = {}
    for raw_id, grade in pairs:
        key = _id(raw_id, f"{where}: id")
        if isinstance(grade, bool) or not isinstance(grade, int) or grade < 1:
            raise EvalError(f"{where}: grade of {key!r} must be an integer >= 1 (list only relevant ids), "
                            f"got {grade!r}")
        if key in out:
            raise EvalError(f"{where}: id {key!r} listed twice")
        out[key] = grade
    return out


def _id(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise EvalError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _string(record: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    if key not in record:
        if required:
            raise EvalError(f"{where}: missing")
        return None
    value = record[key]
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise EvalError(f"{where}: expected a string, got {_kind(value)}")
    return value


def _no_unknown(record: Mapping[str, Any], known: set[str], where: str, what: str) -> None:
    unknown = sorted(set(record) - known)
    if unknown:
        raise EvalError(f"{where}: unknown {what} key(s) {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(sorted(known))}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
