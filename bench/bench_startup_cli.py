"""CLI start-up, side by side in one run: `mailcascade --help` and `mailcascade config` vs `python -c pass`.

Run: .venv/bin/python bench/bench_startup_cli.py [--rounds 7]
Each command runs in a fresh interpreter; the best of the rounds is reported (target: --help <= 0.3 s), with the
ratio to a bare interpreter start and the modules that the import of the CLI costs most (`python -X importtime`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "mailcascade --help": [sys.executable, "-m", "mailcascade.cli", "--help"],
    "mailcascade config": [sys.executable, "-m", "mailcascade.cli", "config"],
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAILCASCADE_"))}
    env["PYTHONPATH"] = str(ROOT / "src")
    return env


def _best(cmd: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def _slowest_imports(n: int = 5) -> list[tuple[int, str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mailcascade.cli"], env=_env(),
                          capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    return sorted(rows, reverse=True)[:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    best = {}
    for _ in range(2):  # interleave: both measured under the same load
        for name, cmd in COMMANDS.items():
            best[name] = min(best.get(name, float("inf")), _best(cmd, max(1, args.rounds // 2)))
    base = best["python -c pass"]
    print(f"{'command':<22}{'best s':>9}{'x python':>10}{'over python s':>15}")
    for name, seconds in best.items():
        print(f"{name:<22}{seconds:>9.3f}{seconds / base:>10.2f}{seconds - base:>15.3f}")
    print("target: mailcascade --help <= 0.3 s")
    print("slowest imports of mailcascade.cli (cumulative us):")
    for micros, module in _slowest_imports():
        print(f"  {micros:>9}  {module.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
