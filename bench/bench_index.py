"""Flat (exact) vs HNSW FAISS search on real passage embeddings, side by side in one run.

Run: nice -n 10 .venv/bin/python bench/bench_index.py [--n 50000] [--data-dir DIR] [--sweep]
     .venv/bin/python bench/bench_index.py --synthetic            # clustered random vectors instead

The passages are real text from the shared datasets (about 53k distinct, the first --n after a seeded shuffle):
every ePQA candidate passage, its sentences and runs of two and three sentences, 12-word windows at a stride of 6
(as a fine chunker cuts a catalogue), the human answers, and the Bitext and HINT3 utterances;
the queries are the 977 ePQA questions, written as the pipeline writes a retrieval query. They are embedded once
with the configured embedder (default settings) and cached in the system temp folder, so reruns are fast.
Prints HNSW recall@k against exact search and the search speed-up (one query at a time, as the pipeline searches),
for the default [catalog.hnsw] settings; --sweep adds other efSearch values on the same graph.
Targets (issue 13): recall@10 >= 0.95 of exact at >= 5x the exact search speed on 50k real passages.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

from _vectors import Vectors, embed_cached  # noqa: E402
from mailcascade.catalog import CatalogIndex, Passage, build_index  # noqa: E402
from mailcascade.config import EmbeddingSettings, HnswSettings  # noqa: E402
from mailcascade.eval.adapters import epqa  # noqa: E402
from mailcascade.eval.evalset import resolve_data_dir  # noqa: E402

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def real_texts(data_dir: Path, n: int) -> tuple[list[str], list[str]]:
    """(passages, queries): up to n distinct real passages, and the ePQA questions as retrieval queries."""
    cases, passages = epqa(data_dir / "epqa" / "dev.csv")
    texts: dict[str, None] = dict.fromkeys(p.text for p in passages)
    for p in passages:
        title, _, body = p.text.partition("\n")
        sentences = [s.strip() for s in _SENTENCE.split(body) if s.strip()]
        for width in (1, 2, 3):
            for i in range(len(sentences) - width + 1):
                chunk = " ".join(sentences[i:i + width])
                if len(chunk) >= 30:
                    texts.setdefault(f"{title}\n{chunk}")
        words = body.split()
        for i in range(0, max(1, len(words) - 6), 6):  # a fine chunker: 12 words, stride 6
            texts.setdefault(f"{title}\n{' '.join(words[i:i + 12])}")
    for case in cases:
        texts.update(dict.fromkeys(case.meta["answers"]))
    for name in ("Training", "Validation", "Testing"):
        texts.update(dict.fromkeys(_column(data_dir / "bitext" / f"Bitext_Sample_Customer_Service_{name}_Dataset.csv",
                                           "utterance")))
    for name in ("train", "test"):
        texts.update(dict.fromkeys(_column(data_dir / "hint3_curekart" / f"curekart_{name}.csv", "sentence")))
    ordered = [t for t in texts if t.strip()]
    random.Random(13).shuffle(ordered)
    queries = [f"{c.email.subject}\n{c.email.body}" for c in cases]
    return ordered[:n], queries


def _column(path: Path, column: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [row[column] for row in csv.DictReader(fh)]


def synthetic(n: int, queries: int, dim: int = 384) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(256, dim)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        v = centres[rng.integers(0, len(centres), size=count)] + 0.6 * rng.normal(size=(count, dim))
        out: np.ndarray = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        return out

    return draw(n), draw(queries)


def _one_at_a_time(index: CatalogIndex, queries: np.ndarray, k: int) -> tuple[float, list[list[str]]]:
    start = time.perf_counter()
    ids = [[h.passage_id for h in index.search_vectors(q, k)[0]] for q in queries]
    return time.perf_counter() - start, ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="passages (default 50000)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--data-dir", help="the shared datasets (default: $MAILCASCADE_DATA_DIR or ../shared/data)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="embedding backend")
    parser.add_argument("--cache-dir", default=".mailcascade/models", help="where the onnx export is cached")
    parser.add_argument("--synthetic", action="store_true", help="clustered random vectors instead of real text")
    parser.add_argument("--sweep", action="store_true", help="also try other efSearch values on the same graph")
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads while searching (default 1)")
    args = parser.parse_args()
    hnsw = HnswSettings()
    if args.synthetic:
        vectors, queries = synthetic(args.n, 500)
        source = "synthetic clustered unit vectors"
    else:
        data_dir, _ = resolve_data_dir(args.data_dir)
        if not (data_dir / "epqa" / "dev.csv").is_file():
            print(f"bench_index: no ePQA data under {data_dir} (use --data-dir, or --synthetic)", file=sys.stderr)
            return 1
        texts, query_texts = real_texts(data_dir, args.n)
        settings = EmbeddingSettings(backend=args.backend, cache_dir=args.cache_dir)
        vectors = embed_cached(texts, settings, "passages")
        queries = embed_cached(query_texts, settings, "queries")
        source = "real passages (ePQA, Bitext, HINT3)"
    passages = [Passage(f"p{i}", f"p{i}", "") for i in range(len(vectors))]
    build_s: dict[str, float] = {}
    built: dict[str, CatalogIndex] = {}
    for kind in ("flat", "hnsw"):
        start = time.perf_counter()
        built[kind] = build_index(passages, Vectors(vectors), kind=kind, hnsw=hnsw)
        build_s[kind] = time.perf_counter() - start
    faiss.omp_set_num_threads(args.threads)
    flat_s, exact = _one_at_a_time(built["flat"], queries, args.k)
    print(f"{source}: {len(vectors)} passages, dim {vectors.shape[1]}, {len(queries)} queries, k={args.k}, "
          f"FAISS threads {args.threads}")
    print(f"HNSW M={hnsw.m} efConstruction={hnsw.ef_construction}: build {build_s['hnsw']:.1f} s "
          f"({build_s['hnsw'] / build_s['flat']:.0f}x flat)")
    print(f"{'efSearch':>9}{'recall@' + str(args.k):>11}{'speed-up vs exact':>19}{'ms/query':>10}")
    for ef in sorted({hnsw.ef_search, *((16, 32, 64, 96, 128, 192, 256) if args.sweep else ())}):
        built["hnsw"].set_ef_search(ef)
        hnsw_s, approx = _one_at_a_time(built["hnsw"], queries, args.k)
        recall = float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True)]))
        mark = "  <- default" if ef == hnsw.ef_search else ""
        print(f"{ef:>9}{recall:>11.3f}{flat_s / hnsw_s:>18.1f}x{1000 * hnsw_s / len(queries):>10.3f}{mark}")
    print(f"exact (flat): {1000 * flat_s / len(queries):.3f} ms/query; target recall >= 0.95 at >= 5x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
