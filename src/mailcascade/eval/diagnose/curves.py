"""Learning curves: the metric against the amount of data a stage learns from, and alarms on their shape."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mailcascade.catalog import EmbedderLike
from mailcascade.eval.diagnose.alarms import Alarm
from mailcascade.eval.stats import bootstrap_ci
from mailcascade.stages.embed_route import EmbeddingRouter


def _half(point: Mapping[str, Any]) -> float:
    ci = point.get("ci")
    return (float(ci[1]) - float(ci[0])) / 2 if ci else 0.0


def learning_curve(
    points: Sequence[Mapping[str, Any]], *, name: str = "learning curve", what: str = "training examples",
    steep_ratio: float = 0.5,
) -> list[Alarm]:
    """Alarms on a curve of points {"x": amount, "y": metric, "ci": [low, high]} (any order; sorted by x).

    - curve_falling: the last point is below the best one by more than sqrt(h_best^2 + h_last^2) (h = CI
      half-width): more data made it worse.
    - curve_flat: last - first is within sqrt(h_first^2 + h_last^2): more data did not help.
    - curve_steep: otherwise, when the slope of the last segment is at least `steep_ratio` times the average
      slope over the whole curve: more data would still pay.
    """
    pts = sorted(points, key=lambda p: float(p["x"]))
    if len(pts) < 2:
        return []
    first, last = pts[0], pts[-1]
    best = max(pts, key=lambda p: float(p["y"]))
    data = {"name": name, "what": what, "points": [dict(p) for p in pts]}
    y_first, y_last, y_best = float(first["y"]), float(last["y"]), float(best["y"])
    if y_best - y_last > math.hypot(_half(best), _half(last)):
        return [Alarm(
            "curve_falling", "warn", f"{name}: falls from {y_best:.3f} (x={best['x']}) to {y_last:.3f} "
            f"(x={last['x']})",
            f"The metric gets worse with more {what}, beyond its confidence intervals. More data should not hurt a "
            "learner that generalises: look for mislabelled or off-distribution items among the ones added last, "
            "duplicates that outvote the rest, or a class imbalance the added data makes worse.", (), data)]
    delta = y_last - y_first
    allowed = math.hypot(_half(first), _half(last))
    if abs(delta) <= allowed:
        return [Alarm(
            "curve_flat", "info", f"{name}: flat ({y_first:.3f} -> {y_last:.3f}, within the intervals)",
            f"Going from {first['x']} to {last['x']} {what} did not change the metric beyond chance. More of the "
            "same data will not help; better data (the cases it gets wrong), better features or another "
            "method would.", (), {**data, "change": delta, "allowed_change": allowed})]
    if len(pts) >= 3 and delta > 0:
        prev = pts[-2]
        span = float(last["x"]) - float(first["x"])
        seg = float(last["x"]) - float(prev["x"])
        slope_all = delta / span if span else 0.0
        slope_last = (y_last - float(prev["y"])) / seg if seg else 0.0
        if slope_all > 0 and slope_last >= steep_ratio * slope_all:
            return [Alarm(
                "curve_steep", "info", f"{name}: still rising at the end ({float(prev['y']):.3f} -> {y_last:.3f})",
                f"The metric still climbs over the last step of {what} almost as fast as on average: collecting "
                "more of this data is likely the cheapest way to gain.", (),
                {**data, "slope_last": slope_last, "slope_average": slope_all, "ratio": slope_last / slope_all})]
    return []


def router_learning_curve(
    train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str], test_labels: Sequence[str],
    embedder: EmbedderLike, *, fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0), seed: int = 0, k: int = 5,
) -> list[dict[str, Any]]:
    """Accuracy of the embedding router trained on growing, nested random subsets of the examples.

    Every text is embedded once. Returns points {"x": examples used, "fraction", "y": accuracy, "ci": bootstrap
    95% interval, "n_test"}.
    """
    if len(test_texts) != len(test_labels):
        raise ValueError(f"test texts and labels differ in length: {len(test_texts)} vs {len(test_labels)}")
    if not test_texts:
        raise ValueError("a learning curve needs test cases")
    full = EmbeddingRouter(train_texts, train_labels, embedder, k)
    queries = embedder.encode(list(test_texts))
    order = np.random.default_rng(seed).permutation(len(train_texts)).tolist()
    points = []
    for fraction in sorted(fractions):
        if not 0 < fraction <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {fraction}")
        size = max(1, round(fraction * len(train_texts)))
        decisions = full.subset(order[:size]).predict_vectors(queries)
        correct = [float(d.department == gold) for d, gold in zip(decisions, test_labels, strict=True)]
        low, high = bootstrap_ci(correct, seed=seed)
        points.append({"x": size, "fraction": fraction, "y": sum(correct) / len(correct), "ci": [low, high],
                       "n_test": len(correct)})
    return points
