"""Embedding backends side by side in one run: onnx (int8, onnxruntime) vs torch (sentence-transformers).

Run: nice -n 10 .venv/bin/python bench/bench_embed.py [--data-dir DIR] [--texts 512] [--queries 200]
Needs the onnx extra (pip install -e '.[onnx]'). Throughput on real ePQA texts, measured in alternating rounds
(best round each): passages as the index build embeds them and questions one at a time (a retrieval query). Quality:
nDCG@10 on ePQA dev (eval/epqa_dev.toml: every candidate passage in a flat index, queries as the pipeline writes
them) with each backend's vectors; the catalogue vectors are cached in the temp folder, so reruns are fast.
Targets (issue 13): onnx >= 2x torch throughput, nDCG@10 within 0.005 of torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

from _vectors import Vectors, embed_cached  # noqa: E402
from mailcascade.catalog import Embedder, build_index  # noqa: E402
from mailcascade.config import EmbeddingSettings, RetrievalSettings  # noqa: E402
from mailcascade.eval.adapters import epqa  # noqa: E402
from mailcascade.eval.evalset import resolve_data_dir  # noqa: E402
from mailcascade.eval.retrieval import retrieval_metrics  # noqa: E402
from mailcascade.stages.retrieve import build_query  # noqa: E402

ROUNDS = 3


def _best(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="the shared datasets (default: $MAILCASCADE_DATA_DIR or ../shared/data)")
    parser.add_argument("--texts", type=int, default=512, help="passages per batch-throughput round (default 512)")
    parser.add_argument("--queries", type=int, default=200, help="single-text queries per round (default 200)")
    parser.add_argument("--cache-dir", default=".mailcascade/models", help="where the onnx export is cached")
    args = parser.parse_args()
    data_dir, _ = resolve_data_dir(args.data_dir)
    if not (data_dir / "epqa" / "dev.csv").is_file():
        print(f"bench_embed: no ePQA data under {data_dir} (use --data-dir)", file=sys.stderr)
        return 1
    cases, passages = epqa(data_dir / "epqa" / "dev.csv")
    retrieval = RetrievalSettings(top_k=10, one_hit_per_product=False)  # as eval/configs/epqa.toml
    queries = [build_query(c.email, None, retrieval, 4000) for c in cases]
    backends = {name: Embedder(EmbeddingSettings(backend=name, cache_dir=args.cache_dir))  # type: ignore[arg-type]
                for name in ("torch", "onnx")}
    start = time.perf_counter()
    for embedder in backends.values():  # load (and export, the first time) before timing
        embedder.encode(["warm up"])
    print(f"loaded both backends in {time.perf_counter() - start:.1f} s (the onnx export runs once, then is cached)")

    batch_texts = [p.text for p in passages[:args.texts]]
    single = queries[:args.queries]
    best: dict[tuple[str, str], float] = {}
    for r in range(ROUNDS):  # alternate, so both see the same load
        fresh = [f"{q} ({r})" for q in single]  # new texts each round: the embedder remembers recent single texts
        for name, embedder in backends.items():
            for kind, fn in (("batch", lambda e=embedder: e.encode(batch_texts)),
                             ("query", lambda e=embedder, qs=fresh: [e.encode([q]) for q in qs])):
                seconds = _best(fn, 1)
                best[name, kind] = min(best.get((name, kind), float("inf")), seconds)
    print(f"{'throughput':<60}{'torch/s':>9}{'onnx/s':>9}{'onnx/torch':>12}")
    batched = f"passages (torch in batches of {backends['torch'].settings.batch_size}, onnx one by one)"
    for kind, n, label in (("batch", len(batch_texts), batched),
                           ("query", len(single), "queries, one text at a time")):
        torch_rate, onnx_rate = n / best["torch", kind], n / best["onnx", kind]
        print(f"{label:<60}{torch_rate:>9.0f}{onnx_rate:>9.0f}{onnx_rate / torch_rate:>11.2f}x")

    texts = [p.text for p in passages]
    relevant = [c.expected.relevant or {} for c in cases]
    ndcg: dict[str, float] = {}
    for name, embedder in backends.items():
        vectors = embed_cached(texts, embedder.settings, "epqa-passages", embedder)
        index = build_index(passages, Vectors(vectors, embedder.name))
        hits = index.search_vectors(embedder.encode(queries), retrieval.top_k)
        metrics = retrieval_metrics(relevant, [[h.passage_id for h in row] for row in hits], ks=[10])
        ndcg[name] = float(metrics["ndcg@10"])
    print(f"nDCG@10 on ePQA dev ({len(cases)} questions, {len(passages)} passages): torch {ndcg['torch']:.4f}, "
          f"onnx {ndcg['onnx']:.4f}, difference {ndcg['onnx'] - ndcg['torch']:+.4f}")
    print("targets: onnx/torch >= 2x; |nDCG@10 difference| <= 0.005")
    return 0


if __name__ == "__main__":
    sys.exit(main())
