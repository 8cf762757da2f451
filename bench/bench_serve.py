"""Service overhead, measured side by side in one run (python bench/bench_serve.py).

1. Route-only emails from 16 concurrent clients: `POST /v1/emails?stages=route` against a `mailcascade serve`
   process, and `Pipeline.arun(email, stages=("route",))` called by 16 tasks in one process. Both use the same fake
   model server (its own process) with a fixed latency per reply and no LLM cache, so every email is one model call.
   Printed: requests/s, p50 and p99 per mode, and the ratios service / in-process (target <= 1.2x).
2. Cold start: from starting `mailcascade serve` to the first route result answered over HTTP, and from
   `Pipeline.from_config` to the first `arun` result in a fresh process.

BENCH_LATENCY_S (default 0.1) sets the fake latency, BENCH_REQUESTS (default 320) the requests per round; the
modes alternate for BENCH_ROUNDS rounds (default 3) and the best round of each is kept. Both modes run on the
event loop uvicorn picks (uvloop, with the serve extra).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

from mailcascade.config import load_settings  # noqa: E402
from mailcascade.eval.stats import percentiles  # noqa: E402
from mailcascade.pipeline import Pipeline  # noqa: E402
from mailcascade.types import Email  # noqa: E402
from service import Service, clean_env, free_port, sample_emails  # noqa: E402

LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "0.1"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "320"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CLIENTS = 16
T = TypeVar("T")

FAKE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[3])
    from fakes import sensible
    from fakeserver import FakeServer
    with FakeServer(sensible, latency_s=float(sys.argv[2]), port=int(sys.argv[1])):
        print("ready", flush=True)
        time.sleep(10**6)
""")


def emails(round_no: int, mode: str) -> list[dict[str, str]]:
    """Distinct emails per round and mode (the cache is off, but the texts differ anyway)."""
    out = []
    for n, e in enumerate(sample_emails(REQUESTS, prefix=f"{mode}{round_no}-")):
        out.append({"id": e["id"], "subject": f"{e['subject']} #{round_no}-{n}", "body": e["body"],
                    "from": e.get("from", "")})
    return out


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    p = percentiles(latencies, (50, 99))
    return {"rps": len(latencies) / wall, "p50": (p["p50"] or 0.0) * 1000, "p99": (p["p99"] or 0.0) * 1000}


async def load(send: object, items: list[dict[str, str]]) -> dict[str, float]:
    """CLIENTS workers, each sending its share one after another; per-request latency and overall rate."""
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            started = time.perf_counter()
            await send(item)  # type: ignore[operator]
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return summary(latencies, time.perf_counter() - started)


async def over_http(base: str, items: list[dict[str, str]]) -> dict[str, float]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:

        async def send(item: dict[str, str]) -> None:
            response = await http.post("/v1/emails", params={"stages": "route"}, json=item)
            if response.status_code != 200 or response.json()["status"] != "ok":
                raise SystemExit(f"bench: the service answered {response.status_code}: {response.text[:200]}")

        return await load(send, items)


async def in_process(pipeline: Pipeline, items: list[dict[str, str]]) -> dict[str, float]:
    async def send(item: dict[str, str]) -> None:
        result = await pipeline.arun(Email(id=item["id"], subject=item["subject"], body=item["body"],
                                           sender=item["from"]), stages=("route",))
        if result.status != "ok":
            raise SystemExit(f"bench: in-process result failed: {result.error}")

    return await load(send, items)


def cold_in_process(env: dict[str, str], work: Path) -> float:
    code = textwrap.dedent("""
        import asyncio, sys, time
        started = time.perf_counter()
        from mailcascade.pipeline import Pipeline
        from mailcascade.types import Email
        async def main():
            async with Pipeline.from_config() as p:
                r = await p.arun(Email(id="c", subject="refund", body="I want a refund"), stages=("route",))
                assert r.status == "ok", r.error
        asyncio.run(main())
        print(time.perf_counter() - started)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=clean_env(env), capture_output=True,
                          text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def cold_service(env: dict[str, str], work: Path) -> float:
    started = time.perf_counter()
    service = Service(work, env)
    try:
        service.start()  # returns once /healthz answers
        answer = httpx.post(service.base + "/v1/emails", params={"stages": "route"}, timeout=120,
                            json={"id": "c", "subject": "refund", "body": "I want a refund"})
        assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text
        return time.perf_counter() - started
    finally:
        service.stop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """The event loop uvicorn uses (uvloop when installed), for the in-process calls and the clients alike."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-c", FAKE, str(port), str(LATENCY_S), str(ROOT / "tests")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "ready"
        env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "MAILCASCADE_LLM__MODEL": "fake-model",
               "MAILCASCADE_STORE__CACHE": "false", "MAILCASCADE_SERVE__STAGES": "route",
               "MAILCASCADE_STORE__PATH": str(work / "serve.db")}
        settings = load_settings(env={**env, "MAILCASCADE_STORE__PATH": str(work / "inproc.db")})
        pipeline = Pipeline.from_config(settings=settings)
        best: dict[str, dict[str, float]] = {}
        with Service(work, env) as service:
            run(over_http(service.base, emails(99, "w")[:CLIENTS * 2]))  # warm both up
            run(in_process(pipeline, emails(99, "v")[:CLIENTS * 2]))
            for round_no in range(ROUNDS):
                for mode in ("in-process", "service"):
                    items = emails(round_no, mode[0])
                    got = (run(in_process(pipeline, items)) if mode == "in-process" else
                           run(over_http(service.base, items)))
                    if mode not in best or got["rps"] > best[mode]["rps"]:
                        best[mode] = got
        pipeline.close()
        cold = {"service": cold_service(env, work), "in-process": cold_in_process(env, work)}
    finally:
        fake.terminate()
        fake.wait()
    print(f"route-only, {CLIENTS} clients, fake model at {LATENCY_S * 1000:.0f} ms per reply, {REQUESTS} requests "
          f"per round, best of {ROUNDS} rounds")
    print(f"{'mode':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'cold start s':>14}")
    for mode in ("in-process", "service"):
        b = best[mode]
        print(f"{mode:<12}{b['rps']:>10.1f}{b['p50']:>10.1f}{b['p99']:>10.1f}{cold[mode]:>14.2f}")
    ratio_time = best["in-process"]["rps"] / best["service"]["rps"]
    print(f"service / in-process: time per request {ratio_time:.2f}x (target <= 1.2x), "
          f"p50 {best['service']['p50'] / best['in-process']['p50']:.2f}x, "
          f"p99 {best['service']['p99'] / best['in-process']['p99']:.2f}x")


if __name__ == "__main__":
    main()
