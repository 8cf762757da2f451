"""Summaries of a batch of results, as data and as a plain-text table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from mailcascade.types import Result


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(results: Sequence[Result]) -> dict[str, Any]:
    stages: dict[str, dict[str, Any]] = {}
    for r in results:
        for s in r.stages:
            row = stages.setdefault(s.stage, {"ok": 0, "failed": 0, "error": 0, "skipped": 0, "attempts": 0,
                                              "tokens_in": 0, "tokens_out": 0, "latency_ms": [], "queue_ms": [],
                                              "codes": Counter()})
            row[s.status] = row.get(s.status, 0) + 1
            row["attempts"] += len(s.attempts)
            row["tokens_in"] += s.tokens_in
            row["tokens_out"] += s.tokens_out
            row["latency_ms"].append(s.latency_ms)
            row["queue_ms"].append(s.queue_ms)
            row["codes"].update(s.failure_codes)
    for row in stages.values():
        lat = row.pop("latency_ms")
        row["latency_p50_ms"] = round(percentile(lat, 0.5), 1)
        row["latency_p95_ms"] = round(percentile(lat, 0.95), 1)
        row["queue_p50_ms"] = round(percentile(row.pop("queue_ms"), 0.5), 1)  # waiting for a server slot
        row["codes"] = dict(row["codes"].most_common())
    return {
        "emails": len(results),
        "ok": sum(r.status == "ok" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "departments": dict(Counter(r.department or "-" for r in results).most_common()),
        "stages": stages,
        "errors": dict(Counter(r.error.split(":")[0] for r in results if r.error).most_common(5)),
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"emails: {summary['emails']}   ok: {summary['ok']}   failed: {summary['failed']}", ""]
    header = f"{'stage':<10}{'ok':>5}{'failed':>8}{'error':>7}{'skipped':>9}{'calls':>7}{'tok in':>9}{'tok out':>9}" \
             f"{'p50 ms':>9}{'p95 ms':>9}{'queue p50':>10}  failure codes"
    lines.append(header)
    lines.append("-" * len(header))
    for name, row in summary["stages"].items():
        codes = ", ".join(f"{c}={n}" for c, n in row["codes"].items()) or "-"
        lines.append(f"{name:<10}{row['ok']:>5}{row['failed']:>8}{row['error']:>7}{row['skipped']:>9}{row['attempts']:>7}"
                     f"{row['tokens_in']:>9}{row['tokens_out']:>9}{row['latency_p50_ms']:>9}"
                     f"{row['latency_p95_ms']:>9}{row['queue_p50_ms']:>10}  {codes}")
    lines.append("")
    lines.append("departments: " + ", ".join(f"{d}={n}" for d, n in summary["departments"].items()))
    if summary["errors"]:
        lines.append("top errors: " + "; ".join(f"{e} ({n})" for e, n in summary["errors"].items()))
    return "\n".join(lines)
