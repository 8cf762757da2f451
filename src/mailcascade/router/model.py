"""The trained router: a fine-tuned sentence encoder, a logistic-regression head and a calibrated threshold.

A model directory (written by `mailcascade router train`) holds:

    DIR/encoder/        the fine-tuned sentence-transformers model
    DIR/head.npz        the head: weights, bias, classes
    DIR/examples.npz    the training examples' texts, labels and encoder vectors (nearest examples, shortlists)
    DIR/manifest.json   base model, examples hash, label set, training settings, calibration, CV estimate

The decision is the head's most probable label, its probability the confidence; the email is out of scope when the
calibrated score (the head's probability or the nearest example's similarity, whichever cross-validation chose) is
below the threshold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mailcascade.catalog import Embedder, EmbedderLike
from mailcascade.config import EmbeddingSettings, Settings
from mailcascade.errors import ConfigError
from mailcascade.router.calibrate import Calibration
from mailcascade.router.logreg import LogisticRegression
from mailcascade.router.shortlist import Candidate, shortlist_rows
from mailcascade.types import OUT_OF_SCOPE, RouteDecision

MANIFEST = "manifest.json"
FORMAT = 1
KEY = "route.model_dir"


def examples_hash(texts: Sequence[str], labels: Sequence[str]) -> str:
    """sha256 of the (text, label) pairs in order: names the training data without storing a copy elsewhere."""
    payload = json.dumps([list(texts), list(labels)], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class Head:
    """The classifier on top of the encoder (a fitted `LogisticRegression`, or one read back from head.npz)."""

    def __init__(self, classes: Sequence[str], w: np.ndarray, b: np.ndarray) -> None:
        self.classes = tuple(classes)
        self.w = np.asarray(w, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: Sequence[str]) -> Head:
        model = LogisticRegression(vectors, labels)
        return cls(model.classes, model.w, model.b)

    def proba(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float64)
        x = x / np.where((n := np.linalg.norm(x, axis=1, keepdims=True)) == 0, 1.0, n)
        z = x @ self.w + self.b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return out

    def save(self, path: Path) -> None:
        np.savez(path, w=self.w, b=self.b, classes=np.array(self.classes))

    @classmethod
    def load(cls, path: Path) -> Head:
        data = np.load(path, allow_pickle=False)
        return cls([str(c) for c in data["classes"]], data["w"], data["b"])


def scores(head: Head, vectors: np.ndarray, example_vectors: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(head probabilities, the score compared with the threshold) for each row of `vectors`."""
    proba = head.proba(vectors)
    if kind == "probability":
        return proba, proba.max(axis=1)
    return proba, (np.asarray(vectors) @ np.asarray(example_vectors).T).max(axis=1)


class TrainedRouter:
    """Routes with a model directory written by `mailcascade router train`."""

    def __init__(self, directory: Path, manifest: dict[str, Any], embedder: EmbedderLike, head: Head,
                 texts: Sequence[str], labels: Sequence[str], vectors: np.ndarray, calibration: Calibration) -> None:
        self.directory = directory
        self.manifest = manifest
        self.embedder = embedder
        self.head = head
        self.texts = tuple(texts)
        self.labels = tuple(labels)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.calibration = calibration
        payload = json.dumps([manifest.get("examples_sha256"), manifest.get("created"), calibration.to_dict()])
        self.fingerprint: str = hashlib.sha256(payload.encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"trained:{self.directory.name}"

    @classmethod
    def check(cls, directory: str | Path, settings: Settings) -> dict[str, Any]:
        """The manifest of DIR, if its labels are the configured departments (out_of_scope aside); else a
        ConfigError naming the missing and extra ones."""
        folder = Path(directory)
        manifest = read_manifest(folder)
        configured = sorted(d for d in settings.department_names if d != OUT_OF_SCOPE)
        trained = sorted(manifest.get("labels") or [])
        if trained != configured:
            missing = sorted(set(configured) - set(trained))
            extra = sorted(set(trained) - set(configured))
            detail = "; ".join(p for p in (f"not trained: {', '.join(missing)}" if missing else "",
                                           f"not configured: {', '.join(extra)}" if extra else "") if p)
            raise ConfigError(f"{folder}: the trained router's departments do not match the configured ones ({detail});"
                              " retrain with `mailcascade router train` under this configuration", key=KEY)
        return manifest

    @classmethod
    def load(cls, directory: str | Path, settings: Settings) -> TrainedRouter:
        """Load DIR (see `check`). A hand-set `route.oos_threshold` replaces the trained calibration;
        `oos_calibration = "off"` drops it."""
        folder = Path(directory)
        manifest = cls.check(folder, settings)
        try:
            head = Head.load(folder / "head.npz")
            data = np.load(folder / "examples.npz", allow_pickle=False)
            texts = [str(t) for t in data["texts"]]
            labels = [str(t) for t in data["labels"]]
            vectors = data["vectors"]
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{folder}: damaged trained router ({type(exc).__name__}: {exc}); retrain it",
                              key=KEY) from None
        calibration = Calibration.from_dict(manifest.get("calibration") or {"threshold": None, "source": "off"})
        route = settings.route
        if route.oos_threshold > 0:
            calibration = Calibration(threshold=route.oos_threshold, source="hand-set", score=calibration.score)
        elif route.oos_calibration == "off":
            calibration = Calibration(threshold=None, source="off", score=calibration.score)
        embedder = Embedder(EmbeddingSettings(model=str(folder / "encoder"), device=settings.embedding.device,
                                              batch_size=settings.embedding.batch_size))
        return cls(folder, manifest, embedder, head, texts, labels, vectors, calibration)

    def describe(self) -> dict[str, object]:
        """What the run records: the model directory, its manifest's key facts and the calibration in use."""
        keep = ("base_model", "examples_sha256", "n_examples", "labels", "training", "cv", "created")
        return {"strategy": "trained", "name": self.name, "model_dir": str(self.directory),
                "fingerprint": self.fingerprint, **{k: self.manifest.get(k) for k in keep},
                "calibration": self.calibration.to_dict()}

    def predict(self, texts: Sequence[str]) -> list[RouteDecision]:
        if not texts:
            return []
        return self.predict_vectors(self.embedder.encode(list(texts)))

    def predict_vectors(self, vectors: np.ndarray) -> list[RouteDecision]:
        proba, score = scores(self.head, vectors, self.vectors, self.calibration.score)
        threshold = self.calibration.threshold
        out = []
        for row, s in zip(proba, score, strict=True):
            j = int(row.argmax())
            label, p = self.head.classes[j], float(row[j])
            if threshold is not None and float(s) < threshold:
                sure = min(1.0, max(0.0, (threshold - float(s)) / max(threshold, 1e-6)))
                out.append(RouteDecision(OUT_OF_SCOPE, round(sure, 6),
                                         f"trained: {self.calibration.score} {float(s):.2f} below the out-of-scope "
                                         f"threshold {threshold:.2f} (best in scope: {label}, p={p:.2f})", "router",
                                         oos_score=round(float(s), 6), before_threshold=label))
            else:
                out.append(RouteDecision(label, round(p, 6), f"trained: {label} p={p:.2f}", "router",
                                         oos_score=round(float(s), 6), before_threshold=label))
        return out

    def shortlist(self, texts: Sequence[str], n: int, examples: int = 2) -> list[list[Candidate]]:
        """Per text, the n most probable departments by the head, each with its nearest training examples."""
        if not texts:
            return []
        q = self.embedder.encode(list(texts))
        proba = self.head.proba(q)
        sims = np.asarray(q) @ self.vectors.T
        return [shortlist_rows(row, self.labels, self.texts, n, examples,
                               scores={c: float(p) for c, p in zip(self.head.classes, prow, strict=True)})
                for row, prow in zip(sims, proba, strict=True)]


def trained_texts(directory: str | Path) -> list[str]:
    """The example texts a trained router under DIR learned from (its examples.npz), without loading the encoder."""
    folder = Path(directory)
    try:
        with np.load(folder / "examples.npz", allow_pickle=False) as data:
            return [str(t) for t in data["texts"]]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"{folder}: damaged trained router ({type(exc).__name__}: {exc}); retrain it",
                          key=KEY) from None


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{folder}: no trained router here ({MANIFEST} missing); create one with "
                          "`mailcascade router train EXAMPLES --out DIR`", key=KEY) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable manifest ({exc}); retrain the router", key=KEY) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a mailcascade router manifest of format {FORMAT}; retrain the router",
                          key=KEY)
    return manifest
