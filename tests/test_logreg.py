"""The numpy logistic regression: its row-space iteration (fewer rows than dimensions) is the textbook one."""

from __future__ import annotations

import numpy as np
import pytest

from mailcascade.router.logreg import LogisticRegression, _softmax, _unit


def textbook(x: np.ndarray, labels: list[str], l2: float = 1e-3, steps: int = 400, lr: float = 2.0) -> np.ndarray:
    """Nesterov gradient descent on W (d x c) directly: the reference the row-space form must reproduce."""
    classes = sorted(set(labels))
    u = _unit(x)
    y = np.eye(len(classes))[[classes.index(label) for label in labels]]
    w, b = np.zeros((u.shape[1], len(classes))), np.zeros(len(classes))
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(steps):
        lw, lb = w + 0.9 * vw, b + 0.9 * vb
        p = _softmax(u @ lw + lb)
        vw = 0.9 * vw - lr * (u.T @ (p - y) / len(u) + l2 * lw)
        vb = 0.9 * vb - lr * (p - y).mean(axis=0)
        w, b = w + vw, b + vb
    return _softmax(u @ w + b)


@pytest.mark.parametrize(("rows", "dims"), [(12, 40), (40, 12)])
def test_probabilities_match_the_textbook_iteration(rows: int, dims: int) -> None:
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, dims))
    labels = [("billing", "returns", "shipping")[i % 3] for i in range(rows)]
    model = LogisticRegression(x, labels)
    assert model.w.shape == (dims, 3)
    probe = rng.normal(size=(7, dims))
    np.testing.assert_allclose(model.predict_proba(x), textbook(x, labels), atol=1e-9)
    assert not np.allclose(model.predict_proba(probe), 1 / 3)  # it learned something


def test_separable_classes_are_recovered() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(50)[:4] * 5
    x = np.repeat(centres, 5, axis=0) + rng.normal(scale=0.3, size=(20, 50))
    labels = [f"d{i // 5}" for i in range(20)]
    model = LogisticRegression(x, labels)
    assert [d.department for d in model.predict_vectors(centres)] == ["d0", "d1", "d2", "d3"]


def test_one_class_predicts_it_with_certainty() -> None:
    decisions = LogisticRegression(np.ones((3, 5)), ["billing"] * 3).predict_vectors(np.ones((1, 5)))
    assert decisions[0].department == "billing" and decisions[0].confidence == 1.0
