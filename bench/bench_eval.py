"""Harness speed, measured side by side in one run (python bench/bench_eval.py). Ratios, not timings, matter.

1. Concurrency: an eval (route, retrieve, draft) of 128 distinct cases against a fake OpenAI-compatible server
   with a fixed latency per reply, at 16 and 64 in flight, as a share of the ideal speed-up over one in flight
   (ideal = min(concurrency, cases); the one-in-flight time per case is measured on 16 of the cases). Twice: cold
   (every retrieval query embedded on the CPU) and with retrieval answered from the cache (model calls only).
2. Cross-email query batching: single-query encodes against batches of the same texts (MiniLM on the CPU).
3. A route call through the pipeline against the bare `openai` call with the same messages, zero-latency server.
4. Re-run after a draft-prompt edit, as a share of the full run's time (routing and retrieval from the cache).
Real embeddings (MiniLM) and a real FAISS index; the model is the fake server. BENCH_LATENCY_S sets the latency.

    python bench/bench_eval.py [concurrency] [batching] [overhead] [rerun]    # the parts named, or all
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import openai  # noqa: E402

from fakes import sensible  # noqa: E402
from fakeserver import FakeServer  # noqa: E402
from mailcascade.catalog import Embedder  # noqa: E402
from mailcascade.config import EmbeddingSettings, LLMSettings, Settings, StoreSettings  # noqa: E402
from mailcascade.eval.evalset import load_eval_set  # noqa: E402
from mailcascade.eval.runner import EvalOptions, run_eval  # noqa: E402
from mailcascade.llm.client import OpenAIClient  # noqa: E402
from mailcascade.pipeline import Pipeline  # noqa: E402
from mailcascade.stages import route as route_stage  # noqa: E402
from mailcascade.stages.call import Budget  # noqa: E402
from mailcascade.types import Email  # noqa: E402

LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "0.3"))  # a fast hosted model answers in 0.3-2 s
SAMPLE = ROOT / "data" / "sample_emails.jsonl"
N_CASES = 128
SERIAL_CASES = 16


def settings_for(server: FakeServer, store: Path, prompts: Path, **store_kw: Any) -> Settings:
    return Settings().replace(
        llm=LLMSettings(base_url=server.base_url, model="fake-model"),
        store=StoreSettings(path=str(store), **store_kw),
        prompts_dir=str(prompts),
    )


def timed_eval(cases: Path, work: Path, name: str, concurrency: int, embedder: Embedder, prompts: Path,
               store: Path, limit: int | None = None, server: FakeServer | None = None) -> float:
    """Seconds for one eval run; without `server`, against a new one (a new endpoint: no cached model answers)."""
    with contextlib.ExitStack() as stack:
        if server is None:
            server = stack.enter_context(FakeServer(sensible, latency_s=LATENCY_S))
        started = time.perf_counter()
        run_eval(load_eval_set(cases), work / name, EvalOptions(progress=False, concurrency=concurrency, limit=limit),
                 settings=settings_for(server, store, prompts), embedder=embedder, cache_dir=work / "cache")
        return time.perf_counter() - started


def distinct_cases(work: Path) -> Path:
    """N_CASES cases from the sample emails, each with its own id and text (nothing answered from a cache)."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    path = work / "cases.jsonl"
    with path.open("w") as out:
        for n in range(N_CASES):
            row = json.loads(json.dumps(rows[n % len(rows)]))
            row["id"] = f"{row['id']}-{n}"
            row["email"]["body"] += f"\n\n(customer reference {n})"
            out.write(json.dumps(row) + "\n")
    return path


def concurrency_bench(work: Path, embedder: Embedder, prompts: Path) -> list[str]:
    cases = distinct_cases(work)
    timed_eval(cases, work, "warmup", 16, embedder, prompts, work / "warm.db")  # model, index, retrieval cache
    serial = timed_eval(cases, work, "c1", 1, embedder, prompts, work / "c1.db", limit=SERIAL_CASES) / SERIAL_CASES
    lines = [f"eval of {N_CASES} cases (route+retrieve+draft), fake server {LATENCY_S * 1000:.0f} ms per call; "
             f"one in flight: {serial:.3f} s per case",
             f"{'retrieval':<22}{'in flight':>10}{'seconds':>9}{'speed-up':>10}{'ideal':>7}{'share of ideal':>16}"]
    for kind in ("cold", "from cache"):
        for c in (16, 64):
            store = work / "warm.db" if kind == "from cache" else work / f"cold{c}.db"
            t = timed_eval(cases, work, f"{kind[:4]}{c}", c, embedder, prompts, store)
            speedup = serial * N_CASES / t
            ideal = min(c, N_CASES)
            lines.append(f"{kind:<22}{c:>10}{t:>9.2f}{speedup:>10.1f}{ideal:>7}{speedup / ideal:>16.2f}")
    return lines


def batching_bench(embedder: Embedder) -> list[str]:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    texts = [f"{r['email']['subject']}\n{r['email']['body']}" for r in rows]
    texts = (texts * 2)[:64]
    embedder.encode(texts[:4])
    one, batched = [], {8: [], 64: []}  # type: ignore[var-annotated]
    for _ in range(3):  # interleaved rounds; the best of each
        started = time.perf_counter()
        for text in texts:
            embedder.encode([text])
        one.append(time.perf_counter() - started)
        for size, times in batched.items():
            started = time.perf_counter()
            for i in range(0, len(texts), size):
                embedder.encode(texts[i:i + size])
            times.append(time.perf_counter() - started)
    best = min(one)
    locked, unlocked = [], []
    model = embedder._load_model()  # the same model without the embedder's lock

    def raw(batch: list[str]) -> None:
        model.encode(batch, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)

    for _ in range(3):
        for encode, times in ((embedder.encode, locked), (raw, unlocked)):
            started = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:  # four emails' retrievals at once, as asyncio.to_thread runs them
                list(pool.map(lambda t, f=encode: f([t]), texts))
            times.append(time.perf_counter() - started)
    lines = [f"query embedding, {len(texts)} email texts, MiniLM on {embedder_threads_note()}: "
             f"one at a time {best / len(texts) * 1000:.1f} ms per text"]
    for size, times in batched.items():
        lines.append(f"  batches of {size:>2}: {min(times) / len(texts) * 1000:.1f} ms per text = "
                     f"{best / min(times):.2f}x the throughput of one at a time")
    lines.append(f"  4 threads, one query each: without the embedder's lock {min(locked) / min(unlocked):.2f}x "
                 "the throughput of through it")
    return lines


def embedder_threads_note() -> str:
    import torch

    return f"{torch.get_num_threads()} torch thread(s)"


async def bare_calls(client: openai.AsyncOpenAI, bodies: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for body in bodies:
        raw = await client.chat.completions.with_raw_response.create(**body)
        json.loads(raw.text)
    return time.perf_counter() - started


async def pipeline_calls(pipeline: Pipeline, emails: list[Email]) -> float:
    started = time.perf_counter()
    for email in emails:
        result = await pipeline.arun(email, stages=("route",))
        assert result.stages[0].status == "ok", result.error
    return time.perf_counter() - started


def overhead_bench(work: Path, embedder: Embedder, prompts: Path, n: int = 150, rounds: int = 5) -> list[str]:
    lines = [f"route call through the pipeline vs the bare openai call, zero-latency fake server, {n} calls a round"]
    with FakeServer(sensible) as server:
        for cache in (True, False):
            ratios, overheads = [], []
            for r in range(rounds):
                settings = settings_for(server, work / f"overhead-{cache}-{r}.db", prompts, cache=cache)
                emails = [Email(id=f"o{r}-{i}", subject=f"Order {r}-{i}", body=f"Where is my order {r}-{i}?")
                          for i in range(n)]
                pipeline = Pipeline.from_config(settings=settings, embedder=embedder)
                budget = Budget(reask_tokens_left=0)
                kwargs = OpenAIClient(LLMSettings(base_url=server.base_url, model="fake-model"))._kwargs
                bodies = [kwargs(route_stage.prepare(e, pipeline.prompts["route"], settings,
                                                     pipeline.policies["route"], budget).request()) for e in emails]

                async def one_round(p: Pipeline = pipeline, e: list[Email] = emails,
                                    q: list[dict[str, Any]] = bodies) -> tuple[float, float]:
                    bare = through = 0.0
                    client = openai.AsyncOpenAI(api_key="x", base_url=server.base_url, max_retries=0)
                    async with p:
                        await pipeline_calls(p, e[:5])  # warm the connection and the store
                        await bare_calls(client, q[:5])
                        for i in range(5, len(e), 10):  # alternate blocks of 10, so load changes hit both alike
                            bare += await bare_calls(client, q[i:i + 10])
                            through += await pipeline_calls(p, e[i:i + 10])
                    await client.close()
                    return bare, through

                bare, through = asyncio.run(one_round())
                ratios.append(through / bare)
                overheads.append(((through - bare) / (n - 5) * 1e6, bare / (n - 5) * 1e6))
            label = "LLM cache on (a miss: lookup + write)" if cache else "LLM cache off"
            extra, call = statistics.median(o for o, _ in overheads), statistics.median(b for _, b in overheads)
            lines.append(f"  {label:<40} median {statistics.median(ratios):.2f}x (rounds: "
                         f"{', '.join(f'{x:.2f}' for x in ratios)}); {extra:.0f} us a call over the bare "
                         f"{call:.0f} us")
    return lines


def rerun_bench(work: Path, embedder: Embedder, prompts: Path) -> list[str]:
    with FakeServer(sensible, latency_s=LATENCY_S) as server:  # one endpoint: the re-run may use cached answers
        full = timed_eval(SAMPLE, work, "full", 4, embedder, prompts, work / "full.db", server=server)
        draft = prompts / "draft.md"
        draft.write_text(draft.read_text().replace("a colleague will check", "a teammate will check"))
        rerun = timed_eval(SAMPLE, work, "edited", 4, embedder, prompts, work / "full.db", server=server)
    cases = json.loads((work / "edited" / "metrics.json").read_text())["cost"]["stages"]
    hits = {s: (v["llm_calls_cached"], v["llm_calls"]) for s, v in cases.items() if v["llm_calls"]}
    return [f"re-run after a draft-prompt edit: {rerun:.2f} s vs full run {full:.2f} s = {rerun / full:.2f} of a "
            f"full run (cached/calls per stage: {', '.join(f'{s} {a}/{b}' for s, (a, b) in hits.items())})"]


def main() -> None:
    names = ("concurrency", "batching", "overhead", "rerun")
    chosen = sys.argv[1:] or list(names)
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    work = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    prompts = work / "prompts"
    shutil.copytree(ROOT / "src" / "mailcascade" / "prompts", prompts)
    embedder = Embedder(EmbeddingSettings())
    parts: dict[str, Callable[[], list[str]]] = {
        "concurrency": lambda: concurrency_bench(work, embedder, prompts),
        "batching": lambda: batching_bench(embedder),
        "overhead": lambda: overhead_bench(work, embedder, prompts),
        "rerun": lambda: rerun_bench(work, embedder, prompts),
    }
    try:
        for name in chosen:
            print("\n".join(parts[name]()) + "\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
