"""Store write cost, side by side in one run (python bench/bench_store.py): SQLite vs PostgreSQL, batched vs not.

One email's writes as the pipeline makes them: the verdicts of a route and a draft call, two LLM-cache answers and
one retrieval-cache entry. For N emails (BENCH_EMAILS, default 2,000) each backend is timed
- batched (the store as it is): writes queued, committed by the writer thread, one transaction per batch;
- unbatched: a flush after every write, i.e. one synchronous transaction per write, the old behaviour;
and what the caller pays per email (the time inside the store calls, the hot path), and a cache hit.
PostgreSQL is a real server started on loopback for the run (tests/pgserver.py; needs Debian's postgresql and the
postgres extra). Prints per-email costs and the ratios PostgreSQL/SQLite and unbatched/batched.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from mailcascade.store import Store  # noqa: E402
from mailcascade.types import Attempt, ChatResponse, Finding, Hit, StageRecord  # noqa: E402
from pgserver import PostgresServer, find_binaries  # noqa: E402

N = int(os.environ.get("BENCH_EMAILS", "2000"))
HITS = [Hit(product_id=f"P{i}", passage_id=f"P{i}#0", score=0.5, text="a passage of product text " * 8)
        for i in range(5)]


def record(stage: str) -> StageRecord:
    attempt = Attempt(1, '{"department": "billing", "confidence": 0.9}' * 4, "stop", "clean",
                      (Finding("prefix_text", "offset 0", "repaired"),), 400, 60, 300.0)
    return StageRecord(stage=stage, status="ok", prompt_hash="abc", model="m", attempts=(attempt,))


ROUTE, DRAFT = record("route"), record("draft")
ROUTED = ChatResponse(text="x" * 200, finish_reason="stop", model="m")
DRAFTED = ChatResponse(text="y" * 600, finish_reason="stop", model="m")
SCHEMA = {"type": "object"}


def one_email(store: Store, n: int, sync: bool) -> float:
    """The writes of email n; returns the seconds spent inside the store calls (the caller's cost)."""
    spent = 0.0
    email = f"e{n}"
    calls = [
        lambda: store.log_stage("bench", email, ROUTE, schema=SCHEMA, context=None, actions=[]),
        lambda: store.cache_put(f"route-{n}", ROUTED),
        lambda: store.search_put(f"q-{n}", HITS),
        lambda: store.log_stage("bench", email, DRAFT, schema=SCHEMA, context=None, actions=[]),
        lambda: store.cache_put(f"draft-{n}", DRAFTED),
    ]
    for call in calls:
        started = time.perf_counter()
        call()
        if sync:
            store.flush()
        spent += time.perf_counter() - started
    return spent


def measure(target: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for mode in ("batched", "unbatched"):
        with Store(target) as store:
            started = time.perf_counter()
            caller = sum(one_email(store, n, sync=mode == "unbatched") for n in range(N))
            store.flush()
            out[mode] = (time.perf_counter() - started) / N
            out[f"{mode}_caller"] = caller / N
            assert len(list(store.verdicts(run_id="bench"))) == 2 * N * (2 if mode == "unbatched" else 1)
            store.cache_get("route-1")
            started = time.perf_counter()
            for _ in range(10_000):
                store.cache_get("route-1")
            out["hit"] = (time.perf_counter() - started) / 10_000
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-store-"))
    results = {"sqlite": measure(str(work / "store.db"))}
    if find_binaries() is None:
        print("PostgreSQL is not installed (apt-get install postgresql): SQLite only")
    else:
        with PostgresServer() as pg:
            results["postgres"] = measure(pg.create_database("bench"))
    print(f"{N} emails, 5 writes each (2 verdict rows, 2 LLM-cache and 1 retrieval-cache entries)")
    print(f"{'backend':<9} {'batched':>12} {'unbatched':>12} {'caller, batched':>16} {'cache hit':>10}")
    for name, r in results.items():
        print(f"{name:<9} {r['batched'] * 1e6:9.0f} µs {r['unbatched'] * 1e6:9.0f} µs "
              f"{r['batched_caller'] * 1e6:13.0f} µs {r['hit'] * 1e6:7.1f} µs")
    for name, r in results.items():
        print(f"{name}: unbatched/batched per-email write cost: {r['unbatched'] / r['batched']:.1f}x")
    if "postgres" in results:
        pg, lite = results["postgres"], results["sqlite"]
        print(f"postgres/sqlite per-email write cost: batched {pg['batched'] / lite['batched']:.2f}x, "
              f"unbatched {pg['unbatched'] / lite['unbatched']:.2f}x")


if __name__ == "__main__":
    main()
