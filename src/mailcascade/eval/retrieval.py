"""Retrieval metrics: recall@k, hit rate@k, precision@k, nDCG@k (graded) and MRR.

Conventions:
- `relevant` maps an id to a relevance grade; only ids with grade > 0 are relevant. A case without any is not
  scored (it is counted in "n_without_relevant").
- Retrieved ids may repeat (several passages of one product): each id counts once, at its first (0-based)
  position; later repeats still take up rank positions.
- precision@k = distinct relevant ids in the top k / k (k, not the number retrieved).
- nDCG@k uses gains 2^grade - 1 and discounts 1 / log2(position + 2); the ideal DCG sorts the case's grades.
- MRR uses the first relevant id anywhere in the retrieved list (0 when none was retrieved).
Invariants: every value lies in [0, 1]; recall@k and hit rate@k never fall as k grows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_KS = (1, 3, 5, 10)


def _check_ks(ks: Sequence[int]) -> list[int]:
    out = sorted(set(ks))
    if not out or any(not isinstance(k, int) or k < 1 for k in out):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    return out


def first_positions(retrieved: Sequence[str]) -> dict[str, int]:
    """Each distinct id with the position of its first occurrence."""
    seen: dict[str, int] = {}
    for pos, item in enumerate(retrieved):
        seen.setdefault(item, pos)
    return seen


def retrieval_case(
    relevant: Mapping[str, int], retrieved: Sequence[str], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float] | None:
    """Scores for one case ({"recall@1": ..., "mrr": ...}); None when the case has no relevant id."""
    grades = {item: g for item, g in relevant.items() if g > 0}
    if not grades:
        return None
    found = {item: pos for item, pos in first_positions(retrieved).items() if item in grades}
    ideal = sorted(grades.values(), reverse=True)
    out: dict[str, float] = {}
    for k in _check_ks(ks):
        top = [item for item, pos in found.items() if pos < k]
        dcg = sum((2 ** grades[item] - 1) / math.log2(found[item] + 2) for item in top)
        idcg = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
        out[f"recall@{k}"] = len(top) / len(grades)
        out[f"hit_rate@{k}"] = 1.0 if top else 0.0
        out[f"precision@{k}"] = len(top) / k
        out[f"ndcg@{k}"] = min(1.0, dcg / idcg)  # min: float rounding only
    out["mrr"] = 1.0 / (min(found.values()) + 1) if found else 0.0
    return out


def retrieval_metrics(
    relevant: Sequence[Mapping[str, int]], retrieved: Sequence[Sequence[str]], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, Any]:
    """Mean retrieval scores over the cases that have relevant ids.

    Returns ks, n_cases, n_scored, n_without_relevant, mrr and, for each k, "recall@k", "hit_rate@k",
    "precision@k" and "ndcg@k". Every mean is None when no case could be scored.
    """
    if len(relevant) != len(retrieved):
        raise ValueError(f"relevant and retrieved differ in length: {len(relevant)} vs {len(retrieved)}")
    ks = _check_ks(ks)
    scored = [s for s in (retrieval_case(r, h, ks) for r, h in zip(relevant, retrieved, strict=True)) if s]
    keys = [f"{name}@{k}" for k in ks for name in ("recall", "hit_rate", "precision", "ndcg")] + ["mrr"]
    out: dict[str, Any] = {
        "ks": ks,
        "n_cases": len(relevant),
        "n_scored": len(scored),
        "n_without_relevant": len(relevant) - len(scored),
    }
    for key in keys:
        out[key] = sum(s[key] for s in scored) / len(scored) if scored else None
    return out
