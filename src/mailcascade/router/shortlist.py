"""What every router strategy offers the pipeline: decisions, a shortlist for the hybrid's LLM, a description."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mailcascade.types import RouteDecision


@dataclass(frozen=True)
class Candidate:
    """A department the router considers likely for an email, with its score and the nearest examples of it."""

    department: str
    score: float
    examples: tuple[str, ...] = ()


class RouterLike(Protocol):
    """A router that needs no LLM: the embedding k-NN router and the trained router."""

    @property
    def name(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...

    def predict(self, texts: Sequence[str]) -> list[RouteDecision]: ...

    def shortlist(self, texts: Sequence[str], n: int, examples: int = 2) -> list[list[Candidate]]: ...

    def describe(self) -> dict[str, object]: ...


def shortlist_rows(
    sims: np.ndarray, labels: Sequence[str], texts: Sequence[str], n: int, examples: int,
    scores: dict[str, float] | None = None,
) -> list[Candidate]:
    """The n labels ranked by `scores` (default: the similarity of each label's nearest example), each with its
    `examples` most similar example texts. `sims[i]` is the similarity of example i (labelled labels[i])."""
    order = np.lexsort((np.arange(len(sims)), -sims))  # most similar first, ties by position
    nearest: dict[str, list[int]] = {}
    for i in order:
        picked = nearest.setdefault(labels[int(i)], [])
        if len(picked) < max(examples, 1):
            picked.append(int(i))
    rank = scores or {label: float(sims[rows[0]]) for label, rows in nearest.items()}
    best = sorted(nearest, key=lambda label: (-rank.get(label, 0.0), label))[:n]
    return [Candidate(label, round(rank.get(label, 0.0), 6), tuple(texts[i] for i in nearest[label][:examples]))
            for label in best]
