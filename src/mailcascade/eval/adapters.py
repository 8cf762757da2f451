"""Adapters: public datasets (read from a path the user gives) -> eval cases.

Label-to-department mappings are TOML files (`LABEL = "department"`), reviewable in eval/mappings/.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Literal

from mailcascade.catalog import Passage
from mailcascade.config import read_toml
from mailcascade.errors import EvalError
from mailcascade.eval.cases import EvalCase, Expected, load_cases, make_case
from mailcascade.types import OUT_OF_SCOPE

Level = Literal["department", "label"]
HINT3_NONE = "NO_NODES_DETECTED"  # HINT3's label for "no intent matched": out of scope
MappingArg = Mapping[str, str] | str | Path


def load_mapping(path: str | Path, departments: Collection[str] | None = None) -> dict[str, str]:
    """Read a label -> department TOML file. With `departments`, every target must be one of them."""
    p = Path(path)
    raw = read_toml(p, EvalError, "label mapping")
    mapping: dict[str, str] = {}
    for label, target in raw.items():
        if not isinstance(target, str) or not target.strip():
            raise EvalError(f"{p}: {label!r} must map to a department name, e.g. {label} = \"general\"; "
                            f"got {target!r}")
        mapping[label] = target.strip()
    if not mapping:
        raise EvalError(f"{p}: the mapping is empty")
    if departments is not None:
        check_targets(mapping, departments, str(p))
    return mapping


def check_targets(mapping: Mapping[str, str], departments: Collection[str], source: str = "mapping") -> None:
    """Every department the mapping points at must be configured."""
    bad = sorted({t for t in mapping.values() if t not in departments})
    if bad:
        raise EvalError(f"{source}: maps to unknown department(s) {', '.join(bad)}; "
                        f"configured: {', '.join(departments)}")


def jsonl(path: str | Path) -> list[EvalCase]:
    """Cases already in the mailcascade case format (the held-out real data uses this)."""
    return load_cases(path)


def bitext(path: str | Path, mapping: MappingArg, *, split: str = "test") -> list[EvalCase]:
    """Bitext customer-service intents: body = utterance, department = mapping[category]."""
    table, source = _mapping(mapping)
    rows = list(_rows(path, ("utterance", "intent", "category")))
    _check_coverage({r["category"].strip() for _, r in rows}, table, source, path)
    cases = []
    for n, (where, row) in enumerate(rows, start=1):
        case_id = f"bitext-{split}-{n:04d}"
        cases.append(make_case(
            case_id, subject="", body=_text(row, "utterance", where), source=where, split=split,
            expected=Expected(department=table[row["category"].strip()]),
            meta={"intent": row["intent"].strip(), "category": row["category"].strip()},
        ))
    return cases


def hint3(
    path: str | Path, mapping: MappingArg | None = None, level: Level = "department", *, split: str = "test"
) -> list[EvalCase]:
    """HINT3 (sentence, label). level="department": mapping[label]; level="label": the raw label itself.

    NO_NODES_DETECTED is out_of_scope at either level. The mapping is required for level="department";
    for level="label" it is optional and only fills meta["department"].
    """
    if level not in ("department", "label"):
        raise EvalError(f"hint3: level must be 'department' or 'label', got {level!r}")
    if mapping is None and level == "department":
        raise EvalError("hint3: level 'department' needs a label -> department mapping")
    table, source = _mapping(mapping) if mapping is not None else ({}, "")
    rows = list(_rows(path, ("sentence", "label")))
    if mapping is not None:
        _check_coverage({r["label"].strip() for _, r in rows} - {HINT3_NONE}, table, source, path)
    cases = []
    for n, (where, row) in enumerate(rows, start=1):
        label = row["label"].strip()
        department = table.get(label, OUT_OF_SCOPE) if label == HINT3_NONE else table.get(label)
        meta = {"label": label}
        if department is not None:
            meta["department"] = department
        target = department if level == "department" else (OUT_OF_SCOPE if label == HINT3_NONE else label)
        cases.append(make_case(
            f"hint3-{split}-{n:04d}", subject="", body=_text(row, "sentence", where), source=where, split=split,
            expected=Expected(department=target), meta=meta,
        ))
    return cases


def epqa(path: str | Path, *, split: str = "dev") -> tuple[list[EvalCase], list[Passage]]:
    """ePQA: one case per question; the catalogue is every candidate passage.

    A passage id is `ASIN:hash(text)`, so the same passage offered for two questions on one product is one
    catalogue entry. relevant = passages graded >= 1 (the best grade when a text repeats);
    reference_reply = the answer on the best-graded candidate; meta["answers"] keeps them all.
    """
    groups: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for where, row in _rows(path, ("qid", "question", "ASIN", "candidate", "source", "title", "label", "answer")):
        groups.setdefault(row["qid"].strip(), []).append((where, row))
    passages: dict[str, Passage] = {}
    cases = []
    for qid, rows in groups.items():
        first_where, first = rows[0]
        asin, title = first["ASIN"].strip(), first["title"].strip()
        relevant: dict[str, int] = {}
        sources: dict[str, str] = {}
        answers: list[tuple[int, str]] = []
        for where, row in rows:
            if row["ASIN"].strip() != asin or row["question"] != first["question"]:
                raise EvalError(f"{where}: qid {qid} changes its question or ASIN within the group")
            grade = _grade(row["label"], where)
            candidate = row["candidate"].strip()
            if candidate:
                text = f"{row['title'].strip()}\n{candidate}"
                pid = f"{asin}:{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"
                passages.setdefault(pid, Passage(passage_id=pid, product_id=asin, text=text))
                sources[pid] = row["source"].strip()
                if grade >= 1:
                    relevant[pid] = max(grade, relevant.get(pid, 0))
            if row["answer"].strip():
                answers.append((grade, row["answer"].strip()))
        best = max(answers, key=lambda a: a[0])[1] if answers else None  # max keeps the first of equals
        cases.append(make_case(
            # a customer writing about a product names it; the subject carries the product title
            f"epqa-{qid}", subject=f"Question about {title}", body=_text(first, "question", first_where),
            source=first_where, split=split,
            expected=Expected(department="products", relevant=relevant, reference_reply=best),
            meta={"qid": qid, "asin": asin, "title": title, "answers": [a for _, a in answers],
                  "sources": sources},
        ))
    if not cases:
        raise EvalError(f"{path}: no rows")
    return cases, list(passages.values())


def _mapping(mapping: MappingArg) -> tuple[dict[str, str], str]:
    if isinstance(mapping, str | Path):
        return load_mapping(mapping), str(mapping)
    return dict(mapping), "the given mapping"


def _check_coverage(labels: set[str], table: Mapping[str, str], source: str, data: str | Path) -> None:
    missing = sorted(labels - set(table))
    if missing:
        raise EvalError(f"{source} does not map label(s) {', '.join(missing)} found in {data}; "
                        f"add a line such as {missing[0]} = \"general\" for each")


def _rows(path: str | Path, columns: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    """(file:line, row) for each CSV record; checks the header has `columns`."""
    p = Path(path)
    try:
        fh = p.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise EvalError(f"data file not found: {p}") from None
    with fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise EvalError(f"{p}: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}")
        line = reader.line_num + 1
        try:
            for row in reader:
                if None in row or any(row[c] is None for c in columns):
                    raise EvalError(f"{p}:{line}: wrong number of fields")
                yield f"{p}:{line}", row
                line = reader.line_num + 1
        except csv.Error as exc:
            raise EvalError(f"{p}:{reader.line_num}: bad CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise EvalError(f"{p}: not UTF-8 text ({exc.reason})") from None


def _text(row: Mapping[str, str], column: str, where: str) -> str:
    value = row[column].strip()
    if not value:
        raise EvalError(f"{where}: empty {column}")
    return value


def _grade(value: str, where: str) -> int:
    try:
        grade = int(value)
    except ValueError:
        raise EvalError(f"{where}: label must be an integer grade, got {value!r}") from None
    if grade < 0:
        raise EvalError(f"{where}: negative grade {grade}")
    return grade
