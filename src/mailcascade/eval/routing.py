"""Routing metrics: accuracy, macro-F1, per-label scores, a confusion matrix with invalid and out-of-scope columns.

Conventions (all values are JSON-serialisable; an undefined value is None, never NaN):
- A prediction that is None (the stage gave no valid output) or not a configured label counts as "invalid": it
  is wrong, it is a false negative for the gold label, and a false positive for no label.
- `out_of_scope` is always an allowed prediction: when it is not among `labels` it gets its own row and column.
- Gold labels outside the configured set (a mapping error, most likely) get rows of their own and are listed
  under "unknown_gold_labels"; they can never be predicted correctly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mailcascade.eval.stats import percentile_interval, resample_indices
from mailcascade.types import OUT_OF_SCOPE

INVALID = "invalid"


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def routing_metrics(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> dict[str, Any]:
    """Score routing decisions against gold departments.

    Returns n, n_invalid, invalid_rate, accuracy, macro_f1 (mean F1 over labels with gold support > 0),
    per_label {label: precision, recall, f1, support, predicted}, confusion {labels (rows), columns, matrix},
    out_of_scope_recall (None without out-of-scope gold), in_scope_accuracy (None without in-scope gold) and
    unknown_gold_labels. precision is None for a label never predicted, recall for a label never in gold, f1
    (= 2TP / (2TP + FP + FN)) for a label neither predicted nor in gold.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} vs {len(pred)}")
    if len(set(labels)) != len(labels) or INVALID in labels:
        raise ValueError(f"labels must be unique and must not include {INVALID!r}: {list(labels)}")
    valid = list(labels) if OUT_OF_SCOPE in labels else [*labels, OUT_OF_SCOPE]
    valid_set = set(valid)
    columns = [*labels, INVALID] if OUT_OF_SCOPE in labels else [*labels, INVALID, OUT_OF_SCOPE]
    unknown_gold = sorted({g for g in gold if g not in valid_set})
    rows = valid + unknown_gold
    row_of = {label: i for i, label in enumerate(rows)}
    col_of = {label: i for i, label in enumerate(columns)}
    matrix = [[0] * len(columns) for _ in rows]
    correct = n_invalid = 0
    for g, p in zip(gold, pred, strict=True):
        col = p if p is not None and p in valid_set else INVALID
        n_invalid += col == INVALID
        correct += col != INVALID and col == g
        matrix[row_of[g]][col_of[col]] += 1

    per_label: dict[str, dict[str, Any]] = {}
    for label in rows:
        tp = matrix[row_of[label]][col_of[label]] if label in col_of else 0
        support = sum(matrix[row_of[label]])
        predicted = sum(row[col_of[label]] for row in matrix) if label in col_of else 0
        per_label[label] = {
            "precision": _ratio(tp, predicted),
            "recall": _ratio(tp, support),
            "f1": _ratio(2 * tp, support + predicted),
            "support": support,
            "predicted": predicted,
        }
    f1s = [s["f1"] for s in per_label.values() if s["support"] > 0]

    oos = [p == OUT_OF_SCOPE for g, p in zip(gold, pred, strict=True) if g == OUT_OF_SCOPE]
    in_scope = [p == g and p in valid_set for g, p in zip(gold, pred, strict=True) if g != OUT_OF_SCOPE]
    return {
        "n": len(gold),
        "n_invalid": n_invalid,
        "invalid_rate": _ratio(n_invalid, len(gold)),
        "accuracy": _ratio(correct, len(gold)),
        "macro_f1": sum(f1s) / len(f1s) if f1s else None,
        "per_label": per_label,
        "confusion": {"labels": rows, "columns": columns, "matrix": matrix},
        "out_of_scope_recall": _ratio(sum(oos), len(oos)),
        "in_scope_accuracy": _ratio(sum(in_scope), len(in_scope)),
        "unknown_gold_labels": unknown_gold,
    }


def routing_correct(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> list[bool]:
    """Per-case correctness with the same rules as `routing_metrics` (for bootstrap, McNemar and flips)."""
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} vs {len(pred)}")
    valid_set = {*labels, OUT_OF_SCOPE}
    return [p is not None and p in valid_set and p == g for g, p in zip(gold, pred, strict=True)]


def accuracy(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> float | None:
    """Share of correct predictions (None when there are no cases); handy as a `bootstrap_metric` function."""
    flags = routing_correct(gold, pred, labels)
    return sum(flags) / len(flags) if flags else None


def macro_f1(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> float | None:
    """Macro-F1 over gold labels present (see `routing_metrics`); handy as a `bootstrap_metric` function."""
    value: float | None = routing_metrics(gold, pred, labels)["macro_f1"]
    return value


def bootstrap_routing(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str], *, n: int = 1000,
                      alpha: float = 0.05, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of `accuracy` and `macro_f1`, the same replicates as
    `bootstrap_metric(accuracy, gold, pred)` would draw (same seed, same indices), computed on every replicate's
    confusion matrix at once with numpy instead of one Python call per replicate. Raises ValueError when empty."""
    if not len(gold):
        raise ValueError("bootstrap_routing needs at least one case")
    full = routing_metrics(gold, pred, labels)
    rows, columns = full["confusion"]["labels"], full["confusion"]["columns"]
    row_of = {label: i for i, label in enumerate(rows)}
    col_of = {label: i for i, label in enumerate(columns)}
    invalid = col_of[INVALID]
    g = np.array([row_of[x] for x in gold])
    c = np.array([col_of[x] if x is not None and x in col_of and x != INVALID else invalid for x in pred])
    cells = g * len(columns) + c
    # the label of row i as a column (its true positives and predictions), or -1 for an unknown gold label
    own = np.array([col_of.get(label, -1) for label in rows])
    accuracy_reps, f1_reps = [], []
    for idx in resample_indices(len(gold), n, seed):
        reps = idx.shape[0]
        flat = (np.arange(reps)[:, None] * (len(rows) * len(columns)) + cells[idx]).ravel()
        m = np.bincount(flat, minlength=reps * len(rows) * len(columns)).reshape(reps, len(rows), len(columns))
        known = own >= 0
        tp = np.zeros((reps, len(rows)))
        tp[:, known] = m[:, np.flatnonzero(known), own[known]]
        support = m.sum(axis=2)
        predicted = np.zeros((reps, len(rows)))
        predicted[:, known] = m.sum(axis=1)[:, own[known]]
        present = support > 0
        f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), 0.0)
        accuracy_reps.append(tp.sum(axis=1) / len(gold))
        f1_reps.append(f1.sum(axis=1) / present.sum(axis=1))
    return {"accuracy": percentile_interval(np.concatenate(accuracy_reps), float(full["accuracy"]), alpha),
            "macro_f1": percentile_interval(np.concatenate(f1_reps), float(full["macro_f1"]), alpha)}
