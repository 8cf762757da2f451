"""CLI start-up, side by side in one run: `mailcascade --help` and `mailcascade config` vs `python -c pass`.

Run: .venv/bin/python bench/bench_startup_cli.py [--rounds 7]
Each command runs in a fresh interpreter; the best of the rounds is reported, wall time and the child's CPU
time (which the other processes on a shared machine do not inflate) (target: --help <= 0.3 s), with the
ratio to a bare interpreter start and the modules that the import of the CLI costs most (`python -X importtime`).
"""

from __future__ import annotations

import argparse
import os
import resource
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


def _best(cmd: list[str], rounds: int) -> tuple[float, float]:
    """Best wall seconds and best CPU seconds (user + system of the child) over the rounds."""
    wall, cpu = [], []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return min(wall), min(cpu)


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
    best: dict[str, tuple[float, float]] = {}
    for _ in range(2):  # interleave: all measured under the same load
        for name, cmd in COMMANDS.items():
            wall, cpu = _best(cmd, max(1, args.rounds // 2))
            was = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(was[0], wall), min(was[1], cpu))
    base_wall, base_cpu = best["python -c pass"]
    print(f"{'command':<22}{'wall s':>8}{'x python':>10}{'cpu s':>8}{'x python':>10}")
    for name, (wall, cpu) in best.items():
        print(f"{name:<22}{wall:>8.3f}{wall / base_wall:>10.2f}{cpu:>8.3f}{cpu / base_cpu:>10.2f}")
    print("target: mailcascade --help <= 0.3 s")
    print("slowest imports of mailcascade.cli (cumulative us):")
    for micros, module in _slowest_imports():
        print(f"  {micros:>9}  {module.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
