"""Start-up cost: lazy (what Pipeline does now) vs eager (everything loaded and started up front, as it was).

A route-only run with the embedding router (all-MiniLM-L6-v2, examples from data/sample_emails.jsonl) and the
default settings otherwise (which point at the embedded llama.cpp server). Each mode runs in a fresh process:

* lazy:  `from_config()`, then the first `run(email, stages=("route",))`;
* eager: `from_config()` plus `start()` of every stage (router embedded, catalogue index built, model server
  started: what from_config and `with` used to do), then the same run.

Run: PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_startup.py
Reports ratios measured side by side in one run, not absolute targets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(mode: str, folder: Path) -> None:
    started = time.perf_counter()
    from mailcascade.pipeline import Pipeline
    from mailcascade.types import Email

    imported = time.perf_counter()
    pipeline = Pipeline.from_config(folder / "mailcascade.toml")
    if mode == "eager":
        pipeline.start()  # counted as part of building: the eager from_config + `with` did this
    built = time.perf_counter()
    result = pipeline.run(Email(id="b1", subject="Refund", body="I sent the headphones back, where is my money?"),
                          stages=("route",))
    first = time.perf_counter()
    pipeline.close()
    assert result.status == "ok", result.error
    print(json.dumps({"import_s": imported - started, "from_config_s": built - imported,
                      "first_result_s": first - imported}))


def _config(folder: Path) -> None:
    examples = folder / "examples.jsonl"
    with (ROOT / "data" / "sample_emails.jsonl").open(encoding="utf-8") as src, examples.open("w") as out:
        for line in src:
            case = json.loads(line)
            text = f"{case['email']['subject']}\n{case['email']['body']}"
            out.write(json.dumps({"text": text, "department": case["expected"]["department"]}) + "\n")
    (folder / "mailcascade.toml").write_text(
        '[route]\nstrategy = "embedding"\nexamples_path = "examples.jsonl"\n'
        '[store]\npath = "store.db"\n[catalog]\nindex_dir = "index"\n', encoding="utf-8")


def _measure(mode: str, folder: Path) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(folder)], capture_output=True, text=True,
                          env=env, check=False, cwd=folder)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-2000:]}")
    out: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]))
        return
    rows: dict[str, list[dict[str, float]]] = {"lazy": [], "eager": []}
    for _ in range(args.rounds):
        for mode in ("lazy", "eager"):  # a fresh folder each time: no index or cache from an earlier round
            with tempfile.TemporaryDirectory() as tmp:
                _config(Path(tmp))
                rows[mode].append(_measure(mode, Path(tmp)))
    best = {mode: {k: min(r[k] for r in runs) for k in runs[0]} for mode, runs in rows.items()}
    print(f"{'':34}{'lazy':>10}{'eager':>10}{'lazy/eager':>12}")
    for key, label in (("import_s", "import mailcascade.pipeline"), ("from_config_s", "from_config() (eager: + start)"),
                       ("first_result_s", "first route-only result")):
        lazy, eager = best["lazy"][key], best["eager"][key]
        print(f"{label:34}{lazy:>9.3f}s{eager:>9.3f}s{lazy / eager if eager else float('nan'):>12.3f}")
    print("(best of", args.rounds, "rounds; first result is timed from before from_config; eager builds the index "
          "and starts the model server, or uses one that already answers on the embedded server's port)")


if __name__ == "__main__":
    main()
