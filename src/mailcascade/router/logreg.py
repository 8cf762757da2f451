"""Multinomial logistic regression on embeddings (numpy): the trained router's head and the eval's
`embedding_logreg` baseline (one implementation for both)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mailcascade.types import RouteDecision


class LogisticRegression:
    """Multinomial logistic regression on L2-normalised embeddings (numpy, deterministic).

    Full-batch gradient descent with Nesterov momentum on the mean cross-entropy plus `l2` * ||W||^2 / 2 (the
    bias is not penalised). Rows are L2-normalised, so the loss is smooth with constant <= 1 and a fixed step
    converges. `predict_proba` gives calibrated-ish class probabilities; the confidence of a decision is the
    winning class's probability.
    """

    def __init__(self, vectors: np.ndarray, labels: Sequence[str], *, l2: float = 1e-3, steps: int = 400,
                 lr: float = 2.0) -> None:
        if len(labels) != len(vectors) or not len(labels):
            raise ValueError("the logistic regression needs one label per row and at least one row")
        self.classes: tuple[str, ...] = tuple(sorted(set(labels)))
        index = {c: i for i, c in enumerate(self.classes)}
        x = _unit(vectors)
        y = np.zeros((x.shape[0], len(self.classes)), dtype=np.float64)
        y[np.arange(x.shape[0]), [index[label] for label in labels]] = 1.0
        # Gradient descent from W = 0 keeps W in the row space of x (every gradient is x.T @ something plus a
        # multiple of W), so with fewer rows than dimensions it runs on W = x.T @ a: logits x @ W = (x @ x.T) @ a,
        # the same iterates with an n x n product per step instead of two n x d ones.
        gram = x.shape[0] < x.shape[1]
        k = x @ x.T if gram else x
        w = np.zeros((k.shape[1], len(self.classes)))
        b = np.zeros(len(self.classes))
        vw, vb = np.zeros_like(w), np.zeros_like(b)
        n = x.shape[0]
        for _ in range(steps if len(self.classes) > 1 else 0):
            lw, lb = w + 0.9 * vw, b + 0.9 * vb  # look-ahead point (Nesterov)
            p = _softmax(k @ lw + lb)
            gw = ((p - y) / n if gram else x.T @ (p - y) / n) + l2 * lw
            gb = (p - y).mean(axis=0)
            vw, vb = 0.9 * vw - lr * gw, 0.9 * vb - lr * gb
            w, b = w + vw, b + vb
        self.w, self.b = (x.T @ w if gram else w), b

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        return _softmax(_unit(vectors) @ self.w + self.b)

    def predict_vectors(self, vectors: np.ndarray) -> list[RouteDecision]:
        proba = self.predict_proba(vectors)
        best = proba.argmax(axis=1)
        return [RouteDecision(department=self.classes[j], confidence=round(float(row[j]), 6),
                              reason=f"logistic regression: p={float(row[j]):.2f}")
                for row, j in zip(proba, best, strict=True)]


def _unit(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out
