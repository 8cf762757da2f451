"""Inconsistent format: validator failure rates per stage, prompt hash and model, and their change between runs.

Only stages that called a model are counted (record["stages"][i]["attempts"] > 0). Per call: "failed" = the
stage ended with status "failed" (no valid output after re-asks); "flagged" = the validator saw any failure code
(repaired, re-asked or failed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mailcascade.eval.diagnose.alarms import Alarm, Level, Record, two_proportion_p
from mailcascade.eval.stats import mcnemar


def _calls(records: Sequence[Record]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(str(r["id"]), s) for r in records for s in r.get("stages", [])
            if int(s.get("attempts") or 0) > 0 and s.get("status") in ("ok", "failed")]


def format_table(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per (stage, prompt_hash, model): calls, failed, flagged, re-asked, their rates and the codes seen."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for case_id, s in _calls(records):
        key = (str(s["stage"]), str(s.get("prompt_hash", "")), str(s.get("model", "")))
        row = groups.setdefault(key, {"calls": 0, "failed": 0, "flagged": 0, "reasked": 0, "codes": Counter(),
                                      "failed_cases": []})
        row["calls"] += 1
        codes = list(s.get("failure_codes") or [])
        row["flagged"] += bool(codes)
        row["reasked"] += int(s.get("attempts") or 0) > 1
        row["codes"].update(codes)
        if s["status"] == "failed":
            row["failed"] += 1
            row["failed_cases"].append(case_id)
    out = []
    for (stage, prompt_hash, model), row in sorted(groups.items()):
        out.append({"stage": stage, "prompt_hash": prompt_hash, "model": model, "calls": row["calls"],
                    "failed": row["failed"], "failure_rate": row["failed"] / row["calls"],
                    "flagged": row["flagged"], "flagged_rate": row["flagged"] / row["calls"],
                    "reasked": row["reasked"],
                    "codes": dict(sorted(row["codes"].items(), key=lambda kv: (-kv[1], kv[0]))),
                    "failed_cases": row["failed_cases"]})
    return out


def _per_case(records: Sequence[Record], stage: str, measure: str) -> dict[str, bool]:
    out = {}
    for case_id, s in _calls(records):
        if s["stage"] == stage:
            out[case_id] = s["status"] == "failed" if measure == "failed" else bool(s.get("failure_codes"))
    return out


def format_consistency(
    records: Sequence[Record], previous_records: Sequence[Record] | None = None, *,
    max_failure_rate: float = 0.05, max_flagged_rate: float = 0.2, min_calls: int = 5, alpha: float = 0.05,
) -> list[Alarm]:
    """Alarms on the validator's verdicts.

    - format_failures: a (stage, prompt, model) group with at least `min_calls` calls fails above
      `max_failure_rate`; names the failed cases.
    - format_repairs (info): outputs needed repair or a re-ask in more than `max_flagged_rate` of the calls.
    - mixed_versions: one stage ran with several prompt hashes or models within the run (a resumed run after an
      edit mixes versions).
    - format_change: against `previous_records`, the failed or flagged rate of a stage changed significantly
      (exact McNemar on the cases both runs share, else a two-proportion test; p < `alpha`).
    """
    table = format_table(records)
    alarms: list[Alarm] = []
    for row in table:
        where = f"{row['stage']} (prompt {row['prompt_hash'] or '?'}, model {row['model'] or '?'})"
        if row["calls"] >= min_calls and row["failure_rate"] > max_failure_rate:
            alarms.append(Alarm(
                "format_failures", "warn", f"{row['failure_rate']:.0%} of {where} outputs failed validation",
                "These calls produced no usable output even after repair and re-asks. Look at the most frequent "
                "failure codes: truncated wants a larger max_tokens or a shorter answer, no_json or refusal a "
                "prompt that states the format more firmly (or structured output mode), enum_violation and "
                "unknown_department a prompt that lists the allowed values.",
                tuple(row["failed_cases"]), {k: v for k, v in row.items() if k != "failed_cases"}))
        if row["calls"] >= min_calls and row["flagged_rate"] > max_flagged_rate:
            alarms.append(Alarm(
                "format_repairs", "info", f"{row['flagged_rate']:.0%} of {where} outputs needed repair or a re-ask",
                "The validator rescued these outputs, but each repair costs time or tokens and lossy repairs can "
                "change meaning. The code counts show which habit of the model to address in the prompt or with "
                "structured output.", (), {k: v for k, v in row.items() if k != "failed_cases"}))
    versions: dict[str, list[dict[str, Any]]] = {}
    for row in table:
        versions.setdefault(row["stage"], []).append(row)
    for stage, rows in versions.items():
        if len(rows) > 1:
            alarms.append(Alarm(
                "mixed_versions", "warn", f"Stage {stage} ran with {len(rows)} prompt/model versions in one run",
                "Cases in this run were answered by different prompts or models, typically a run resumed after "
                "an edit. Its metrics mix two systems; start a fresh run directory to score one version.",
                (), {"versions": [{k: row[k] for k in ("prompt_hash", "model", "calls", "failure_rate")}
                                  for row in rows]}))
    if previous_records is not None:
        alarms += _changes(records, previous_records, alpha=alpha)
    return alarms


def _changes(records: Sequence[Record], previous: Sequence[Record], *, alpha: float) -> list[Alarm]:
    alarms = []
    now_versions = {(r["stage"], r["prompt_hash"], r["model"]) for r in format_table(records)}
    before_versions = {(r["stage"], r["prompt_hash"], r["model"]) for r in format_table(previous)}
    stages = sorted({v[0] for v in now_versions} & {v[0] for v in before_versions})
    for stage in stages:
        for measure in ("failed", "flagged"):
            now, before = _per_case(records, stage, measure), _per_case(previous, stage, measure)
            shared = sorted(set(now) & set(before))
            rate_now, rate_before = sum(now.values()) / len(now), sum(before.values()) / len(before)
            if shared:
                p = mcnemar([before[i] for i in shared], [now[i] for i in shared])
                test = f"McNemar on {len(shared)} shared cases"
            else:
                p = two_proportion_p(sum(before.values()), len(before), sum(now.values()), len(now))
                test = "two-proportion test"
            if p >= alpha:
                continue
            worse = rate_now > rate_before
            level: Level = "warn" if worse else "info"
            flipped = tuple(i for i in shared if now[i] != before[i] and now[i] == worse)
            alarms.append(Alarm(
                "format_change", level, f"{stage}: {measure} rate {rate_before:.0%} -> {rate_now:.0%}",
                f"The share of {stage} outputs that {'failed validation' if measure == 'failed' else 'needed repair'} "
                "changed between the runs beyond chance. The versions below show whether the prompt or the model "
                "changed; the listed cases flipped in the direction of the change. Read their raw outputs in "
                "both runs.", flipped,
                {"stage": stage, "measure": measure, "before": rate_before, "now": rate_now, "p_value": p,
                 "test": test,
                 "versions_before": sorted([v[1], v[2]] for v in before_versions if v[0] == stage),
                 "versions_now": sorted([v[1], v[2]] for v in now_versions if v[0] == stage)}))
    return alarms
