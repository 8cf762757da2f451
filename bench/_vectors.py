"""Shared by the benchmarks: embeddings computed once and cached in the system temp folder."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mailcascade.catalog import Embedder
from mailcascade.config import EmbeddingSettings


class Vectors:
    """An embedder that hands out precomputed rows in order (build_index asks for them chunk by chunk)."""

    def __init__(self, vectors: np.ndarray, name: str = "bench") -> None:
        self._vectors = vectors
        self._next = 0
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self._vectors[self._next:self._next + len(texts)]
        self._next += len(texts)
        return out


def embed_cached(texts: Sequence[str], settings: EmbeddingSettings, label: str,
                 embedder: Embedder | None = None) -> np.ndarray:
    """Embeddings of texts, from a cache file keyed by the texts, the model and the backend."""
    embedder = embedder or Embedder(settings)
    digest = hashlib.sha256("\n\x00".join([embedder.name, settings.backend, *texts]).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "mailcascade-bench" / f"{label}-{digest}.npy"
    if path.is_file():
        return np.load(path)
    print(f"embedding {len(texts)} {label} texts with {embedder.name}; cached in {path}", file=sys.stderr)
    vectors = np.vstack([embedder.encode(list(texts[i:i + 1024])) for i in range(0, len(texts), 1024)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    return vectors
