"""Flat vs HNSW on synthetic unit vectors: search speed-up and HNSW recall@k against exact search.

Run: PYTHONPATH=src .venv/bin/python bench/bench_index.py [--n 50000] [--dim 384] [--queries 500]
Reports ratios, not absolute targets.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from mailcascade.catalog import CatalogIndex, Passage, build_index


class _RandomEmbedder:
    """Clustered random unit vectors (so nearest neighbours are meaningful), keyed by text."""

    def __init__(self, dim: int, seed: int) -> None:
        self._dim = dim
        self._rng = np.random.default_rng(seed)
        self._centres = self._rng.normal(size=(256, dim)).astype(np.float32)

    @property
    def name(self) -> str:
        return "bench-random"

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        centres = self._centres[self._rng.integers(0, len(self._centres), size=len(texts))]
        v = centres + 0.6 * self._rng.normal(size=(len(texts), self._dim)).astype(np.float32)
        out: np.ndarray = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        return out


def _timed_search(index: CatalogIndex, queries: np.ndarray, k: int) -> tuple[float, list[list[str]]]:
    start = time.perf_counter()
    hits = index.search_vectors(queries, k)
    return time.perf_counter() - start, [[h.passage_id for h in row] for row in hits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    embedder = _RandomEmbedder(args.dim, seed=7)
    passages = [Passage(f"p{i}#0", f"p{i}", f"passage {i}") for i in range(args.n)]
    built: dict[str, CatalogIndex] = {}
    build_s: dict[str, float] = {}
    for kind in ("flat", "hnsw"):
        embedder = _RandomEmbedder(args.dim, seed=7)  # same vectors for both kinds
        start = time.perf_counter()
        built[kind] = build_index(passages, embedder, kind=kind)
        build_s[kind] = time.perf_counter() - start
    queries = _RandomEmbedder(args.dim, seed=11).encode([""] * args.queries)
    flat_s, exact = _timed_search(built["flat"], queries, args.k)
    hnsw_s, approx = _timed_search(built["hnsw"], queries, args.k)
    recall = float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True)]))
    print(f"passages={args.n} dim={args.dim} queries={args.queries} k={args.k}")
    print(f"build time hnsw/flat: {build_s['hnsw'] / build_s['flat']:.2f}x")
    print(f"search speed-up hnsw over flat: {flat_s / hnsw_s:.2f}x")
    print(f"hnsw recall@{args.k} vs exact: {recall:.3f}")


if __name__ == "__main__":
    main()
