"""The out-of-scope threshold, chosen on the training examples only.

A router says out_of_scope when its score for an email (the similarity of the nearest example, or the head's
probability) is below a threshold. The threshold is chosen by cross-validation over the examples, holding out
whole labels: in fold f the labels of group f play "out of scope" (the router never saw them), and a share of
the other labels' examples plays "in scope". Optional negative examples (`route.negative_examples_path`, texts
that belong to no department) are out-of-scope test items in every fold and never training data. The chosen
threshold maximises label-level accuracy over every fold's test items: an out-of-scope item is right when its score
is below the threshold, an in-scope item when its score is at or above it and the predicted label is right.

No eval data is involved anywhere: the folds are made from the examples alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: sources of a threshold: chosen here ("cv"), set by hand in the configuration, or none (never out of scope)
SOURCES = ("cv", "hand-set", "off")


@dataclass(frozen=True)
class Fold:
    train: tuple[int, ...]  # example positions the fold's router learns from
    test: tuple[int, ...]  # in-scope test examples (their labels are among the train labels)
    held_out: tuple[int, ...]  # examples of the held-out labels: pseudo out of scope


@dataclass(frozen=True)
class Scored:
    """One test item of a fold: the router's score and whether its label would be right if accepted."""

    score: float
    correct: bool  # the predicted label equals the gold label (False for every out-of-scope item)
    out_of_scope: bool


@dataclass(frozen=True)
class Calibration:
    """How a router decides out_of_scope, and what cross-validation on the examples says about it."""

    threshold: float | None  # in scope when score >= threshold; None: never out of scope
    source: str  # one of SOURCES
    score: str = "similarity"  # what is compared with the threshold: "similarity" or "probability"
    cv_accuracy: float | None = None  # label-level accuracy of the folds' test items at the chosen threshold
    cv_in_scope_accuracy: float | None = None  # accuracy on the in-scope test items, before any threshold
    cv_out_of_scope_recall: float | None = None
    folds: int = 0
    n_test: int = 0
    n_pseudo_out_of_scope: int = 0
    n_negatives: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def label_folds(labels: Sequence[str], folds: int = 5, seed: int = 0) -> list[Fold]:
    """`folds` folds that each hold out a group of whole labels and a stratified share of the others' examples.

    Labels are shuffled (stable for a seed) and dealt into groups; within a label, every `folds`-th example (by
    position) is a test example of one fold. Needs at least two labels; with fewer labels than folds there are as
    many folds as labels.
    """
    names = sorted(set(labels))
    if len(names) < 2:
        raise ValueError("out-of-scope calibration needs examples of at least two labels")
    k = max(2, min(folds, len(names)))
    random.Random(seed).shuffle(names)
    group = {label: i % k for i, label in enumerate(names)}
    rank: dict[int, int] = {}
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        rank[i] = seen.get(label, 0)
        seen[label] = rank[i] + 1
    out = []
    for f in range(k):
        held = tuple(i for i, label in enumerate(labels) if group[label] == f)
        rest = [i for i, label in enumerate(labels) if group[label] != f]
        test = tuple(i for i in rest if rank[i] % k == f)
        train = tuple(i for i in rest if rank[i] % k != f)
        out.append(Fold(train=train, test=test, held_out=held))
    return out


def best_threshold(items: Sequence[Scored]) -> tuple[float | None, float]:
    """The threshold that maximises accuracy over `items`, and that accuracy.

    Candidates are the midpoints between consecutive distinct scores (and "never out of scope"); among equally
    good ones the middle of the best run is taken, so the choice does not sit on an edge of the data.
    """
    if not items:
        return None, 0.0
    scores = np.array([s.score for s in items], dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    oos = np.array([s.out_of_scope for s in items])[order]
    right = np.array([s.correct and not s.out_of_scope for s in items])[order]
    # threshold between position j-1 and j: items [0, j) are called out of scope, [j, n) keep their label
    n = len(items)
    oos_below = np.concatenate([[0], np.cumsum(oos)])  # out-of-scope items among the first j
    right_above = np.concatenate([np.cumsum(right[::-1])[::-1], [0]])  # right in-scope items from j on
    accuracy = (oos_below + right_above) / n
    cuts = [j for j in range(n + 1) if j in (0, n) or sorted_scores[j - 1] < sorted_scores[j]]
    best = max(float(accuracy[j]) for j in cuts)
    winners = [j for j in cuts if float(accuracy[j]) == best]
    j = winners[len(winners) // 2]
    if j == 0:
        return None, best  # nothing below: never out of scope
    if j == n:
        return float(sorted_scores[-1]) + 1e-6, best
    return float((sorted_scores[j - 1] + sorted_scores[j]) / 2), best


def calibrate(
    labels: Sequence[str], fold_scores: Callable[[Fold], tuple[list[Scored], list[Scored]]], *,
    folds: int = 5, seed: int = 0, score: str = "similarity",
) -> Calibration:
    """Choose the threshold by label-held-out cross-validation.

    `fold_scores(fold)` fits a router on `fold.train` and returns the scored in-scope test items (`fold.test`
    plus the pseudo out-of-scope `fold.held_out`) and the scored negative examples (may be empty).
    """
    plan = label_folds(labels, folds, seed)
    items: list[Scored] = []
    negatives = 0
    for fold in plan:
        if not fold.train:  # one label (or too few to hold one out): nothing to fit, no threshold from this fold
            continue
        scored, negative = fold_scores(fold)
        items.extend(scored)
        items.extend(negative)
        negatives = len(negative)
    return summarise(items, folds=len(plan), negatives=negatives, score=score)


def summarise(items: Sequence[Scored], *, folds: int, negatives: int, score: str) -> Calibration:
    """The calibration that the scored cross-validation items give."""
    threshold, accuracy = best_threshold(items)
    in_scope = [s for s in items if not s.out_of_scope]
    oos = [s for s in items if s.out_of_scope]
    recall = (sum(threshold is not None and s.score < threshold for s in oos) / len(oos)) if oos else None
    return Calibration(
        threshold=threshold, source="cv", score=score, cv_accuracy=round(accuracy, 6),
        cv_in_scope_accuracy=round(sum(s.correct for s in in_scope) / len(in_scope), 6) if in_scope else None,
        cv_out_of_scope_recall=round(recall, 6) if recall is not None else None,
        folds=folds, n_test=len(items), n_pseudo_out_of_scope=len(oos) - negatives * folds,
        n_negatives=negatives,
    )
