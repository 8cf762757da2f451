"""Eval harness speed, measured side by side in one run (python bench/bench_eval.py).

1. Concurrency: the sample eval set (route, retrieve, draft) against a fake OpenAI-compatible server with a fixed
   latency per reply, at concurrency 1, 4 and 16; reported as the share of the ideal speed-up over concurrency 1
   (ideal = min(concurrency, cases)).
2. Re-run after a draft-prompt edit, as a share of the full run's time: routing answers come from the LLM cache,
   only drafts are asked again.
Real embeddings (MiniLM) and a real FAISS index; the model is the fake server, so only the harness is measured.
Set BENCH_LATENCY_S to change the fake latency: below ~0.1 s the harness is bound by embedding the retrieval
queries on the CPU (about 50 ms each on 2 cores), not by waiting for the model.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fakes import sensible  # noqa: E402
from fakeserver import FakeServer  # noqa: E402
from mailcascade.catalog import Embedder  # noqa: E402
from mailcascade.config import EmbeddingSettings, LLMSettings, Settings, StoreSettings  # noqa: E402
from mailcascade.eval.evalset import load_eval_set  # noqa: E402
from mailcascade.eval.runner import EvalOptions, run_eval  # noqa: E402

LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "0.3"))  # a fast hosted model answers in 0.3-2 s
SAMPLE = ROOT / "data" / "sample_emails.jsonl"


def timed_run(server: FakeServer, work: Path, name: str, concurrency: int, embedder: Embedder,
              prompts: Path, store: str | None = None) -> float:
    settings = Settings().replace(
        llm=LLMSettings(base_url=server.base_url, model="fake-model"),
        store=StoreSettings(path=str(work / f"{store or name}.db")),
        prompts_dir=str(prompts),
    )
    started = time.perf_counter()
    run_eval(load_eval_set(SAMPLE), work / name, EvalOptions(progress=False, concurrency=concurrency),
             settings=settings, embedder=embedder, cache_dir=work / "cache")
    return time.perf_counter() - started


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    prompts = work / "prompts"
    shutil.copytree(ROOT / "src" / "mailcascade" / "prompts", prompts)
    embedder = Embedder(EmbeddingSettings())
    n_cases = sum(1 for line in SAMPLE.read_text().splitlines() if line.strip())
    try:
        with FakeServer(sensible, latency_s=LATENCY_S) as server:
            timed_run(server, work, "warmup", 4, embedder, prompts)  # loads the model, builds the index and caches
            times = {c: timed_run(server, work, f"c{c}", c, embedder, prompts) for c in (1, 4, 16)}
            # a fresh store (no cached answers) for the full run, then the same store after a draft-prompt edit
            full = timed_run(server, work, "full", 4, embedder, prompts)
            draft = prompts / "draft.md"
            draft.write_text(draft.read_text().replace("a colleague will check", "a teammate will check"))
            rerun = timed_run(server, work, "edited", 4, embedder, prompts, store="full")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"eval of {n_cases} cases (route+retrieve+draft), fake server latency {LATENCY_S * 1000:.0f} ms per call")
    print(f"{'concurrency':>12}{'seconds':>10}{'speed-up':>10}{'ideal':>7}{'share of ideal':>16}")
    for c, t in times.items():
        speedup = times[1] / t
        ideal = min(c, n_cases)
        print(f"{c:>12}{t:>10.2f}{speedup:>10.2f}{ideal:>7}{speedup / ideal:>16.2f}")
    print(f"\nre-run after a draft-prompt edit: {rerun:.2f} s vs full run {full:.2f} s "
          f"= {rerun / full:.2f} of a full run")


if __name__ == "__main__":
    main()
