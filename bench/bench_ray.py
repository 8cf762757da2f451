"""`--engine ray` against the local engine, side by side in one run (python bench/bench_ray.py).

The same N emails (default 1,000, BENCH_EMAILS) through the full cascade against the same fake OpenAI-compatible
server with a fixed latency per reply (BENCH_LATENCY_S, default 0.05 s), no caches, the same total number of emails
in flight (BENCH_IN_FLIGHT, default 8): the local engine (one process, `Pipeline.run_many`) and the Ray engine (a
local Ray with the machine's CPUs, one actor per CPU, in-flight split across the actors). Prints each engine's
emails/s, the ratio ray/local (Ray's overhead on one machine), per-actor emails/s and tokens per email (for the
README's sizing example). Real embeddings (MiniLM) and a real FAISS index; the model is the fake server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from fakes import sensible  # noqa: E402
from fakeserver import FakeServer  # noqa: E402
from mailcascade.config import load_settings  # noqa: E402
from mailcascade.email_parse import read_inputs  # noqa: E402
from mailcascade.engines.ray_engine import run_on_ray  # noqa: E402
from mailcascade.pipeline import Pipeline  # noqa: E402
from mailcascade.types import Result  # noqa: E402

N = int(os.environ.get("BENCH_EMAILS", "1000"))
LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "0.05"))
IN_FLIGHT = int(os.environ.get("BENCH_IN_FLIGHT", "8"))
SAMPLE = ROOT / "data" / "sample_emails.jsonl"


def write_emails(path: Path, n: int) -> None:
    sample = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            email = sample[i % len(sample)]["email"]
            f.write(json.dumps({"id": f"b{i:06d}", **email, "body": f"{email['body']} (ref {i})"}) + "\n")


def tokens(results: list[Result]) -> float:
    return sum(s.tokens_in + s.tokens_out for r in results for s in r.stages) / max(1, len(results))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-ray-"))
    env = {"MAILCASCADE_CATALOG__INDEX_DIR": str(work / "index"), "MAILCASCADE_STORE__CACHE": "false",
           "MAILCASCADE_STORE__PATH": str(work / "store.db"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "mailcascade.cli", "index", "build"], env={**os.environ, **env},
                   check=True, capture_output=True)
    write_emails(work / "in.jsonl", N)
    cpus = os.cpu_count() or 1
    with FakeServer(sensible, latency_s=LATENCY_S) as server:  # type: ignore[arg-type]
        settings = load_settings(None, env={**env, "OPENAI_BASE_URL": server.base_url})
        items = list(read_inputs([str(work / "in.jsonl")], max_bytes=settings.input.max_email_bytes))
        with Pipeline.from_config(settings=settings) as pipeline:
            _ = pipeline.index  # loading is not timed: each Ray actor's start-up is, as a user sees it
            started = time.perf_counter()
            local = pipeline.run_many(items, concurrency=IN_FLIGHT)
            local_s = time.perf_counter() - started
        started = time.perf_counter()
        on_ray = run_on_ray(settings, items, concurrency=max(1, IN_FLIGHT // cpus), actors=cpus)
        ray_s = time.perf_counter() - started
    assert [r.id for r in on_ray] == [r.id for r in local]
    ok = sum(r.status == "ok" for r in on_ray)
    print(f"{N} emails, fake model latency {LATENCY_S * 1000:.0f} ms, {IN_FLIGHT} in flight, {cpus} CPUs "
          f"({ok} ok on ray)")
    print(f"local engine : {N / local_s:8.1f} emails/s  ({local_s:.1f} s)")
    print(f"ray engine   : {N / ray_s:8.1f} emails/s  ({ray_s:.1f} s, {cpus} actors, cluster start included)")
    print(f"ratio ray/local throughput: {local_s / ray_s:.2f}")
    print(f"per actor: {N / ray_s / cpus:.1f} emails/s; tokens per email: {tokens(on_ray):.0f}")


if __name__ == "__main__":
    main()
