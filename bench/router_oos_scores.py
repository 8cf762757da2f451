"""Out-of-scope scores for the trained router, compared by the train-only cross-validation, side by side.

Run: nice -n 10 .venv/bin/python bench/router_oos_scores.py eval/hint3_curekart_test_labels.toml [--seeds 0 1 2]

For each seed, the `router train` recipe's label-held-out folds (`mailcascade.router.calibrate.label_folds`, the
default TrainOptions but for the seed) each fine-tune their own encoder on the fold's training part, exactly as
`router train` does; then every score below is computed for the fold's test items (in-scope test examples and the
held-out labels' examples as pseudo out of scope), and each score gets its own best threshold on the pooled folds.
Printed: each score's CV label-level accuracy and out-of-scope recall per seed, and the mean over seeds. Only the
eval definition's train split is read: this never looks at a test split, so its ranking may choose a recipe.

Scores (higher = more in scope): the head's top probability and its margin over the second, the head's energy
(log-sum-exp of its logits), the nearest example's cosine similarity (what `router train` may choose today, with
the probability), the mean of the 3 nearest, the nearest class centroid's cosine, and the negative Mahalanobis
distance to the nearest class mean under a shared covariance with Ledoit-Wolf shrinkage.
About 5 minutes per seed on one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mailcascade.catalog import Embedder  # noqa: E402
from mailcascade.eval.evalset import training_examples  # noqa: E402
from mailcascade.router.calibrate import Scored, label_folds, summarise  # noqa: E402
from mailcascade.router.model import Head  # noqa: E402
from mailcascade.router.train import TrainOptions, encode_fold, torch_threads  # noqa: E402


def shrunk_precision(residuals: np.ndarray) -> np.ndarray:
    """Inverse of the Ledoit-Wolf shrunk covariance of the (class-centred) rows."""
    n, d = residuals.shape
    s = residuals.T @ residuals / n
    target = np.trace(s) / d * np.eye(d)
    spread = float(((residuals**2).sum(axis=1) ** 2).sum() - n * (s**2).sum()) / n**2
    distance = float(((s - target) ** 2).sum())
    a = min(1.0, spread / distance) if distance > 0 else 1.0
    precision: np.ndarray = np.linalg.inv((1 - a) * s + a * target)
    return precision


def all_scores(head: Head, proba: np.ndarray, train_vectors: np.ndarray, train_labels: list[str],
               vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Every score for the rows of `vectors` (`proba`: the head's probabilities for them)."""
    logits = vectors @ head.w + head.b
    top = logits.max(axis=1, keepdims=True)
    ranked = np.sort(proba, axis=1)
    sims = vectors @ train_vectors.T
    classes = sorted(set(train_labels))
    members = np.array(train_labels)
    means = np.stack([train_vectors[members == c].mean(axis=0) for c in classes])
    centroids = means / np.linalg.norm(means, axis=1, keepdims=True)
    precision = shrunk_precision(train_vectors - means[[classes.index(label) for label in train_labels]])
    vp = vectors @ precision
    mahalanobis = ((vp * vectors).sum(axis=1)[:, None] - 2 * vp @ means.T
                   + ((means @ precision) * means).sum(axis=1)[None, :])
    return {
        "probability": ranked[:, -1],
        "margin": ranked[:, -1] - ranked[:, -2],
        "energy": (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0],
        "similarity": sims.max(axis=1),
        "mean of 3 nearest": np.sort(sims, axis=1)[:, -3:].mean(axis=1),
        "centroid": (vectors @ centroids.T).max(axis=1),
        "mahalanobis": -mahalanobis.min(axis=1),
    }


def cross_validated(evalset: str, seed: int, data_dir: str | None) -> dict[str, tuple[float, float]]:
    """Per score: (CV label-level accuracy, out-of-scope recall) at its best threshold, for one seed's folds."""
    settings, texts, labels = training_examples(evalset, None, data_dir=data_dir)
    options = TrainOptions(seed=seed)
    location = Embedder(settings.embedding).model_location()
    plan = label_folds(labels, options.folds, options.seed)
    items: dict[str, list[Scored]] = {}
    with torch_threads(options.threads):
        for fold in plan:
            enc = encode_fold(fold, location, texts, labels, options, lambda: None)
            train_labels = [labels[i] for i in fold.train]
            proba = enc.head.proba(enc.vectors)
            predicted = [enc.head.classes[j] for j in proba.argmax(axis=1)]
            for kind, values in all_scores(enc.head, proba, enc.train_vectors, train_labels, enc.vectors).items():
                items.setdefault(kind, []).extend(
                    Scored(float(v), p == labels[i] and i not in enc.held, i in enc.held)
                    for i, p, v in zip(enc.tests, predicted, values, strict=True))
    out = {}
    for kind, scored in items.items():
        c = summarise(scored, folds=len(plan), negatives=0, score=kind)
        out[kind] = (c.cv_accuracy or 0.0, c.cv_out_of_scope_recall or 0.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("evalset", help="an eval definition with a train split, or examples JSONL")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    runs = {seed: cross_validated(args.evalset, seed, args.data_dir) for seed in args.seeds}
    kinds = list(runs[args.seeds[0]])
    print(f"train-only CV of out-of-scope scores on {args.evalset} (label-level accuracy / out-of-scope recall)")
    print(f"{'score':<20}" + "".join(f"{'seed ' + str(s):>16}" for s in args.seeds) + f"{'mean accuracy':>16}")
    for kind in sorted(kinds, key=lambda k: -statistics.mean(runs[s][k][0] for s in args.seeds)):
        cells = "".join(f"{runs[s][kind][0]:>9.4f} / {runs[s][kind][1]:.2f}" for s in args.seeds)
        print(f"{kind:<20}{cells}{statistics.mean(runs[s][kind][0] for s in args.seeds):>16.4f}")


if __name__ == "__main__":
    main()
