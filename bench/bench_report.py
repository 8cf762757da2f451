"""Report and compare-page size and speed for 100 vs 1,000 cases, measured side by side in one run
(python bench/bench_report.py).

Runs of real Bitext utterances through the whole cascade against the loopback fake model server (tests/bigrun.py),
then for each size: the time to write report.html and the compare page (run "a" against run "b"), their sizes,
and, when Chromium is at /usr/bin/chromium, the time headless Chromium takes to load each page and open one case
(`--dump-dom` of page#case-..., minus the same for an empty page: the browser's own start-up). Printed as the
ratio 1,000 / 100: 10 means the cost grows linearly with the cases; the page should stay at or below that.
Needs the shared Bitext data ($MAILCASCADE_DATA_DIR, else ../shared/data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bigrun import big_run  # noqa: E402
from mailcascade.eval.compare_report import write_compare_html  # noqa: E402
from mailcascade.eval.report import write_report  # noqa: E402
from mailcascade.eval.report_cases import case_anchor  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
SIZES = (100, 1000)
ROUNDS = 3


def best(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def load(page: str, profile: Path) -> None:
    subprocess.run([str(CHROMIUM), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                    "--disable-background-networking", f"--user-data-dir={profile}", "--dump-dom", page],
                   capture_output=True, timeout=300, check=True)


def measure(work: Path, n: int) -> dict[str, float]:
    a, b = big_run(work, f"a{n}", n), big_run(work, f"b{n}", n, variant="b")
    out = work / f"compare{n}.html"
    first = next(line for line in (a / "cases.jsonl").read_text().splitlines() if line)
    report = (a / "report.html").as_uri() + f"#{case_anchor(json.loads(first)['id'])}"  # opens one case
    row = {"report: write s": best(lambda: write_report(a)),
           "compare: write s": best(lambda: write_compare_html(a, b, out)),
           "report: MB": (a / "report.html").stat().st_size / 1e6, "compare: MB": out.stat().st_size / 1e6}
    if CHROMIUM.exists():
        empty = work / "empty.html"
        empty.write_text("<!DOCTYPE html><title>empty</title>", encoding="utf-8")
        base = best(lambda: load(empty.as_uri(), work / "profile"))
        row["report: load in Chromium s"] = max(best(lambda: load(report, work / "profile")) - base, 0.0)
        row["compare: load in Chromium s"] = max(best(lambda: load(out.as_uri(), work / "profile")) - base, 0.0)
        row["(Chromium start-up s)"] = base
    return row


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-report-"))
    rows = {n: measure(work, n) for n in SIZES}
    small, large = rows[SIZES[0]], rows[SIZES[1]]
    print(f"{'measure':<34}{SIZES[0]:>10}{SIZES[1]:>10}{'ratio':>10}")
    for key in large:
        ratio = large[key] / small[key] if small[key] else float("nan")
        print(f"{key:<34}{small[key]:>10.3f}{large[key]:>10.3f}{ratio:>10.1f}")
    if not CHROMIUM.exists():
        print("(no Chromium at /usr/bin/chromium: load times not measured)")
    print(f"runs in {work}")


if __name__ == "__main__":
    main()
