"""Where a router's out-of-scope threshold costs accuracy: the error analysis of the threshold itself.

A router with a threshold (embedding, trained) records per email the score it compared with the threshold and the
department it ranked first before the threshold applied (`oos_score`, `before_threshold`). From those the eval
splits routing errors into the threshold's own (an in-scope email rejected although the router had its department
right; an out-of-scope email let through) and the ranking's (a wrong department), and sweeps the threshold over
the eval set: accuracy with no threshold, and with the threshold that would have been best on these very cases.

That best threshold is chosen on the cases it is scored on: it is a ceiling that says how much of the gap a
better threshold could close, never a setting to copy (a threshold set from it is tuned on the eval set, and
`tuned_on` / `--tuned-on-eval` must say so).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mailcascade.router.calibrate import Scored, best_threshold
from mailcascade.types import OUT_OF_SCOPE

#: points of the accuracy-against-threshold curve kept for the report
CURVE_POINTS = 41


def threshold_analysis(gold: Sequence[str], pred: Sequence[str | None], before: Sequence[str],
                       scores: Sequence[float], labels: Sequence[str]) -> dict[str, Any]:
    """The threshold's error breakdown and sweep over routed cases (one gold, prediction, pre-threshold
    department and score each). A pre-threshold department of out_of_scope (a label learned from examples) is
    out of scope at any threshold."""
    n = len(gold)
    if not n or not len(pred) == len(before) == len(scores) == n:
        raise ValueError("threshold_analysis needs one prediction, pre-threshold department and score per case")
    valid = {*labels, OUT_OF_SCOPE}
    g = np.array(gold, dtype=object)
    b = np.array(before, dtype=object)
    p = np.array([x if x in valid else None for x in pred], dtype=object)
    s = np.asarray(scores, dtype=np.float64)
    gold_oos, pred_oos = g == OUT_OF_SCOPE, p == OUT_OF_SCOPE
    rejected = ~gold_oos & pred_oos & (b != OUT_OF_SCOPE)  # in scope, out of scope only by the threshold
    errors = {
        "in_scope_rejected": int((rejected & (b == g)).sum()),  # the router had it right; the threshold lost it
        "in_scope_rejected_wrong_anyway": int((rejected & (b != g)).sum()),
        "out_of_scope_accepted": int((gold_oos & ~pred_oos).sum()),
        "wrong_department": int((~gold_oos & ~pred_oos & (p != g)).sum()),
    }
    fixed = b == OUT_OF_SCOPE  # out of scope whatever the threshold
    swept = [Scored(float(x), bool(y == z), bool(o)) for x, y, z, o in zip(s[~fixed], b[~fixed], g[~fixed],
                                                                           gold_oos[~fixed], strict=True)]
    fixed_right = int((fixed & gold_oos).sum())
    threshold, share = best_threshold(swept) if swept else (None, 0.0)
    best_right = share * len(swept) + fixed_right
    return {
        "n": n,
        "accuracy": float((p == g).sum() / n),
        "no_threshold_accuracy": float(((b == g).sum()) / n),
        "errors": errors,
        "eval_best": {"threshold": threshold, "accuracy": round(float(best_right / n), 6),
                      **_split(g, b, s, threshold)},
        "curve": _curve(g, b, s, fixed),
        "what": "eval_best is chosen on these very cases: a ceiling for diagnosis, not a threshold to set",
    }


def _decide(b: np.ndarray, s: np.ndarray, threshold: float | None) -> np.ndarray:
    out = b.copy()
    if threshold is not None:
        out[s < threshold] = OUT_OF_SCOPE
    return out


def _split(g: np.ndarray, b: np.ndarray, s: np.ndarray, threshold: float | None) -> dict[str, float | None]:
    d = _decide(b, s, threshold)
    oos, ins = g == OUT_OF_SCOPE, g != OUT_OF_SCOPE
    return {"out_of_scope_recall": round(float((d[oos] == OUT_OF_SCOPE).mean()), 6) if oos.any() else None,
            "in_scope_accuracy": round(float((d[ins] == g[ins]).mean()), 6) if ins.any() else None}


def _curve(g: np.ndarray, b: np.ndarray, s: np.ndarray, fixed: np.ndarray) -> list[list[float]]:
    """[threshold, accuracy] at evenly spaced thresholds across the scores seen (all cases in scope at the
    lowest, every swept case out of scope just above the highest)."""
    if not (~fixed).any():
        return []
    lo, hi = float(s[~fixed].min()), float(s[~fixed].max())
    points = np.linspace(lo, hi + 1e-6, CURVE_POINTS) if hi > lo else np.array([lo, lo + 1e-6])
    return [[round(float(t), 6), round(float((_decide(b, s, float(t)) == g).mean()), 6)] for t in points]
