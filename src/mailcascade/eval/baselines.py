"""Baselines scored beside the system: the majority class and an embedding nearest-neighbour router.

Both learn only from the eval set's train split, so they show what a system must beat to be worth its cost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from mailcascade.catalog import EmbedderLike
from mailcascade.stages.embed_route import EmbeddingRouter
from mailcascade.types import RouteDecision


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
