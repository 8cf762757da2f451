"""The quickstart's emails on the embedded model, before (an older revision) and after (this tree), side by side.

    python bench/bench_quickstart.py [--before REV] [--rounds N] [--inputs PATH...] [--variant KEY=VALUE,...]

"before" runs the code of revision REV (default: the commit before the one-slot change) from a temporary git
worktree, with that revision's defaults: llama-cpp-python's own server on the shipped Q4_1 file without flash
attention, llama.cpp on 2 threads for generation and prompt evaluation, no prompt cache, torch on its default
threads, 4 emails in flight and no limit on requests in flight (the server queues them), grammar bounds sent,
routing by the LLM. "after" runs this tree's defaults: one slot (the client queues), 2 emails in flight, llama.cpp
on every core and torch on half, F16 weights with flash attention and this project's server (its grammar sampler),
no grammar bounds, and `[route] strategy = "auto"` (on the embedded model: the k-NN router over the shipped
examples, no route call, so no RAM prompt cache: see `prompt_cache_for`). Each variant gets its own llama.cpp
server at the quickstart's endpoint (LOCAL_BASE_URL, which must be free; started here, stopped after), a fresh
store (no cached answers) and its own catalogue index, built before the clock starts.
`--variant` adds a third run to each round: this tree with those settings (`MAILCASCADE_...` environment variables,
e.g. `MAILCASCADE_LOCAL_SERVER__WEIGHTS=f16,MAILCASCADE_LOCAL_SERVER__FLASH_ATTN=true`) for its CLI and its server.
Prints wall times, route latency and queue percentiles, and the ratios to before (and variant / after).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mailcascade.config import LOCAL_BASE_URL, LOCAL_MODEL, LocalServerSettings, Settings, load_settings  # noqa: E402
from mailcascade.llm.local_server import LocalServer, prompt_cache_for  # noqa: E402

# llama.cpp's extra buffer types (weight repacking, AMX) crash this VM's llama-cpp-python build on any prompt of
# more than one token (segfault in decode): BENCH_NO_EXTRA_BUFTS=1 starts the same server with them off, for both.
NO_EXTRA_BUFTS = (
    "import runpy, llama_cpp.llama as L; d = L.llama_cpp.llama_model_default_params\n"
    "def p():\n    x = d(); x.use_extra_bufts = False; return x\n"
    "L.llama_cpp.llama_model_default_params = p\n"
    "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)"
)
BEFORE = "cc48b5b^"  # main just before the one-slot change
INPUTS = ["data/sample_emails.jsonl", "data/emails"]


def run_variant(name: str, tree: Path, server: LocalServerSettings, env_extra: dict[str, str],
                work: Path, stock_server: bool = False) -> dict[str, float]:
    base_url = LOCAL_BASE_URL  # the quickstart's own endpoint, so each tree's defaults apply as they do there
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCASCADE_")}
    env.update({
        "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "OPENAI_BASE_URL": base_url, "MAILCASCADE_LLM__MODEL": LOCAL_MODEL,
        "MAILCASCADE_STORE__PATH": str(work / f"{name}.db"),
        "MAILCASCADE_CATALOG__INDEX_DIR": str(work / f"{name}-index"),
        **env_extra,
    })
    cli = [sys.executable, "-c", "import sys; from mailcascade.cli import main; sys.exit(main())"]
    subprocess.run([*cli, "index", "build"], cwd=tree, env=env, check=True, capture_output=True)
    out = work / f"{name}.jsonl"
    local = LocalServer(server, base_url)
    command = local.command()
    if stock_server:  # llama-cpp-python's own server, as the before tree ran it (no sampler or parent watch of ours)
        command[1:3] = ["-m", "llama_cpp.server"]
    if os.environ.get("BENCH_NO_EXTRA_BUFTS"):  # see the module docstring
        command[1:3] = ["-c", NO_EXTRA_BUFTS]
    log = (work / f"{name}-server.log").open("wb")
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not local.is_up():
            if proc.poll() is not None:
                raise SystemExit(f"{name}: the llama.cpp server exited with {proc.returncode}")
            time.sleep(0.25)
        started = time.perf_counter()
        done = subprocess.run([*cli, "run", *INPUTS, "--out", str(out), "--no-progress"], cwd=tree, env=env,
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    if done.returncode not in (0, 3, 4):
        raise SystemExit(f"{name}: mailcascade run exited {done.returncode}: {done.stderr[-2000:]}")
    evaluated = [int(m) for m in re.findall(r"prompt eval time = .*/\s*(\d+) tokens",
                                            (work / f"{name}-server.log").read_text(errors="replace"))]
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    if os.environ.get("BENCH_DEBUG"):
        print(name, done.stderr[-1500:], [r.get("error") for r in records[:2]], file=sys.stderr)
    route = [s for r in records for s in r.get("stages", []) if s["stage"] == "route" and s.get("attempts")]
    lat = [s["latency_ms"] for s in route]
    queue = [s.get("queue_ms", 0.0) for s in route]
    return {"seconds": seconds, "emails": len(records), "ok": sum(r["status"] == "ok" for r in records),
            "route_p50_ms": statistics.median(lat) if lat else 0.0,
            "queue_p50_ms": statistics.median(queue) if queue else 0.0,
            "errors": sum(s["status"] == "error" for r in records for s in r.get("stages", [])),
            # prompt tokens the server evaluated (a warm prompt cache skips the shared prefix)
            "prompt_tokens_evaluated": sum(evaluated)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=BEFORE, help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=1, help="before/after pairs, alternating")
    parser.add_argument("--inputs", nargs="+", default=INPUTS, help="what to run (default: the quickstart's)")
    parser.add_argument("--variant", default="", help="KEY=VALUE,...: a third run, this tree with these settings")
    args = parser.parse_args()
    variant_env = dict(item.split("=", 1) for item in args.variant.split(",") if item)
    INPUTS[:] = args.inputs
    if LocalServer(LocalServerSettings(), LOCAL_BASE_URL).is_up():
        raise SystemExit(f"a server answers at {LOCAL_BASE_URL}: stop it first (each variant starts its own there)")
    work = Path(tempfile.mkdtemp(prefix="mc-bench-qs-"))
    old = work / "before-tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.before], cwd=ROOT, check=True,
                   capture_output=True)
    # the old command line: the shipped Q4_1 file, no flash attention, llama-cpp-python's own server
    before_server = LocalServerSettings(n_threads=2, n_threads_batch=2, cache=False, weights="shipped",
                                        flash_attn=False)
    before_env = {"MAILCASCADE_CONCURRENCY": "4"}  # old defaults otherwise (torch threads: torch's own)
    after_env = {"MAILCASCADE_LLM__MAX_IN_FLIGHT": "1"}  # what the embedded base URL gets by default
    after_server = prompt_cache_for(Settings().resolved())  # as the pipeline starts it (no RAM cache: k-NN routing)
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": [], **({"variant": []} if variant_env else {})}
    # the variant's server as the pipeline would start it with those settings (its F16 file converted before the clock)
    variant_server = dataclasses.replace(prompt_cache_for(load_settings(env=variant_env).resolved()),
                                         cache_dir=str(work / "models"))
    try:
        for n in range(args.rounds):
            results["before"].append(run_variant(f"before{n}", old, before_server, before_env, work,
                                                 stock_server=True))
            results["after"].append(run_variant(f"after{n}", ROOT, after_server, after_env, work))
            if variant_env:
                results["variant"].append(run_variant(f"variant{n}", ROOT, variant_server,
                                                      {**after_env, **variant_env}, work))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"quickstart inputs ({', '.join(INPUTS)}) on the embedded SmolLM2 server; before = {args.before}")
    print(f"{'variant':<8}{'emails':>7}{'ok':>5}{'errors':>8}{'seconds':>9}{'route p50 ms':>14}{'queue p50 ms':>14}"
          f"{'prompt tokens evaluated':>25}")
    for name, rows in results.items():
        for r in rows:
            print(f"{name:<8}{r['emails']:>7.0f}{r['ok']:>5.0f}{r['errors']:>8.0f}{r['seconds']:>9.1f}"
                  f"{r['route_p50_ms']:>14.0f}{r['queue_p50_ms']:>14.0f}{r['prompt_tokens_evaluated']:>25.0f}")
    before = statistics.median(r["seconds"] for r in results["before"])
    after = statistics.median(r["seconds"] for r in results["after"])
    print(f"\nafter / before = {after / before:.2f} of the time (target <= 0.5)")
    if variant_env:
        variant = statistics.median(r["seconds"] for r in results["variant"])
        print(f"variant ({args.variant}) / before = {variant / before:.2f}, variant / after = {variant / after:.2f}")


if __name__ == "__main__":
    main()
