"""Harness speed, measured side by side in one run (python bench/bench_eval.py). Ratios, not timings, matter.

1. Concurrency: an eval (route, retrieve, draft) of 128 distinct cases against a fake OpenAI-compatible server
   with a fixed latency per reply, at 16 and 64 in flight, as a share of the ideal speed-up over one in flight
   (ideal = min(concurrency, cases); one in flight runs all the cases too, so the eval's own fixed costs, baselines,
   metrics and report, are in every run). Twice: cold
   (texts new to every cache: every retrieval query embedded on the CPU) and with retrieval answered from the cache
   (model calls only).
   The fake server runs in a process of its own (bench/fakeserver_process.py), as a real model server does: in the
   benchmark's process its HTTP handling would compete with the pipeline for the GIL.
2. Cross-email query batching: single-query encodes against batches of the same texts (MiniLM on the CPU).
3. A route call through the pipeline against the bare `openai` call with the same messages, zero-latency server.
4. Re-run after a draft-prompt edit, as a share of the full run's time (routing and retrieval from the cache).
Real embeddings (MiniLM) and a real FAISS index; the model is the fake server. BENCH_LATENCY_S sets the latency.

    python bench/bench_eval.py [concurrency] [batching] [overhead] [rerun] [--backend onnx]  # the parts named, or all
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import openai  # noqa: E402

from fakes import sensible  # noqa: E402
from fakeserver import FakeServer  # noqa: E402
from fakeserver_process import ServerProcess  # noqa: E402
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
SERIAL_CASES = 16  # the bare SDK's one-in-flight time per case is measured on this many


def settings_for(server: FakeServer | ServerProcess, store: Path, prompts: Path, **store_kw: Any) -> Settings:
    return Settings().replace(
        llm=LLMSettings(base_url=server.base_url, model="fake-model"),
        store=StoreSettings(path=str(store), **store_kw),
        prompts_dir=str(prompts),
    )


def timed_eval(cases: Path, work: Path, name: str, concurrency: int, embedder: Embedder, prompts: Path,
               store: Path, limit: int | None = None, server: FakeServer | ServerProcess | None = None) -> float:
    """Seconds for one eval run; without `server`, against a new one in its own process (a new endpoint: no cached
    model answers)."""
    return timed_phases(cases, work, name, concurrency, embedder, prompts, store, limit, server)[0]


def timed_phases(cases: Path, work: Path, name: str, concurrency: int, embedder: Embedder, prompts: Path,
                 store: Path, limit: int | None = None,
                 server: FakeServer | ServerProcess | None = None) -> tuple[float, float]:
    """Seconds for the whole eval run and for its cascade (Pipeline.arun_many: the emails in flight, without the
    eval's set-up, metrics and report)."""
    spent: list[float] = []
    arun_many = Pipeline.arun_many

    async def timed(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await arun_many(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    with contextlib.ExitStack() as stack:
        if server is None:
            server = stack.enter_context(ServerProcess(latency_s=LATENCY_S))
        stack.enter_context(mock.patch.object(Pipeline, "arun_many", timed))
        started = time.perf_counter()
        run_eval(load_eval_set(cases), work / name, EvalOptions(progress=False, concurrency=concurrency, limit=limit),
                 settings=settings_for(server, store, prompts), embedder=embedder, cache_dir=work / "cache")
        return time.perf_counter() - started, sum(spent)


def distinct_cases(work: Path, tag: str = "") -> Path:
    """N_CASES cases from the sample emails, each with its own id and text; texts differ between tags, so a run
    with a new tag finds none of them in any cache (the embedder remembers recent single texts)."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    path = work / f"cases{tag}.jsonl"
    with path.open("w") as out:
        for n in range(N_CASES):
            row = json.loads(json.dumps(rows[n % len(rows)]))
            row["id"] = f"{row['id']}-{n}"
            row["email"]["body"] += f"\n\n(customer reference {tag}{n})"
            out.write(json.dumps(row) + "\n")
    return path


def concurrency_bench(work: Path, embedder: Embedder, prompts: Path, rounds: int = 2) -> list[str]:
    """Share of the ideal speed-up, for the whole eval and for its cascade alone (the eval's metrics, baselines and
    report take the same time at any concurrency), beside the bare `openai` SDK making the same two calls per case
    against the same server: no client in this process can beat that row. Rounds interleaved; the best time of each."""
    cases = distinct_cases(work)
    timed_eval(cases, work, "warmup", 16, embedder, prompts, work / "warm.db")  # model, index, retrieval cache
    with FakeServer(sensible) as server:  # only for the settings: nothing is sent
        pipeline = Pipeline.from_config(settings=settings_for(server, work / "bodies.db", prompts), embedder=embedder)
        bodies = route_bodies(pipeline, [Email(id=f"b{i}", subject=f"Order {i}", body=f"Where is my order {i}?")
                                         for i in range(N_CASES)])
    runs = [("one", 1), ("cold", 16), ("cold", 64), ("from cache", 16), ("from cache", 64)]
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for r in range(rounds):
        for kind, c in runs:
            store = work / "warm.db" if kind == "from cache" else work / f"{kind}{c}-{r}.db"
            run = f"{kind[:4]}{c}-{r}"
            t = timed_phases(cases if kind == "from cache" else distinct_cases(work, run), work, run, c, embedder,
                             prompts, store)
            best[(kind, c)] = min(best.get((kind, c), t), t)
        for c in (1, 16, 64):
            t = bare_eval(bodies[:SERIAL_CASES] if c == 1 else bodies, c)
            best[("bare openai", c)] = min(best.get(("bare openai", c), (t, t)), (t, t))
    serial = [x / N_CASES for x in best[("one", 1)]]
    bare_serial = best[("bare openai", 1)][0] / SERIAL_CASES
    lines = [f"eval of {N_CASES} cases (route+retrieve+draft), fake server in its own process, {LATENCY_S * 1000:.0f} "
             f"ms per call, {embedder.settings.backend} embeddings; one in flight: {serial[0]:.3f} s per case "
             f"({serial[1]:.3f} s in the cascade; bare openai {bare_serial:.3f} s); best of {rounds} "
             "interleaved rounds",
             f"{'retrieval':<12}{'in flight':>10}{'ideal':>7}{'eval s':>8}{'share of ideal':>16}"
             f"{'cascade s':>11}{'share of ideal':>16}"]
    for kind, c in runs[1:]:
        ideal = min(c, N_CASES)
        (t, cascade) = best[(kind, c)]
        lines.append(f"{kind:<12}{c:>10}{ideal:>7}{t:>8.2f}{serial[0] * N_CASES / t / ideal:>16.2f}"
                     f"{cascade:>11.2f}{serial[1] * N_CASES / cascade / ideal:>16.2f}")
    for c in (16, 64):
        t = best[("bare openai", c)][0]
        lines.append(f"{'bare openai':<12}{c:>10}{c:>7}{'':>8}{'':>16}{t:>11.2f}{bare_serial * N_CASES / t / c:>16.2f}"
                     "   (2 SDK calls a case, no cascade: the ceiling)")
    return lines


def route_bodies(pipeline: Pipeline, emails: list[Email]) -> list[dict[str, Any]]:
    """The request bodies of the emails' route calls, as `pipeline` posts them."""
    body = OpenAIClient(pipeline.settings.llm).body
    return [body(route_stage.prepare(e, pipeline.prompts["route"], pipeline.settings, pipeline.policies["route"],
                                       Budget(reask_tokens_left=0)).request()) for e in emails]


def bare_eval(bodies: list[dict[str, Any]], concurrency: int) -> float:
    """Seconds for two bare SDK calls per body (as route, then draft), `concurrency` bodies in flight, against a new
    server process."""
    async def run(base_url: str) -> float:
        client = openai.AsyncOpenAI(api_key="x", base_url=base_url, max_retries=0)
        limit = asyncio.Semaphore(concurrency)

        async def one(body: dict[str, Any]) -> None:
            async with limit:
                for _ in range(2):
                    await bare_post(client, body)

        await one(bodies[0])  # the client built and connected, as the pipeline's is after its warm-up
        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        elapsed = time.perf_counter() - started
        await client.close()
        return elapsed

    with ServerProcess(latency_s=LATENCY_S) as server:
        return asyncio.run(run(server.base_url))


class MicroBatcher:
    """Single-text encodes arriving within `window_s` of each other coalesced into one batch, by `workers` threads.
    Here to measure whether it pays (see batching_bench), not used by the pipeline."""

    def __init__(self, embedder: Embedder, window_s: float, max_batch: int, workers: int) -> None:
        self.embedder, self.window_s, self.max_batch = embedder, window_s, max_batch
        self._queue: queue.SimpleQueue[tuple[str, Future[np.ndarray]] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def encode_one(self, text: str) -> np.ndarray:
        future: Future[np.ndarray] = Future()
        self._queue.put((text, future))
        return future.result()

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            deadline = time.perf_counter() + self.window_s
            while len(batch) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # leave the stop signal for this thread's next get
                    break
                batch.append(item)
            for (_, future), vector in zip(batch, self.embedder.encode([t for t, _ in batch]), strict=True):
                future.set_result(vector)


def batching_bench(embedder: Embedder) -> list[str]:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    texts = [f"{r['email']['subject']}\n{r['email']['body']}" for r in rows]
    texts = (texts * 2)[:64]
    embedder.encode(texts[:4])
    workers = min(32, (os.cpu_count() or 1) + 4)  # asyncio.to_thread's pool: retrievals at most this many at once
    cores = len(os.sched_getaffinity(0))
    variants: dict[str, Callable[[], object]] = {
        "one at a time": lambda: [embedder.encode([t]) for t in texts],
        "batches of 8": lambda: [embedder.encode(texts[i:i + 8]) for i in range(0, len(texts), 8)],
        "batches of 64": lambda: embedder.encode(texts),
        f"{workers} threads, one query each": lambda: threaded(lambda t: embedder.encode([t]), texts, workers),
    }
    for window_ms in (2, 5):
        def micro(window_s: float = window_ms / 1000) -> None:
            batcher = MicroBatcher(embedder, window_s, max_batch=16, workers=cores)
            try:
                threaded(batcher.encode_one, texts, workers)
            finally:
                batcher.close()
        variants[f"{workers} threads, micro-batched ({window_ms} ms, {cores} batchers)"] = micro
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(3):  # interleaved rounds; the best of each
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    best = {name: min(t) for name, t in times.items()}
    base = best["one at a time"]
    lines = [f"query embedding, {len(texts)} email texts, MiniLM on {embedder_threads_note()}, {cores} cores: "
             f"one at a time {base / len(texts) * 1000:.1f} ms per text; throughput vs one at a time:"]
    lines += [f"  {name:<48}{t / len(texts) * 1000:>6.1f} ms per text = {base / t:.2f}x" for name, t in best.items()]
    threads = best[f"{workers} threads, one query each"]
    micro_best = min(t for name, t in best.items() if "micro" in name)
    lines.append(f"  micro-batching vs the same threads encoding directly: {threads / micro_best:.2f}x")
    return lines


def threaded(encode: Callable[[str], object], texts: list[str], workers: int) -> None:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(encode, texts))


def embedder_threads_note() -> str:
    import torch

    return f"{torch.get_num_threads()} torch thread(s)"


async def bare_create(client: openai.AsyncOpenAI, body: dict[str, Any]) -> None:
    """The bare SDK call most code makes: `chat.completions.create` (raw response, parsed once)."""
    extra = {"response_format": body["response_format"]} if "response_format" in body else None
    rest = {k: v for k, v in body.items() if k != "response_format"}
    raw = await client.chat.completions.with_raw_response.create(**rest, extra_body=extra)
    json.loads(raw.text)


async def bare_post(client: openai.AsyncOpenAI, body: dict[str, Any]) -> None:
    """The SDK call the pipeline makes (`OpenAIClient`): the body posted with the client's low-level `post`."""
    raw = await client.post("/chat/completions", body=body, cast_to=httpx.Response)
    json.loads(raw.text)


async def bare_calls(client: openai.AsyncOpenAI, bodies: list[dict[str, Any]],
                     call: Callable[[openai.AsyncOpenAI, dict[str, Any]], Awaitable[None]]) -> float:
    started = time.perf_counter()
    for body in bodies:
        await call(client, body)
    return time.perf_counter() - started


async def pipeline_calls(pipeline: Pipeline, emails: list[Email]) -> float:
    started = time.perf_counter()
    for email in emails:
        result = await pipeline.arun(email, stages=("route",))
        assert result.stages[0].status == "ok", result.error
    return time.perf_counter() - started


def overhead_bench(work: Path, embedder: Embedder, prompts: Path, n: int = 150, rounds: int = 5) -> list[str]:
    """The pipeline's route call against two bare SDK calls with the same body, interleaved in blocks of 10:
    `chat.completions.create` (the issue's yardstick) and the low-level `post` the pipeline's client makes (the
    ratio to it is the framework's own cost, the SDK's path being the same)."""
    lines = [f"route call through the pipeline vs the bare openai call, zero-latency fake server, {n} calls a round"]
    with FakeServer(sensible) as server:
        for cache in (True, False):
            ratios: dict[str, list[float]] = {"create": [], "post": []}
            times: dict[str, list[float]] = {"create": [], "post": [], "pipeline": []}
            for r in range(rounds):
                settings = settings_for(server, work / f"overhead-{cache}-{r}.db", prompts, cache=cache)
                emails = [Email(id=f"o{r}-{i}", subject=f"Order {r}-{i}", body=f"Where is my order {r}-{i}?")
                          for i in range(n)]
                pipeline = Pipeline.from_config(settings=settings, embedder=embedder)
                bodies = route_bodies(pipeline, emails)

                async def one_round(p: Pipeline = pipeline, e: list[Email] = emails,
                                    q: list[dict[str, Any]] = bodies) -> dict[str, float]:
                    took = {"create": 0.0, "post": 0.0, "pipeline": 0.0}
                    client = openai.AsyncOpenAI(api_key="x", base_url=server.base_url, max_retries=0)
                    async with p:
                        await pipeline_calls(p, e[:5])  # warm the connection and the store
                        await bare_calls(client, q[:5], bare_create)
                        await bare_calls(client, q[:5], bare_post)
                        for i in range(5, len(e), 10):  # alternate blocks of 10, so load changes hit all alike
                            took["create"] += await bare_calls(client, q[i:i + 10], bare_create)
                            took["pipeline"] += await pipeline_calls(p, e[i:i + 10])
                            took["post"] += await bare_calls(client, q[i:i + 10], bare_post)
                    await client.close()
                    return took

                took = asyncio.run(one_round())
                for k in took:
                    times[k].append(took[k] / (n - 5) * 1e6)
                for k in ratios:
                    ratios[k].append(took["pipeline"] / took[k])
            label = "LLM cache on (a miss: lookup + write)" if cache else "LLM cache off"
            us = {k: statistics.median(v) for k, v in times.items()}
            lines.append(f"  {label:<40} vs bare create: median {statistics.median(ratios['create']):.2f}x (rounds: "
                         f"{', '.join(f'{x:.2f}' for x in ratios['create'])}); vs bare post (same SDK path): median "
                         f"{statistics.median(ratios['post']):.2f}x (rounds: "
                         f"{', '.join(f'{x:.2f}' for x in ratios['post'])}); a call: pipeline {us['pipeline']:.0f} us, "
                         f"create {us['create']:.0f} us, post {us['post']:.0f} us")
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", help=f"the parts to run: {', '.join(names)} (default: all)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="the embedding backend")
    args = parser.parse_args()
    chosen = args.parts or list(names)
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    work = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    prompts = work / "prompts"
    shutil.copytree(ROOT / "src" / "mailcascade" / "prompts", prompts)
    embedder = Embedder(EmbeddingSettings(backend=args.backend))
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
