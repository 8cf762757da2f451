"""Statistics over the failure log: the funnel per stage, counts and token cost per code, replay, export."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mailcascade.store import Store
from mailcascade.validate import ValidationContext, validate

Row = Mapping[str, Any]


def _calls(rows: Iterable[Row]) -> dict[tuple[str, str, str], list[Row]]:
    """Group attempt rows into stage calls: (run, email, stage) -> attempts in order.

    A call answered from the LLM cache is left out: its verdicts were logged when the model gave them, and a re-run
    from the cache is not a new call and cost no tokens.
    """
    calls: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        calls[(row["run_id"], row["email_id"], row["stage"])].append(row)
    for attempts in calls.values():
        attempts.sort(key=lambda r: r["attempt"])
    return {key: attempts for key, attempts in calls.items() if not attempts[0].get("cached")}


def outcome(accepted_at: int | None, first_status: str) -> str:
    """Where one stage call ends in the funnel: clean_first, repaired_first, lossy_first, rescued or failed.

    `accepted_at` is the attempt whose value was accepted (None: none was), `first_status` the first verdict.
    """
    if accepted_at is None:
        return "failed"
    if accepted_at > 1:
        return "rescued"
    return {"clean": "clean_first", "repaired": "repaired_first"}.get(first_status, "lossy_first")


def funnel(rows: Iterable[Row]) -> dict[str, dict[str, Any]]:
    """Per stage, prompt hash and model ("route c9bd71270973 smollm2"): clean on the first attempt, repaired,
    lossy, rescued by a re-ask at attempt n, failed; and the tokens spent."""
    out: dict[str, dict[str, Any]] = {}
    for (_, _, stage), attempts in _calls(rows).items():
        first = attempts[0]
        key = f"{stage} {first['prompt_hash']} {first['model']}"
        row = out.setdefault(key, {"stage": stage, "prompt_hash": first["prompt_hash"], "model": first["model"],
                                   "calls": 0, "clean_first": 0, "repaired_first": 0, "lossy_first": 0,
                                   "rescued_at": Counter(), "failed": 0, "tokens": 0})
        row["calls"] += 1
        row["tokens"] += sum(a["tokens_in"] + a["tokens_out"] for a in attempts if not a.get("cached"))
        accepted_at = next((a["attempt"] for a in attempts if a["action"] == "accept"), None)
        where = outcome(accepted_at, first["status"])
        if where == "rescued":
            row["rescued_at"][accepted_at] += 1
        else:
            row[where] += 1
    for row in out.values():
        row["rescued_at"] = {str(k): v for k, v in sorted(row["rescued_at"].items())}
    return out


def code_stats(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Per (stage, prompt hash, model, code): outputs with the code, what was done, and the tokens it cost.

    `tokens` counts the outputs that showed the code; `followup_tokens` counts the attempts made because of it.
    """
    stats: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for attempts in _calls(rows).values():
        for i, a in enumerate(attempts):
            next_tokens = (attempts[i + 1]["tokens_in"] + attempts[i + 1]["tokens_out"]) if i + 1 < len(attempts) else 0
            for code in dict.fromkeys(f["code"] for f in a["findings"]):
                key = (a["stage"], a["prompt_hash"], a["model"], code)
                s = stats.setdefault(key, {"stage": key[0], "prompt_hash": key[1], "model": key[2], "code": code,
                                           "outputs": 0, "actions": Counter(), "tokens": 0, "followup_tokens": 0})
                s["outputs"] += 1
                s["actions"].update(f["action"] for f in a["findings"] if f["code"] == code)
                s["tokens"] += a["tokens_in"] + a["tokens_out"]
                s["followup_tokens"] += next_tokens
    result = sorted(stats.values(), key=lambda s: (s["stage"], -s["outputs"], s["code"]))
    for s in result:
        s["actions"] = dict(s["actions"])
    return result


def examples(rows: Iterable[Row], code: str, limit: int = 5) -> list[Row]:
    found = [r for r in rows if any(f["code"] == code for f in r["findings"])]
    return found[:limit]


def _context(data: Mapping[str, Any] | None) -> ValidationContext | None:
    if not data:
        return None
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return ValidationContext(**fields)


def replay(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Re-validate stored raw outputs with the current validator; return one entry per stored verdict."""
    out = []
    for r in rows:
        if r["schema"] is None:
            continue
        verdict = validate(r["raw"], r["schema"], finish_reason=r["finish_reason"], context=_context(r["context"]))
        old_codes = sorted({f["code"] for f in r["findings"]})
        new_codes = sorted(set(verdict.codes))
        out.append({
            "id": r["id"], "run_id": r["run_id"], "email_id": r["email_id"], "stage": r["stage"],
            "attempt": r["attempt"], "old_status": r["status"], "new_status": verdict.status,
            "old_codes": old_codes, "new_codes": new_codes,
            "changed": r["status"] != verdict.status or old_codes != new_codes,
        })
    return out


def export(rows: Iterable[Row], code: str, out_dir: str | Path) -> Path:
    """Write stored outputs with `code` as validator test fixtures (JSONL, one case per line)."""
    path = Path(out_dir) / f"{code}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            if not any(x["code"] == code for x in r["findings"]):
                continue
            case = {
                "id": f"{r['stage']}-{r['id']}", "raw": r["raw"], "schema": r["schema"],
                "finish_reason": r["finish_reason"], "context": r["context"],
                "expected_status": r["status"], "expected_codes": sorted({x["code"] for x in r["findings"]}),
                "source": {"run_id": r["run_id"], "stage": r["stage"], "model": r["model"],
                           "prompt_hash": r["prompt_hash"]},
            }
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    return path


def load_rows(store: Store, run_id: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
    return list(store.verdicts(run_id=run_id, stage=stage))


def format_report(rows: list[dict[str, Any]]) -> str:
    lines = ["funnel per stage, prompt and model (stage calls)"]
    header = f"{'stage':<8}{'prompt':<14}{'model':<24}{'calls':>6}{'clean@1':>9}{'repaired@1':>12}{'lossy@1':>9}" \
             f"  {'rescued by re-ask':<19}{'failed':>7}{'tokens':>9}"
    lines += [header, "-" * len(header)]
    for f in funnel(rows).values():
        rescued = ", ".join(f"@{k}: {v}" for k, v in f["rescued_at"].items()) or "-"
        lines.append(f"{f['stage']:<8}{f['prompt_hash']:<14}{f['model'][:23]:<24}{f['calls']:>6}{f['clean_first']:>9}"
                     f"{f['repaired_first']:>12}{f['lossy_first']:>9}  {rescued:<19}{f['failed']:>7}{f['tokens']:>9}")
    lines += ["", "failure codes per stage, prompt and model"]
    header = f"{'stage':<8}{'prompt':<14}{'model':<24}{'code':<22}{'outputs':>8}{'tokens':>8}{'follow-up':>10}  actions"
    lines += [header, "-" * len(header)]
    for s in code_stats(rows):
        actions = ", ".join(f"{k}={v}" for k, v in s["actions"].items())
        lines.append(f"{s['stage']:<8}{s['prompt_hash']:<14}{s['model'][:23]:<24}{s['code']:<22}{s['outputs']:>8}"
                     f"{s['tokens']:>8}{s['followup_tokens']:>10}  {actions}")
    return "\n".join(lines)
