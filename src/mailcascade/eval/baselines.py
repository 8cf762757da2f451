"""Baselines scored beside the system: the majority class, an embedding nearest-neighbour router, and always
answering out_of_scope.

The first two learn only from the eval set's train split, the third from nothing, so together they show what a
system must beat to be worth its cost. The honest majority baseline is the stronger of the two constants.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mailcascade.catalog import EmbedderLike
from mailcascade.eval.cases import EvalCase
from mailcascade.eval.evalset import EvalSet
from mailcascade.stages.embed_route import EmbeddingRouter, email_text
from mailcascade.types import OUT_OF_SCOPE, RouteDecision

ALWAYS_OOS = "always_out_of_scope"


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


def baseline_predictions(
    eval_set: EvalSet, cases: Sequence[EvalCase], embedder: EmbedderLike, k: int
) -> tuple[dict[str, dict[str, str | None]], dict[str, str]]:
    """The majority class, the embedding k-NN router's label and always-out_of_scope for each case.

    With no train split, the majority is counted over the eval set and k-NN is leave-one-out over it; the second
    return value says where each baseline learned from.
    """
    labelled = [c for c in eval_set.cases if c.expected.department is not None]
    train = [c for c in eval_set.train if c.expected.department is not None]
    if not labelled:
        return {c.id: {} for c in cases}, {}
    learn = train or labelled
    router = EmbeddingRouter([email_text(c.email) for c in learn], [str(c.expected.department) for c in learn],
                             embedder, k, vectors=embedder.encode([email_text(c.email) for c in learn]))
    if train:
        decisions = router.predict_vectors(embedder.encode([email_text(c.email) for c in cases]))
        knn: dict[str, str | None] = {c.id: d.department for c, d in zip(cases, decisions, strict=True)}
        source = {"majority": "train split", "embedding_knn": "train split"}
    else:
        knn = ({c.id: d.department for c, d in zip(labelled, router.leave_one_out(), strict=True)}
               if len(labelled) > 1 else {})
        source = {"majority": "the eval set itself", "embedding_knn": "leave-one-out over the eval set"}
    majority = majority_label([str(c.expected.department) for c in learn])
    source[ALWAYS_OOS] = "nothing (a constant: every email is out of scope)"
    return {c.id: {"majority": majority, "embedding_knn": knn.get(c.id), ALWAYS_OOS: OUT_OF_SCOPE}
            for c in cases}, source


def strongest_constant(baselines: Mapping[str, Mapping[str, Any]]) -> tuple[str, float] | None:
    """The honest majority baseline: the better of the train-split majority and always out_of_scope (a train
    split without out-of-scope examples makes the first weak where most real traffic is out of scope)."""
    scored = [(name, float(baselines[name]["accuracy"])) for name in ("majority", ALWAYS_OOS)
              if isinstance((baselines.get(name) or {}).get("accuracy"), int | float)]
    return max(scored, key=lambda kv: kv[1]) if scored else None
