"""The agents' feedback as data: statistics per prompt and model, and the next eval set.

Feedback (from `POST /v1/emails/{id}/feedback`) says which department the email went to, the reply the agent sent,
and the outcome (`sent_as_is`, `edited`, `rewritten`, `rerouted`, `discarded`). Joined with the result the service
gave, it yields, per route prompt hash and model, the reroute rate and the confusion matrix of the system's
department against the agent's, and per draft prompt hash and model, the share of drafts sent as is and the
normalised edit distance between draft and sent reply (rapidfuzz's Levenshtein, 0 = unchanged, 1 = nothing kept).
Only the latest feedback per email counts.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mailcascade.errors import MailcascadeError
from mailcascade.eval.cases import Expected, make_case, write_cases
from mailcascade.store import Store

NO_DEPARTMENT = "(none)"  # the system's department when routing did not run or failed
Row = Mapping[str, Any]


def load_feedback(store: Store) -> list[dict[str, Any]]:
    """The latest feedback per email, with the system's record decoded (`record`)."""
    rows = store.feedback_rows()
    for row in rows:
        row["record"] = json.loads(row["record"])
    return rows


def _stage(record: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    return next((s for s in record.get("stages") or [] if s.get("stage") == name), None)


def _distance(draft: str, sent: str) -> float:
    try:
        from rapidfuzz.distance import Levenshtein
    except ImportError:
        raise MailcascadeError("feedback statistics need rapidfuzz: pip install 'mailcascade[serve]'") from None
    return float(Levenshtein.normalized_distance(draft, sent))


def feedback_stats(rows: Sequence[Row]) -> dict[str, Any]:
    """{"emails", "outcomes", "route": [per prompt hash and model], "draft": [per prompt hash and model]}."""
    route: dict[tuple[str, str], list[Row]] = defaultdict(list)
    draft: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        for name, groups in (("route", route), ("draft", draft)):
            stage = _stage(row["record"], name)
            if stage is not None and stage.get("status") not in ("skipped", "given"):
                groups[(str(stage.get("prompt_hash") or ""), str(stage.get("model") or ""))].append(row)
    return {
        "emails": len(rows),
        "outcomes": dict(Counter(str(r["outcome"]) for r in rows)),
        "route": [_route_group(key, group) for key, group in sorted(route.items())],
        "draft": [_draft_group(key, group) for key, group in sorted(draft.items())],
    }


def _route_group(key: tuple[str, str], rows: Sequence[Row]) -> dict[str, Any]:
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    moved = 0
    for row in rows:
        system = row["record"].get("department") or NO_DEPARTMENT
        confusion[system][str(row["department"])] += 1
        moved += system != row["department"]
    return {"prompt_hash": key[0], "model": key[1], "n": len(rows), "reroute_rate": moved / len(rows),
            "confusion": {s: dict(agents) for s, agents in sorted(confusion.items())}}


def _draft_group(key: tuple[str, str], rows: Sequence[Row]) -> dict[str, Any]:
    with_draft = [r for r in rows if r["record"].get("draft")]
    sent = [r for r in with_draft if r["outcome"] != "discarded"]
    distances = [_distance(str(r["record"]["draft"]), str(r["sent_reply"])) for r in sent]
    return {"prompt_hash": key[0], "model": key[1], "n": len(rows),
            "sent_as_is": sum(r["outcome"] == "sent_as_is" for r in rows) / len(rows),
            "discarded": sum(r["outcome"] == "discarded" for r in rows) / len(rows),
            "edit_distance": sum(distances) / len(distances) if distances else None,
            "edit_distance_n": len(distances)}


def format_stats(stats: Mapping[str, Any]) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(stats["outcomes"].items()))
    lines = [f"feedback on {stats['emails']} emails ({outcomes or 'none'})", "", "routing (system vs agent)",
             f"{'prompt':<14}{'model':<28}{'n':>6}{'reroute rate':>14}"]
    for g in stats["route"]:
        lines.append(f"{g['prompt_hash'][:12]:<14}{g['model'][:27]:<28}{g['n']:>6}{g['reroute_rate']:>14.3f}")
        for system, agents in g["confusion"].items():
            cells = ", ".join(f"{agent} {n}" for agent, n in sorted(agents.items()))
            lines.append(f"    system {system} -> agent {cells}")
    lines += ["", "drafting", f"{'prompt':<14}{'model':<28}{'n':>6}{'sent as is':>12}{'discarded':>11}"
              f"{'edit distance':>15}"]
    for g in stats["draft"]:
        distance = "-" if g["edit_distance"] is None else f"{g['edit_distance']:.3f} (n={g['edit_distance_n']})"
        lines.append(f"{g['prompt_hash'][:12]:<14}{g['model'][:27]:<28}{g['n']:>6}{g['sent_as_is']:>12.3f}"
                     f"{g['discarded']:>11.3f}{distance:>15}")
    return "\n".join(lines)


def export_cases(rows: Sequence[Row], out: str | Path) -> tuple[int, int]:
    """Write the feedback as an eval cases file: `expected.department` is the agent's, `reference_reply` the reply
    sent (none for a discarded draft). Returns (cases written, emails left out because their text was not stored).
    """
    cases = []
    missing = 0
    for row in rows:
        subject, body = row.get("subject") or "", row.get("body") or ""
        if not subject.strip() and not body.strip():
            missing += 1
            continue
        reply = str(row["sent_reply"]) if row["outcome"] != "discarded" and str(row["sent_reply"]).strip() else None
        meta = {"outcome": row["outcome"], "system_department": row["record"].get("department"),
                "feedback_id": row["feedback_id"]}
        cases.append(make_case(str(row["email_id"]), subject=subject, body=body, sender=row.get("sender") or "",
                               expected=Expected(department=str(row["department"]), reference_reply=reply),
                               meta=meta))
    if not cases:
        raise MailcascadeError(f"nothing to export: {len(rows)} emails have feedback but none has its text stored "
                               "(set store.store_email_bodies = true before serving; see README)" if rows else
                               "nothing to export: no feedback in the store yet")
    write_cases(out, cases)
    return len(cases), missing
