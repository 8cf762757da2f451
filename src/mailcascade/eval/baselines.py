"""Baselines scored beside the system: the majority class, always answering out_of_scope, an embedding
nearest-neighbour router and a logistic regression on the same embeddings.

The learners learn only from the eval set's train split, the constants from it or from nothing, so together they
show what a system must beat to be worth its cost. The honest majority baseline is the stronger of the two
constants. The logistic regression is a different learner from the k-NN router: when the system under test *is* the
embedding router (same examples, same k), the k-NN baseline just repeats the system, and the regression is the
independent second opinion the diagnosis uses (label noise, difficulty).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mailcascade.catalog import EmbedderLike
from mailcascade.eval.cases import EvalCase
from mailcascade.eval.evalset import EvalSet
from mailcascade.router.logreg import LogisticRegression
from mailcascade.stages.embed_route import EmbeddingRouter, email_text
from mailcascade.types import OUT_OF_SCOPE, RouteDecision

ALWAYS_OOS = "always_out_of_scope"
#: baselines that answer one label whatever the email (the honest majority baseline is the stronger one)
CONSTANT_BASELINES = ("majority", ALWAYS_OOS)
#: baselines that learn from the embeddings, and the learner each is (the diagnosis never takes a baseline as a
#: second opinion on a system that is the same learner)
LEARNED_BASELINES = {"embedding_knn": "knn", "embedding_logreg": "logreg"}


def majority_label(train_labels: Sequence[str]) -> str:
    """The most frequent label; ties go to the alphabetically first, so the answer never depends on order."""
    if not train_labels:
        raise ValueError("the majority-class baseline needs at least one training label")
    counts = Counter(train_labels)
    return min(counts, key=lambda label: (-counts[label], label))


def majority_class(train_labels: Sequence[str], n: int) -> list[str]:
    """The most frequent training label, predicted for each of n cases."""
    return [majority_label(train_labels)] * n


def embedding_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    test_texts: Sequence[str],
    embedder: EmbedderLike,
    k: int = 5,
) -> list[RouteDecision]:
    """k-NN routing of test_texts by the labelled train_texts (see `EmbeddingRouter`)."""
    return EmbeddingRouter(train_texts, train_labels, embedder, k).predict(test_texts)


def _cross_fitted_logreg(vectors: np.ndarray, labels: Sequence[str], folds: int = 5) -> list[RouteDecision]:
    """Each row's decision by a regression fitted on the other folds (no row ever sees its own label)."""
    n = len(labels)
    out: list[RouteDecision | None] = [None] * n
    for f in range(min(folds, n)):
        test = [i for i in range(n) if i % folds == f]
        train = [i for i in range(n) if i % folds != f]
        if not train:
            continue
        model = LogisticRegression(vectors[train], [labels[i] for i in train])
        for i, d in zip(test, model.predict_vectors(vectors[test]), strict=True):
            out[i] = d
    return [d for d in out if d is not None]


@dataclass(frozen=True)
class Baselines:
    """Per case id: each baseline's label and (for the learners) its confidence; and where each learned from."""

    labels: dict[str, dict[str, str | None]] = field(default_factory=dict)
    confidence: dict[str, dict[str, float | None]] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)


def baseline_predictions(eval_set: EvalSet, cases: Sequence[EvalCase], embedder: EmbedderLike, k: int) -> Baselines:
    """The majority class, the embedding k-NN router and the embedding logistic regression for each case.

    All learn from the train split. With no train split, the majority is counted over the eval set, k-NN is
    leave-one-out over it and the regression is cross-fitted over it (5 folds); `source` says which.
    """
    labelled = [c for c in eval_set.cases if c.expected.department is not None]
    train = [c for c in eval_set.train if c.expected.department is not None]
    if not labelled:
        return Baselines({c.id: {} for c in cases}, {c.id: {} for c in cases}, {})
    learn = train or labelled
    learn_labels = [str(c.expected.department) for c in learn]
    learn_vectors = embedder.encode([email_text(c.email) for c in learn])
    router = EmbeddingRouter([email_text(c.email) for c in learn], learn_labels, embedder, k, vectors=learn_vectors)
    knn: dict[str, RouteDecision] = {}
    logreg: dict[str, RouteDecision] = {}
    if train:
        vectors = embedder.encode([email_text(c.email) for c in cases])
        knn = dict(zip((c.id for c in cases), router.predict_vectors(vectors), strict=True))
        model = LogisticRegression(learn_vectors, learn_labels)
        logreg = dict(zip((c.id for c in cases), model.predict_vectors(vectors), strict=True))
        source = {"majority": "train split", "embedding_knn": "train split", "embedding_logreg": "train split"}
    else:
        if len(labelled) > 1:
            knn = dict(zip((c.id for c in labelled), router.leave_one_out(), strict=True))
            logreg = dict(zip((c.id for c in labelled), _cross_fitted_logreg(learn_vectors, learn_labels),
                              strict=True))
        source = {"majority": "the eval set itself", "embedding_knn": "leave-one-out over the eval set",
                  "embedding_logreg": "cross-fitted over the eval set (5 folds)"}
    source[ALWAYS_OOS] = "nothing (a constant: every email is out of scope)"
    majority = majority_label(learn_labels)
    labels: dict[str, dict[str, str | None]] = {}
    confidence: dict[str, dict[str, float | None]] = {}
    for c in cases:
        a, b = knn.get(c.id), logreg.get(c.id)
        labels[c.id] = {"majority": majority, "embedding_knn": a.department if a else None,
                        "embedding_logreg": b.department if b else None, ALWAYS_OOS: OUT_OF_SCOPE}
        confidence[c.id] = {"embedding_knn": a.confidence if a else None,
                            "embedding_logreg": b.confidence if b else None}
    return Baselines(labels, confidence, source)


def strongest_constant(baselines: Mapping[str, Mapping[str, Any]]) -> tuple[str, float] | None:
    """The honest majority baseline: the better of the train-split majority and always out_of_scope (a train
    split without out-of-scope examples makes the first weak where most real traffic is out of scope)."""
    scored = [(name, float(baselines[name]["accuracy"])) for name in ("majority", ALWAYS_OOS)
              if isinstance((baselines.get(name) or {}).get("accuracy"), int | float)]
    return max(scored, key=lambda kv: kv[1]) if scored else None
