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
    negative_examples_path = ""   # optional texts that belong to no department (calibration only)

The out-of-scope threshold on the nearest example's similarity is chosen by cross-validation on the examples
(`route.oos_calibration = "cv"`, see `mailcascade.router.calibrate`), unless set by hand (`route.oos_threshold`,
or `route.oos_quantile` of the examples' own nearest-neighbour similarities) or switched off.
"""

from __future__ import annotations

import dataclasses
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
from mailcascade.router.calibrate import Calibration, Fold, Scored, calibrate
from mailcascade.router.shortlist import Candidate, RouterLike, shortlist_rows
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
    pairs = _read_examples(path, key, require_department=True)
    for number, (_, department) in pairs:
        if departments is not None and department not in departments:
            raise ConfigError(f"{path}:{number}: unknown department {department!r}; "
                              f"configured: {', '.join(departments)}", key=key)
    if not pairs:
        raise ConfigError(f"{path}: no router examples", key=key)
    return [pair for _, pair in pairs]


def _read_examples(path: str | Path, key: str, *, require_department: bool) -> list[tuple[int, tuple[str, str]]]:
    """(line number, (text, department or "")) from JSONL lines with a "text" and a "department" (optional unless
    `require_department`); ConfigError naming `key` for an unreadable file or a malformed line."""
    what = "cannot read router examples" if require_department else "cannot read"
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}", key=key) from None
    out: list[tuple[int, tuple[str, str]]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: invalid JSON: {exc.msg}", key=key) from None
        department = item.get("department", None if require_department else "") if isinstance(item, dict) else None
        if not (isinstance(item, dict) and isinstance(item.get("text"), str) and isinstance(department, str)):
            shape = '{"text": str, "department": str}' if require_department else '{"text": str}'
            raise ConfigError(f"{path}:{number}: expected {shape}", key=key)
        out.append((number, (item["text"], department)))
    return out


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
        calibration: Calibration | None = None,
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
        self.oos_quantile = oos_quantile
        if calibration is None:
            calibration = (Calibration(threshold=self._calibrate(oos_quantile), source="hand-set",
                                       score=f"similarity (quantile {oos_quantile:g} of the examples')")
                           if oos_quantile > 0 else Calibration(threshold=None, source="off"))
        self.calibration = calibration
        self.min_similarity = calibration.threshold
        # a short hash of the embedder, k, the threshold and the examples: changes whenever any of them does
        payload = json.dumps([embedder.name, k, oos_quantile, self.texts, self.labels]
                             + ([self.min_similarity] if calibration.source == "cv" else []), ensure_ascii=False)
        self.fingerprint: str = hashlib.sha256(payload.encode()).hexdigest()[:12]

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
        """The router `[route]` configures: examples_path, neighbours, checked against the departments, with the
        out-of-scope threshold the settings ask for (cross-validated on the examples by default)."""
        if not settings.route.examples_path:
            raise ConfigError(f'[route] strategy = "{settings.route.strategy}" needs examples_path (or model_dir)',
                              key="route.examples_path")
        pairs = load_examples(settings.route.examples_path, settings.department_names)
        return cls.calibrated([t for t, _ in pairs], [label for _, label in pairs], embedder, settings)

    @classmethod
    def calibrated(
        cls, texts: Sequence[str], labels: Sequence[str], embedder: EmbedderLike, settings: Settings, *,
        vectors: np.ndarray | None = None,
    ) -> EmbeddingRouter:
        """A router over the examples with the threshold `[route]` asks for: oos_threshold or oos_quantile when set
        by hand, else (oos_calibration = "cv") chosen by label-held-out cross-validation on these examples and
        the negative examples, else none."""
        route = settings.route
        vectors = _unit_rows(embedder.encode(list(texts)) if vectors is None else vectors, len(texts))
        calibration: Calibration | None = None
        if route.oos_threshold > 0:
            calibration = Calibration(threshold=route.oos_threshold, source="hand-set")
        elif route.oos_quantile == 0 and route.oos_calibration == "cv" and len(set(labels)) >= 2:
            negatives = negative_texts(settings)
            calibration = knn_calibration(vectors, labels, route.neighbours,
                                          embedder.encode(negatives) if negatives else None)
        return cls(texts, labels, embedder, route.neighbours, vectors=vectors, oos_quantile=route.oos_quantile,
                   calibration=calibration)

    @property
    def name(self) -> str:
        """Identifies the router in traces: strategy, embedder and k."""
        return f"knn:{self.embedder.name}:k={self.k}"

    def subset(self, indices: Sequence[int]) -> EmbeddingRouter:
        """A router over some of the examples, reusing their embeddings (for learning curves)."""
        picked = list(indices)
        return EmbeddingRouter([self.texts[i] for i in picked], [self.labels[i] for i in picked], self.embedder,
                               self.k, vectors=self.vectors[picked], oos_quantile=self.oos_quantile,
                               calibration=self.calibration if self.calibration.source != "cv" else None)

    def describe(self) -> dict[str, object]:
        """What the run records about the router: its name, examples and out-of-scope calibration."""
        return {"strategy": "embedding", "name": self.name, "fingerprint": self.fingerprint,
                "n_examples": len(self.texts), "labels": sorted(set(self.labels)),
                "calibration": self.calibration.to_dict()}

    def shortlist(self, texts: Sequence[str], n: int, examples: int = 2) -> list[list[Candidate]]:
        """Per text, the n departments whose nearest examples are most similar, each with those examples."""
        if not texts:
            return []
        q = _unit_rows(self.embedder.encode(list(texts)), len(texts))
        return [shortlist_rows(row, self.labels, self.texts, n, examples) for row in q @ self.vectors.T]

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
        score = round(top, 6)
        if self.min_similarity is not None and top < self.min_similarity:
            best = int(sims.argmax())
            return RouteDecision(department=OUT_OF_SCOPE, confidence=round(1.0 - max(top, 0.0), 6),
                                 reason=f"k-NN: nearest example '{_snippet(self.texts[best])}' has similarity "
                                        f"{top:.2f}, below the out-of-scope threshold {self.min_similarity:.2f}",
                                 oos_score=score, before_threshold=winner)
        share = weights[winner] / total
        best = nearest[winner]
        reason = (f"k-NN: nearest example '{_snippet(self.texts[best])}' ({winner}, sim {float(sims[best]):.2f}); "
                  f"{winner} has {share:.0%} of the vote of {k} neighbour{'s' if k > 1 else ''}")
        return RouteDecision(department=winner, confidence=round(share, 6), reason=reason, oos_score=score,
                             before_threshold=winner)

    def route(self, email: Email, max_chars: int = 2000) -> RouteDecision:
        """The decision for one email (subject and body)."""
        return self.predict([email_text(email, max_chars)])[0]


def negative_texts(settings: Settings) -> list[str]:
    """The texts of `route.negative_examples_path` (JSONL with a "text" on each line; a department, if given, must be
    out_of_scope), or none."""
    path = settings.route.negative_examples_path
    if not path:
        return []
    pairs = load_examples_any(path, "route.negative_examples_path")
    wrong = [label for _, label in pairs if label not in ("", OUT_OF_SCOPE)]
    if wrong:
        raise ConfigError(f"{path}: negative examples belong to no department; found department {wrong[0]!r} "
                          f"(leave it out or write {OUT_OF_SCOPE})", key="route.negative_examples_path")
    return [t for t, _ in pairs]


def load_examples_any(path: str | Path, key: str) -> list[tuple[str, str]]:
    """(text, department or "") from JSONL lines with a "text" (and optionally a "department")."""
    return [pair for _, pair in _read_examples(path, key, require_department=False)]


def knn_calibration(
    vectors: np.ndarray, labels: Sequence[str], k: int, negatives: np.ndarray | None, folds: int = 5,
) -> Calibration:
    """The k-NN router's out-of-scope threshold on the nearest example's similarity, by label-held-out
    cross-validation over its own examples (see `mailcascade.router.calibrate`)."""
    unit = _unit_rows(vectors, len(labels))
    neg = _unit_rows(negatives, negatives.shape[0]) if negatives is not None and len(negatives) else None

    def fold_scores(fold: Fold) -> tuple[list[Scored], list[Scored]]:
        train = list(fold.train)
        router = EmbeddingRouter([""] * len(train), [labels[i] for i in train], _NoEmbedder(unit.shape[1]), k,
                                 vectors=unit[train])
        tests = [*fold.test, *fold.held_out]
        sims = (unit[tests] @ unit[train].T).max(axis=1)
        decisions = router.predict_vectors(unit[tests])
        held = set(fold.held_out)
        scored = [Scored(float(s), d.department == labels[i] and i not in held, i in held)
                  for i, s, d in zip(tests, sims, decisions, strict=True)]
        negative = ([Scored(float(s), False, True) for s in (neg @ unit[train].T).max(axis=1)]
                    if neg is not None else [])
        return scored, negative

    return calibrate(labels, fold_scores, folds=folds, score="similarity")


class _NoEmbedder:
    """Stands in for an embedder where every vector is given (cross-validation folds)."""

    def __init__(self, dim: int) -> None:
        self._dim = dim

    @property
    def name(self) -> str:
        return "given-vectors"

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise ValueError("vectors were given; nothing to encode")


def embed_route(email: Email, router: RouterLike, max_chars: int = 2000) -> StageOutput[RouteDecision]:
    """The route stage with the embedding strategy: the decision plus a trace record.

    The record's prompt_hash holds the router's fingerprint (embedder, k, examples), so a run records which
    examples produced its decisions, and model holds the router's name.
    """
    # imported here, not at the top: the router itself (and the eval baselines built on it) must not need the
    # LLM call and validator machinery that stages.call brings in
    from mailcascade.stages.call import StageOutput

    started = time.perf_counter()
    text = email_text(email, max_chars)
    decision = dataclasses.replace(router.predict([text])[0], decided_by="router")
    record = StageRecord(
        stage="route",
        status="ok",
        prompt_hash=router.fingerprint,
        model=router.name,
        input_hash=hashlib.sha256(text.encode()).hexdigest()[:12],
        latency_ms=(time.perf_counter() - started) * 1000,
    )
    return StageOutput(value=decision, record=record)
