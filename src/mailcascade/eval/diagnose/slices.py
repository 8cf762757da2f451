"""Weak slices: groups of cases (department, length, language, order number, product) where the system does
much worse than overall.

Email text is not in the records; language and order-number slices need it, from `texts` (case id -> text) or
from record["meta"] ("text", or "subject" and "body"). Without text those slices are left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mailcascade.eval.diagnose.alarms import Alarm, Record, gold_department, route_correct
from mailcascade.eval.stats import bootstrap_ci

ORDER_NUMBER = re.compile(
    r"\b(?:order|purchase|invoice|ord)\b\W{0,4}(?:no\b\.?|number|num|id|#)?\W{0,3}[a-z]{0,3}-?\d{3,}"
    r"|#\s?\d{3,}|\b[a-z]{2,4}-\d{4,}\b|\b\d{6,}\b|\{\{\s*order\s+(?:number|id)\s*\}\}",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]+")
EN_STOPWORDS = frozenset((
    "the", "a", "an", "and", "or", "but", "is", "are", "was", "were", "be", "been", "i", "my", "me", "you",
    "your", "we", "our", "it", "this", "that", "to", "of", "in", "on", "for", "with", "at", "from", "by", "have",
    "has", "had", "do", "does", "did", "not", "can", "could", "would", "will", "please", "how", "what", "when",
    "where", "why", "there", "here", "am"
))
OTHER_STOPWORDS = frozenset((
    "el", "la", "los", "las", "de", "que", "y", "en", "un", "una", "es", "por", "para", "con", "mi", "le", "les",
    "des", "et", "est", "pour", "avec", "je", "une", "der", "die", "das", "und", "ist", "nicht", "ich", "mit",
    "ein", "eine", "zu", "hai", "ka", "ki", "ke", "mera", "meri", "mere", "kya", "nahi", "kab", "ho", "ko",
    "mujhe", "aap", "kar", "kaise", "bhi", "raha", "rahi", "kyu"
))


def guess_language(text: str) -> str:
    """"en", "other" or "unknown", by counting stopwords of English and of a few other languages."""
    words = [w.lower() for w in _WORD.findall(text)]
    en = sum(w in EN_STOPWORDS for w in words)
    other = sum(w in OTHER_STOPWORDS for w in words)
    if en == 0 and other == 0:
        return "unknown"
    return "en" if en >= other else "other"


def record_text(record: Record, texts: Mapping[str, str] | None = None) -> str | None:
    """The email text of a record: from `texts`, else from its meta; None when unknown."""
    if texts is not None and str(record["id"]) in texts:
        return texts[str(record["id"])]
    meta = record.get("meta") or {}
    if isinstance(meta.get("text"), str):
        return str(meta["text"])
    parts = [str(meta[k]) for k in ("subject", "body") if isinstance(meta.get(k), str)]
    return "\n".join(parts) if parts else None


def _retrieval_score(record: Record, key: str) -> float | None:
    scores = (record.get("scores") or {}).get("retrieval")
    value = scores.get(key) if isinstance(scores, Mapping) else None
    return float(value) if isinstance(value, int | float) else None


def slice_keys(records: Sequence[Record], texts: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Per case id, the slices it belongs to ("department=orders", "length=short (<= 80 chars)", ...)."""
    lengths = np.asarray([float(r.get("email_chars") or 0) for r in records])
    cuts = np.quantile(lengths, [1 / 3, 2 / 3]) if len(lengths) else np.zeros(2)
    out: dict[str, list[str]] = {}
    for r, length in zip(records, lengths, strict=True):
        keys = []
        gold = gold_department(r)
        if gold is not None:
            keys.append(f"department={gold}")
        if length <= cuts[0]:
            keys.append(f"length=short (<= {cuts[0]:.0f} chars)")
        elif length <= cuts[1]:
            keys.append(f"length=medium ({cuts[0]:.0f}-{cuts[1]:.0f} chars)")
        else:
            keys.append(f"length=long (> {cuts[1]:.0f} chars)")
        text = record_text(r, texts)
        if text is not None:
            keys.append(f"language={guess_language(text)}")
            keys.append(f"order_number={'yes' if ORDER_NUMBER.search(text) else 'no'}")
        keys.append(f"product_mentioned={'yes' if r['expected'].get('relevant') else 'no'}")
        out[str(r["id"])] = keys
    return out


def _metrics() -> dict[str, Callable[[Record], float | None]]:
    def routing(r: Record) -> float | None:
        ok = route_correct(r)
        return None if ok is None else float(ok)

    return {"route_accuracy": routing, "recall@5": lambda r: _retrieval_score(r, "recall@5")}


def slice_table(
    records: Sequence[Record], texts: Mapping[str, str] | None = None, *, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per (slice, metric): n, mean, bootstrap CI, the overall mean and the ids of the cases that failed.

    Metrics: route_accuracy (scores.route_correct) and recall@5 (scores.retrieval). A case failed when its
    score is below 1 (wrong department; not every relevant item in the top 5).
    """
    keys = slice_keys(records, texts)
    rows: list[dict[str, Any]] = []
    for metric, score in _metrics().items():
        values = {str(r["id"]): score(r) for r in records}
        present = {i: v for i, v in values.items() if v is not None}
        if not present:
            continue
        overall = float(np.mean(list(present.values())))
        members: dict[str, list[str]] = {}
        for case_id in present:
            for key in keys[case_id]:
                members.setdefault(key, []).append(case_id)
        for key in sorted(members):
            ids = members[key]
            vals = [present[i] for i in ids]
            low, high = bootstrap_ci(vals, seed=seed)
            rows.append({"slice": key, "metric": metric, "n": len(ids), "mean": float(np.mean(vals)),
                         "ci": [low, high], "overall": overall,
                         "failed": [i for i in ids if present[i] < 1.0]})
    return rows


def weak_slices(
    records: Sequence[Record], texts: Mapping[str, str] | None = None, *, min_n: int = 5, min_gap: float = 0.1,
    seed: int = 0,
) -> list[Alarm]:
    """Slices with n >= `min_n` whose mean is at least `min_gap` below overall, with the slice's bootstrap
    interval entirely below the overall mean. One alarm per weak (slice, metric), naming its failed cases."""
    alarms = []
    for row in slice_table(records, texts, seed=seed):
        if row["n"] < min_n or row["overall"] - row["mean"] < min_gap or row["ci"][1] >= row["overall"]:
            continue
        alarms.append(Alarm(
            "weak_slice", "warn",
            f"{row['metric']} on {row['slice']}: {row['mean']:.2f} vs {row['overall']:.2f} overall (n={row['n']})",
            "The system does much worse on this group of cases than overall, beyond what chance explains. A weak "
            "department often lacks a clear description or examples in the prompt, or overlaps another one; weak "
            "long or non-English emails point at truncation or at a model that struggles with the language; "
            "emails with order numbers or product names may need retrieval or extraction help. Read the failed "
            "cases of the slice together: they usually share one cause.",
            tuple(row["failed"]), {k: v for k, v in row.items() if k != "failed"},
        ))
    return alarms
