"""Difficulty without the gold label and without the system under test: "worse on easy cases", and likely label
errors.

A case's difficulty is judged only from the *independent* baselines (`alarms.independent_baselines`: the
embedding logistic regression, and the embedding k-NN unless the system is that same k-NN): a case is easy when
they all answer the same department with confidence >= `min_confidence` (record["baseline_confidence"]). The
gold label is never used (so a shuffled gold label cannot make an easy case look hard), nor is the system.
Records of older runs without recorded confidences fall back on the baselines' agreement, else on the message
length (record["email_chars"]).
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
    independent_baselines,
    predicted_department,
    route_correct,
    routed,
    system_learner,
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
    records: Sequence[Record], *, baselines: Sequence[str] | None = None, min_confidence: float = 0.6,
) -> dict[str, dict[str, Any]]:
    """Per routed case: the difficulty signals and whether the case is "easy" (never from gold or system).

    `baselines` defaults to `independent_baselines(records)`. easy = every one of them answered, they all
    answer the same department, and each recorded confidence is >= `min_confidence`. Basis (in each row):
    "confidence" when confidences are recorded; "agreement" when only labels are (two or more baselines: they
    agree; one: it agrees with its own most frequent answers and the message is short); "length" without any
    baseline (easy = at most the median length).
    """
    scored = routed(records)
    if not scored:
        return {}
    keys = list(independent_baselines(scored) if baselines is None else baselines)
    lengths = [float(r.get("email_chars") or 0) for r in scored]
    cut = median(lengths)
    has_conf = any(baseline_confidence(r, k) is not None for r in scored for k in keys)
    basis = "confidence" if keys and has_conf else "agreement" if keys else "length"
    common = frequent_labels([(r.get("baselines") or {}).get(keys[0]) for r in scored]) if keys else set()
    out: dict[str, dict[str, Any]] = {}
    for r, length in zip(scored, lengths, strict=True):
        answers = {k: (r.get("baselines") or {}).get(k) for k in keys}
        confs = {k: baseline_confidence(r, k) for k in keys}
        labels = set(answers.values())
        agree = bool(keys) and None not in labels and len(labels) == 1
        short = length <= cut
        if basis == "confidence":
            easy = agree and all(c is not None and c >= min_confidence for c in confs.values())
        elif basis == "agreement":
            easy = agree and (len(keys) > 1 or (short and answers[keys[0]] in common))
        else:
            easy = short
        out[str(r["id"])] = {"baselines": answers, "baseline_confidence": confs,
                             "consensus": next(iter(labels)) if agree else None, "short": short,
                             "basis": basis, "easy": easy}
    return out


def _compare(easy: Sequence[Record], hard: Sequence[Record], seed: int) -> dict[str, Any]:
    easy_ok = [float(bool(route_correct(r))) for r in easy]
    hard_ok = [float(bool(route_correct(r))) for r in hard]
    low, high = bootstrap_diff(easy_ok, hard_ok, seed=seed)
    p = two_proportion_p(int(sum(easy_ok)), len(easy_ok), int(sum(hard_ok)), len(hard_ok))
    return {"easy_accuracy": sum(easy_ok) / len(easy_ok), "hard_accuracy": sum(hard_ok) / len(hard_ok),
            "ci": [low, high], "p": p}


def worse_on_easy(
    records: Sequence[Record], *, baselines: Sequence[str] | None = None, min_confidence: float = 0.6,
    min_group: int = 5, alpha: float = 0.05, seed: int = 0,
) -> list[Alarm]:
    """Alarm when routing is worse on easy cases than on the hard ones.

    Two tests, Bonferroni-corrected together:
    - all easy cases against all hard ones (shuffled or wrong gold labels on easy cases, a parser that breaks
      on plain emails): names the easy cases the system got wrong;
    - per department the baselines agree on, its easy cases against the other easy cases, when their accuracy
      is also below the hard cases' (the system broken on one department, e.g. swapped labels in the router's
      examples): names every case the baselines send there that the system got wrong.
    Significant: the bootstrap interval of the difference lies above 0 and the two-proportion test gives
    p < the corrected `alpha`, with at least `min_group` cases in each group.
    """
    signals = difficulty(records, baselines=baselines, min_confidence=min_confidence)
    scored = routed(records)
    easy = [r for r in scored if signals[str(r["id"])]["easy"]]
    hard = [r for r in scored if not signals[str(r["id"])]["easy"]]
    if len(easy) < min_group or len(hard) < min_group:
        return []
    groups: dict[str, list[Record]] = {}
    for r in easy:
        groups.setdefault(str(signals[str(r["id"])]["consensus"]), []).append(r)
    groups = {g: rs for g, rs in sorted(groups.items())
              if len(rs) >= min_group and len(easy) - len(rs) >= min_group and len(groups) > 1}
    corrected = alpha / (1 + len(groups))
    overall = _compare(easy, hard, seed)
    results: dict[str, dict[str, Any]] = {"all": {"n": len(easy), **overall, "against": "hard cases",
                                                  "worse": overall["ci"][0] > 0 and overall["p"] < corrected}}
    for g, rs in groups.items():
        others = [r for r in easy if r not in rs]
        res = _compare(rs, others, seed)
        worse = (res["ci"][0] > 0 and res["p"] < corrected and res["easy_accuracy"] < overall["hard_accuracy"])
        results[g] = {"n": len(rs), **res, "against": "the other easy cases", "worse": worse}
    worse_groups = sorted(g for g, res in results.items() if res["worse"] and g != "all")
    if not results["all"]["worse"] and not worse_groups:
        return []
    keys = list(next(iter(signals.values()))["baselines"])
    first = keys[0] if keys else None
    flagged_ids: set[str] = set()
    if results["all"]["worse"]:
        flagged_ids |= {str(r["id"]) for r in easy if not route_correct(r)}
    for r in scored:  # every case the (first) independent baseline sends to a broken department
        answer = (r.get("baselines") or {}).get(first) if first else None
        if answer in worse_groups and not route_correct(r):
            flagged_ids.add(str(r["id"]))
    flagged = [r for r in scored if str(r["id"]) in flagged_ids]
    worst = min(results[g]["easy_accuracy"] for g in (["all"] if results["all"]["worse"] else []) + worse_groups)
    where = "" if results["all"]["worse"] else f" the baselines send to {', '.join(worse_groups)}"
    return [Alarm(
        "worse_on_easy", "warn",
        f"Routing is worse on easy cases{where} ({worst:.2f}) than on hard ones ({overall['hard_accuracy']:.2f})",
        "Easy cases are those that independent baselines (" + (", ".join(keys) or "message length") + ") answer "
        "alike and confidently, judged without the gold label and without the system. They should be the easiest "
        "for the system too. When they are not, something other than difficulty decides: the gold labels of "
        "these cases may be shuffled or mapped wrongly, the router's examples may carry swapped labels (when the "
        "easy cases of some departments are the bad ones), the prompt may steer common requests to the wrong "
        "department, or outputs may be parsed wrongly. Read the cases the system got wrong (listed) next to their "
        "gold labels, the baselines' answer and the system's reason.",
        tuple(str(r["id"]) for r in flagged),
        {"difficulty_from": keys, "basis": next(iter(signals.values()))["basis"], "system": system_learner(scored),
         "min_confidence": min_confidence,
         "easy": {"n": len(easy), "accuracy": overall["easy_accuracy"]},
         "hard": {"n": len(hard), "accuracy": overall["hard_accuracy"]},
         "difference_hard_minus_easy": overall["hard_accuracy"] - overall["easy_accuracy"],
         "difference_ci": overall["ci"], "p_value": overall["p"], "departments": worse_groups,
         "groups": results, "alpha_corrected": corrected,
         "wrong": [{"id": r["id"], "gold": gold_department(r), "system": predicted_department(r),
                    "baselines": signals[str(r["id"])]["baselines"]} for r in flagged]},
    )]


def label_noise(
    records: Sequence[Record], *, baseline_key: str | None = None, min_confidence: float = 0.6,
    warn_share: float = 0.05, warn_min: int = 3,
) -> list[Alarm]:
    """Cases where an independent baseline and the system agree with each other against the gold label.

    The second opinion is `baseline_key`, by default the first of `independent_baselines(records)`: the
    embedding logistic regression when recorded, the k-NN router only when the system is not the k-NN router
    itself (then there is no second opinion and no alarm). The baseline must be confident (>= `min_confidence`)
    when its confidence is recorded. The alarm is "warn" when such cases are at least `warn_share` of the routed
    cases and at least `warn_min`, else "info".
    """
    scored = routed(records)
    if baseline_key is None:
        candidates = independent_baselines(scored)
        if not candidates:
            return []
        baseline_key = candidates[0]
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
    system = system_learner(scored)
    return [Alarm(
        "label_noise", level,
        f"{len(rows)} case(s) where the system and the {baseline_key} baseline agree against the gold label",
        f"Two independent routers (the system, {'an embedding k-NN router' if system == 'knn' else 'an LLM'}, and "
        f"the {baseline_key} baseline, a different learner trained on the train split) chose the same department "
        "and the gold label says otherwise. Some of these are hard, ambiguous emails, but many are label errors "
        "or a label-to-department mapping that sends an intent to the wrong department. Review them; fix the "
        "labels or the mapping, or record them as ambiguous, before tuning the prompt on them.",
        tuple(str(row["id"]) for row in rows),
        {"second_opinion": baseline_key, "system": system, "share": share, "n_routed": len(scored),
         "cases": rows},
    )]
