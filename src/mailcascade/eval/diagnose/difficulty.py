"""Difficulty without the system under test: "worse on easy cases", and likely label errors.

A case's difficulty is judged from what does not depend on the system: whether the embedding k-NN baseline gets
it right (record["baselines"][key]) and how confidently (record["baseline_confidence"][key], when the run
recorded it), the message length (record["email_chars"]) and how frequent its gold label is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from statistics import median
from typing import Any

from mailcascade.eval.diagnose.alarms import (
    Alarm,
    Level,
    Record,
    baseline_confidence,
    bootstrap_diff,
    gold_department,
    predicted_department,
    route_correct,
    routed,
    two_proportion_p,
)


def frequent_labels(gold: Sequence[str | None], share: float = 0.5) -> set[str | None]:
    """The most frequent labels that together cover at least `share` of the cases."""
    counts = Counter(gold)
    out: set[str | None] = set()
    covered = 0
    for label, count in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        if covered >= share * len(gold):
            break
        out.add(label)
        covered += count
    return out


def difficulty(
    records: Sequence[Record], *, embed_baseline_key: str = "embedding_knn", min_confidence: float = 0.6
) -> dict[str, dict[str, Any]]:
    """Per routed case: the difficulty signals and whether the case is "easy".

    easy = the baseline is right (with confidence >= `min_confidence` when recorded) and the message is short
    (at most the median length) or its label frequent (among the labels covering half the cases). Without any
    baseline prediction in the records: easy = short and frequent.
    """
    scored = routed(records)
    if not scored:
        return {}
    lengths = [float(r.get("email_chars") or 0) for r in scored]
    cut = median(lengths)
    frequent = frequent_labels([gold_department(r) for r in scored])
    has_baseline = any((r.get("baselines") or {}).get(embed_baseline_key) is not None for r in scored)
    out: dict[str, dict[str, Any]] = {}
    for r, length in zip(scored, lengths, strict=True):
        gold = gold_department(r)
        base = (r.get("baselines") or {}).get(embed_baseline_key)
        conf = baseline_confidence(r, embed_baseline_key)
        base_right = base is not None and base == gold and (conf is None or conf >= min_confidence)
        short, freq = length <= cut, gold in frequent
        easy = base_right and (short or freq) if has_baseline else short and freq
        out[str(r["id"])] = {"baseline": base, "baseline_confidence": conf, "baseline_right": base_right,
                             "short": short, "frequent_label": freq, "easy": easy}
    return out


def worse_on_easy(
    records: Sequence[Record], *, embed_baseline_key: str = "embedding_knn", min_confidence: float = 0.6,
    min_group: int = 5, alpha: float = 0.05, seed: int = 0,
) -> list[Alarm]:
    """Alarm when routing accuracy on the easy slice is lower than on the hard one, significantly.

    Significant: the bootstrap interval of (hard - easy) accuracy lies above 0 and the two-proportion test gives
    p < `alpha`, with at least `min_group` cases in each slice. Names the easy cases the system got wrong.
    """
    signals = difficulty(records, embed_baseline_key=embed_baseline_key, min_confidence=min_confidence)
    scored = routed(records)
    easy = [r for r in scored if signals[str(r["id"])]["easy"]]
    hard = [r for r in scored if not signals[str(r["id"])]["easy"]]
    if len(easy) < min_group or len(hard) < min_group:
        return []
    easy_ok = [float(bool(route_correct(r))) for r in easy]
    hard_ok = [float(bool(route_correct(r))) for r in hard]
    easy_acc, hard_acc = sum(easy_ok) / len(easy_ok), sum(hard_ok) / len(hard_ok)
    low, high = bootstrap_diff(easy_ok, hard_ok, seed=seed)
    p = two_proportion_p(int(sum(easy_ok)), len(easy_ok), int(sum(hard_ok)), len(hard_ok))
    if not (low > 0 and p < alpha):
        return []
    wrong = [r for r in easy if not route_correct(r)]
    return [Alarm(
        "worse_on_easy", "warn", f"Routing is worse on easy cases ({easy_acc:.2f}) than on hard ones ({hard_acc:.2f})",
        "Cases that a plain embedding nearest-neighbour router gets right (short messages, frequent departments) "
        "should be the easiest for the system too. When they are not, something other than difficulty decides: "
        "the labels of these cases may be shuffled or mapped wrongly, the prompt may steer common requests to "
        "the wrong department, or outputs of these cases may be parsed wrongly. Read the easy cases the system "
        "got wrong (listed) next to their gold labels and the system's reason.",
        tuple(str(r["id"]) for r in wrong),
        {"easy": {"n": len(easy), "accuracy": easy_acc}, "hard": {"n": len(hard), "accuracy": hard_acc},
         "difference_hard_minus_easy": hard_acc - easy_acc, "difference_ci": [low, high], "p_value": p,
         "easy_wrong": [{"id": r["id"], "gold": gold_department(r), "system": predicted_department(r),
                         "baseline": signals[str(r["id"])]["baseline"]} for r in wrong]},
    )]


def label_noise(
    records: Sequence[Record], *, baseline_key: str = "embedding_knn", min_confidence: float = 0.6,
    warn_share: float = 0.05, warn_min: int = 3,
) -> list[Alarm]:
    """Cases where the baseline and the system agree with each other against the gold label.

    The baseline must be confident (>= `min_confidence`) when its confidence is recorded. The alarm is "warn"
    when such cases are at least `warn_share` of the routed cases and at least `warn_min`, else "info".
    """
    scored = routed(records)
    rows: list[dict[str, Any]] = []
    for r in scored:
        base = (r.get("baselines") or {}).get(baseline_key)
        pred, gold = predicted_department(r), gold_department(r)
        conf = baseline_confidence(r, baseline_key)
        if base is None or pred is None or base != pred or pred == gold:
            continue
        if conf is not None and conf < min_confidence:
            continue
        route = r.get("route") or {}
        rows.append({"id": r["id"], "gold": gold, "system": pred, "baseline": base,
                     "system_confidence": route.get("confidence"), "baseline_confidence": conf,
                     "system_reason": route.get("reason")})
    if not rows:
        return []
    share = len(rows) / len(scored)
    level: Level = "warn" if share >= warn_share and len(rows) >= warn_min else "info"
    return [Alarm(
        "label_noise", level, f"{len(rows)} case(s) where the system and the baseline agree against the gold label",
        "Two independent routers (the system and the embedding nearest-neighbour baseline) chose the same "
        "department and the gold label says otherwise. Some of these are hard, ambiguous emails, but many are "
        "label errors or a label-to-department mapping that sends an intent to the wrong department. Review "
        "them; fix the labels or the mapping, or record them as ambiguous, before tuning the prompt on them.",
        tuple(str(row["id"]) for row in rows), {"share": share, "n_routed": len(scored), "cases": rows},
    )]
