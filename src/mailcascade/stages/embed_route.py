"""Route by nearest labelled examples: the `[route] strategy = "embedding"` alternative to the LLM router.

An `EmbeddingRouter` holds example texts with their departments and their embeddings. For a new email it finds
the k most similar examples (cosine similarity of L2-normalised vectors) and lets them vote, each with weight
max(similarity, 0); the department with the largest weight wins and its share of the total weight is the
confidence. Ties go to the department of the nearest neighbour among the tied ones. Everything is
deterministic: equal similarities are ordered by example position.

Configuration:

    [route]
    strategy = "embedding"
    examples_path = "eval/router_examples.jsonl"   # one {"text": ..., "department": ...} per line
    neighbours = 5
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mailcascade.catalog import EmbedderLike
from mailcascade.config import Settings
from mailcascade.errors import ConfigError
from mailcascade.types import OUT_OF_SCOPE, Email, RouteDecision, StageRecord

if TYPE_CHECKING:
    from mailcascade.stages.call import StageOutput

#: queries are scored against all examples in blocks of this many rows (bounds memory)
_QUERY_BLOCK = 256


def _unit_rows(vectors: np.ndarray, rows: int) -> np.ndarray:
    out = np.asarray(vectors, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != rows:
        raise ValueError(f"expected {rows} embedding rows, got an array of shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.where(norms == 0, 1.0, norms), dtype=np.float32)


def email_text(email: Email, max_chars: int = 2000) -> str:
    """The text an email is routed by: subject and (cut) body, one per line."""
    return "\n".join(p for p in (email.subject, email.body[:max_chars]) if p)


def _snippet(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def load_examples(path: str | Path, departments: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(text, department) pairs from JSONL lines {"text": ..., "department": ...} (blank lines are skipped).

    With `departments`, every example's department must be one of them. Raises ConfigError (key
    "route.examples_path") for a missing file, a malformed line, an unknown department or no examples.
    """
    key = "route.examples_path"
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read router examples {path}: {exc.strerror or exc}", key=key) from None
    texts: list[str] = []
    labels: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: invalid JSON: {exc.msg}", key=key) from None
        if not (isinstance(item, dict) and isinstance(item.get("text"), str)
                and isinstance(item.get("department"), str)):
            raise ConfigError(f'{path}:{number}: expected {{"text": str, "department": str}}', key=key)
        if departments is not None and item["department"] not in departments:
            raise ConfigError(f"{path}:{number}: unknown department {item['department']!r}; "
                              f"configured: {', '.join(departments)}", key=key)
        texts.append(item["text"])
        labels.append(item["department"])
    if not texts:
        raise ConfigError(f"{path}: no router examples", key=key)
    return list(zip(texts, labels, strict=True))


class EmbeddingRouter:
    """k-nearest-neighbour router over labelled example texts.

    `texts[i]` is labelled `labels[i]`. `vectors` may hold the examples' embeddings already (one row per text);
    otherwise they are computed with `embedder`, which also embeds the texts to route.
    """

    def __init__(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        embedder: EmbedderLike,
        k: int = 5,
        *,
        vectors: np.ndarray | None = None,
        oos_quantile: float = 0.0,
    ) -> None:
        if len(texts) != len(labels):
            raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels)}")
        if not texts:
            raise ValueError("the embedding router needs at least one example")
        if k < 1:
            raise ValueError(f"k (neighbours) must be at least 1, got {k}")
        self.texts: tuple[str, ...] = tuple(texts)
        self.labels: tuple[str, ...] = tuple(labels)
        self.embedder = embedder
        self.k = k
        raw = embedder.encode(self.texts) if vectors is None else vectors
        self.vectors = _unit_rows(raw, len(self.texts))
        # a short hash of the embedder, k and the examples: changes whenever any of them does
        payload = json.dumps([embedder.name, k, oos_quantile, self.texts, self.labels], ensure_ascii=False)
        self.fingerprint: str = hashlib.sha256(payload.encode()).hexdigest()[:12]
        self.oos_quantile = oos_quantile
        self.min_similarity = self._calibrate(oos_quantile) if oos_quantile > 0 else None

    def _calibrate(self, quantile: float) -> float:
        """The similarity below which an email is out of scope: the `quantile` of the examples' own
        nearest-neighbour similarities (leave-one-out), so it is set from the examples, never from test data."""
        if len(self.texts) < 2:
            return -1.0
        nearest = np.concatenate([sims.max(axis=1) for sims in self._others()])
        return float(np.quantile(nearest, quantile))

    def _others(self) -> Iterator[np.ndarray]:
        """Blocks of each example's similarity to every example, with its similarity to itself masked."""
        for start in range(0, len(self.texts), _QUERY_BLOCK):
            sims = self.vectors[start:start + _QUERY_BLOCK] @ self.vectors.T
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf  # not itself
            yield sims

    @classmethod
    def from_jsonl(
        cls, path: str | Path, embedder: EmbedderLike, k: int = 5, departments: Sequence[str] | None = None,
        oos_quantile: float = 0.0,
    ) -> EmbeddingRouter:
        """Load examples from JSONL lines {"text": ..., "department": ...} (blank lines are skipped).

        With `departments`, every example's department must be one of them. Raises ConfigError (key
        "route.examples_path") for a missing file, a malformed line, an unknown department or no examples.
        """
        pairs = load_examples(path, departments)
        return cls([t for t, _ in pairs], [label for _, label in pairs], embedder, k, oos_quantile=oos_quantile)

    @classmethod
    def from_settings(cls, settings: Settings, embedder: EmbedderLike) -> EmbeddingRouter:
        """The router `[route]` configures: examples_path, neighbours, checked against the departments."""
        if not settings.route.examples_path:
            raise ConfigError('[route] strategy = "embedding" needs examples_path', key="route.examples_path")
        return cls.from_jsonl(settings.route.examples_path, embedder, settings.route.neighbours,
                              settings.department_names, settings.route.oos_quantile)

    @property
    def name(self) -> str:
        """Identifies the router in traces: strategy, embedder and k."""
        return f"knn:{self.embedder.name}:k={self.k}"

    def subset(self, indices: Sequence[int]) -> EmbeddingRouter:
        """A router over some of the examples, reusing their embeddings (for learning curves)."""
        picked = list(indices)
        return EmbeddingRouter([self.texts[i] for i in picked], [self.labels[i] for i in picked], self.embedder,
                               self.k, vectors=self.vectors[picked], oos_quantile=self.oos_quantile)

    def predict(self, texts: Sequence[str]) -> list[RouteDecision]:
        """One decision per text."""
        if not texts:
            return []
        return self.predict_vectors(self.embedder.encode(list(texts)))

    def leave_one_out(self) -> list[RouteDecision]:
        """Each example's decision by all the other examples (a baseline when there is no separate train split)."""
        return [self._decide(row) for sims in self._others() for row in sims]

    def predict_vectors(self, queries: np.ndarray) -> list[RouteDecision]:
        """One decision per row of already-embedded queries."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"expected query rows of width {self.vectors.shape[1]}, got shape {q.shape}")
        q = _unit_rows(q, q.shape[0])
        out: list[RouteDecision] = []
        for start in range(0, q.shape[0], _QUERY_BLOCK):
            sims = q[start:start + _QUERY_BLOCK] @ self.vectors.T
            out.extend(self._decide(row) for row in sims)
        return out

    def _decide(self, sims: np.ndarray) -> RouteDecision:
        top = float(sims.max())
        if self.min_similarity is not None and top < self.min_similarity:
            best = int(sims.argmax())
            return RouteDecision(department=OUT_OF_SCOPE, confidence=round(1.0 - max(top, 0.0), 6),
                                 reason=f"k-NN: nearest example '{_snippet(self.texts[best])}' has similarity "
                                        f"{top:.2f}, below the out-of-scope threshold {self.min_similarity:.2f}")
        k = min(self.k, sims.shape[0])
        kth = np.partition(sims, sims.shape[0] - k)[sims.shape[0] - k]  # the k-th largest similarity
        candidates = np.flatnonzero(sims >= kth)  # every example tied at the boundary too
        order = candidates[np.lexsort((candidates, -sims[candidates]))][:k]  # best first, ties by position
        weights: dict[str, float] = {}
        nearest: dict[str, int] = {}
        for i in order:
            label = self.labels[i]
            weights[label] = weights.get(label, 0.0) + max(float(sims[i]), 0.0)
            nearest.setdefault(label, int(i))
        total = sum(weights.values())
        if total <= 0.0:  # no neighbour is similar at all: plain majority vote
            weights = {label: float(sum(self.labels[i] == label for i in order)) for label in weights}
            total = float(k)
        rank = {label: pos for pos, label in enumerate(nearest)}  # labels in order of their nearest neighbour
        winner = max(weights, key=lambda label: (weights[label], -rank[label]))
        share = weights[winner] / total
        best = nearest[winner]
        reason = (f"k-NN: nearest example '{_snippet(self.texts[best])}' ({winner}, sim {float(sims[best]):.2f}); "
                  f"{winner} has {share:.0%} of the vote of {k} neighbour{'s' if k > 1 else ''}")
        return RouteDecision(department=winner, confidence=round(share, 6), reason=reason)

    def route(self, email: Email, max_chars: int = 2000) -> RouteDecision:
        """The decision for one email (subject and body)."""
        return self.predict([email_text(email, max_chars)])[0]


def embed_route(email: Email, router: EmbeddingRouter, max_chars: int = 2000) -> StageOutput[RouteDecision]:
    """The route stage with the embedding strategy: the decision plus a trace record.

    The record's prompt_hash holds the router's fingerprint (embedder, k, examples), so a run records which
    examples produced its decisions, and model holds the router's name.
    """
    # imported here, not at the top: the router itself (and the eval baselines built on it) must not need the
    # LLM call and validator machinery that stages.call brings in
    from mailcascade.stages.call import StageOutput

    started = time.perf_counter()
    text = email_text(email, max_chars)
    decision = router.predict([text])[0]
    record = StageRecord(
        stage="route",
        status="ok",
        prompt_hash=router.fingerprint,
        model=router.name,
        input_hash=hashlib.sha256(text.encode()).hexdigest()[:12],
        latency_ms=(time.perf_counter() - started) * 1000,
    )
    return StageOutput(value=decision, record=record)
