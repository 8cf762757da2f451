"""Implausible scores: below the majority baseline, above what label agreement allows, one department for
almost everything, degenerate gold labels, broken metric invariants and NaNs."""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mailcascade.eval.diagnose.alarms import Alarm, Record, gold_department, predicted_department, route_correct, routed
from mailcascade.eval.stats import bootstrap_ci

#: metric names (the part before "@" or "_ci") whose values must lie in [0, 1]
UNIT_METRICS = frozenset({"accuracy", "macro_f1", "f1", "precision", "recall", "hit_rate", "ndcg", "mrr",
                          "invalid_rate", "in_scope_accuracy", "out_of_scope_recall", "rouge_l", "valid_share",
                          "grounded_in_retrieved", "grounded_in_relevant"})
_AT_K = re.compile(r"^(recall|hit_rate)@(\d+)$")
_EPS = 1e-9


def implausible_scores(
    metrics: Mapping[str, Any], records: Sequence[Record], labels: Sequence[str], *,
    agreement_ceiling: float | None = None, min_cases: int = 20, dominant_share: float = 0.8,
    dominant_gap: float = 0.2, degenerate_share: float = 0.95, seed: int = 0,
) -> list[Alarm]:
    """Scores that should make anyone stop and look.

    - below_majority: the upper end of the accuracy CI is below the majority-class baseline's accuracy (the
      recorded "majority" baseline, else the share of the most frequent gold label).
    - too_good: accuracy above `agreement_ceiling` (default None: 0.98, about what two careful annotators
      agree on) with at least `min_cases` routed cases.
    - one_department: one department predicted for >= `dominant_share` of the cases while its gold share is at
      least `dominant_gap` lower.
    - degenerate_labels: one gold department for >= `degenerate_share` of the cases (the set cannot tell a
      router from a constant).
    - broken_invariants: a unit metric (accuracy, precision, recall, nDCG, MRR, ...) outside [0, 1], or recall@k /
      hit_rate@k falling as k grows, in metrics.json or in any case's scores.
    - nan_in_metrics: NaN or infinity anywhere in metrics.
    """
    alarms: list[Alarm] = []
    alarms += _routing_alarms(metrics, records, labels, agreement_ceiling=agreement_ceiling, min_cases=min_cases,
                              dominant_share=dominant_share, dominant_gap=dominant_gap,
                              degenerate_share=degenerate_share, seed=seed)
    alarms += _invariant_alarms(metrics, records)
    return alarms


def _routing_alarms(
    metrics: Mapping[str, Any], records: Sequence[Record], labels: Sequence[str], *, agreement_ceiling: float | None,
    min_cases: int, dominant_share: float, dominant_gap: float, degenerate_share: float, seed: int,
) -> list[Alarm]:
    scored = routed(records)
    if not scored:
        return []
    alarms: list[Alarm] = []
    n = len(scored)
    correct = [float(bool(route_correct(r))) for r in scored]
    accuracy = sum(correct) / n
    ci = (metrics.get("routing") or {}).get("accuracy_ci") or list(bootstrap_ci(correct, seed=seed))
    gold = Counter(gold_department(r) for r in scored)
    top_gold, top_gold_n = min(gold.items(), key=lambda kv: (-kv[1], str(kv[0])))
    routing = metrics.get("routing") or {}
    honest = routing.get("majority_baseline") or {}
    majority_name = str(honest.get("name") or "majority")
    majority_acc = honest.get("accuracy", ((routing.get("baselines") or {}).get("majority") or {}).get("accuracy"))
    majority_from = ("always answering out_of_scope (stronger here than the train-split majority)"
                     if majority_name == "always_out_of_scope" else "the majority-class baseline")
    if not isinstance(majority_acc, int | float) or math.isnan(majority_acc):
        majority_acc, majority_from = top_gold_n / n, f"always answering {top_gold!r}, the most frequent gold label"
    if ci[1] < majority_acc:
        wrong = tuple(r["id"] for r in scored if not route_correct(r)
                      and ((r.get("baselines") or {}).get(majority_name) or top_gold) == gold_department(r))
        alarms.append(Alarm(
            "below_majority", "warn", f"Routing accuracy {accuracy:.3f} is below the majority baseline "
            f"({majority_acc:.3f})",
            f"Even the upper end of the accuracy interval ({ci[1]:.3f}) is below {majority_from}. A router that "
            "loses to a constant is usually broken rather than weak: check that predicted department names match "
            "the configured ones (invalid outputs count as wrong), that the label mapping is right, and that the "
            "prompt lists every department. The cases are those the majority baseline got right and the system "
            "got wrong.", wrong, {"accuracy": accuracy, "accuracy_ci": list(ci), "majority_accuracy": majority_acc,
                                  "n": n}))
    ceiling = 0.98 if agreement_ceiling is None else agreement_ceiling
    if n >= min_cases and accuracy > ceiling:
        alarms.append(Alarm(
            "too_good", "warn", f"Routing accuracy {accuracy:.3f} is above what label agreement makes plausible "
            f"({ceiling:.2f})",
            "Human labels disagree with each other on a few percent of customer emails, so a score above the "
            "agreement ceiling more often means the test cases leaked into what the system was built from (router "
            "examples, few-shot examples, the prompt) or that the labels are trivial, than that the system is "
            "that good. Run the leakage check, look at how the eval set was built, and try a fresh held-out set.",
            (), {"accuracy": accuracy, "ceiling": ceiling, "n": n}))
    preds = Counter(predicted_department(r) for r in scored)
    top_pred, top_pred_n = min(preds.items(), key=lambda kv: (-kv[1], str(kv[0])))
    pred_share, gold_share = top_pred_n / n, gold.get(top_pred, 0) / n
    if pred_share >= dominant_share and pred_share - gold_share >= dominant_gap:
        name = "no valid department" if top_pred is None else repr(top_pred)
        alarms.append(Alarm(
            "one_department", "warn", f"{name} predicted for {pred_share:.0%} of cases (gold: {gold_share:.0%})",
            f"The router answers {name} for almost everything although the gold labels are spread out. This "
            "is the signature of a prompt the model ignores (it copies the first department or an example), a "
            "parser that falls back to a default, or a position bias. Read a few raw outputs, shuffle the "
            "department order in the prompt, and check the validator's failure codes for the route stage. The "
            "cases listed were sent there wrongly.",
            tuple(r["id"] for r in scored if predicted_department(r) == top_pred and gold_department(r) != top_pred),
            {"department": top_pred, "predicted_share": pred_share, "gold_share": gold_share,
             "configured": top_pred in labels, "n": n}))
    if top_gold_n / n >= degenerate_share:
        alarms.append(Alarm(
            "degenerate_labels", "warn", f"{top_gold_n / n:.0%} of the gold labels are {top_gold!r}",
            "Almost every case has the same expected department, so routing accuracy here says little: a "
            "constant router scores as well. Usually the label-to-department mapping sends everything to one "
            "department, or the eval set was filtered to one intent. Review the mapping file and the gold "
            "distribution before reading any routing number from this set.",
            (), {"department": top_gold, "share": top_gold_n / n, "gold_counts": {str(k): v for k, v in gold.items()},
                 "n": n}))
    return alarms


def _invariant_alarms(metrics: Mapping[str, Any], records: Sequence[Record]) -> list[Alarm]:
    nans: list[str] = []
    violations: list[dict[str, Any]] = []
    _walk(metrics, "", nans, violations)
    bad_cases: list[str] = []
    for r in records:
        scores = (r.get("scores") or {}).get("retrieval")
        if isinstance(scores, Mapping):
            found: list[dict[str, Any]] = []
            _check_block(scores, f"case {r['id']}", found)
            if found:
                bad_cases.append(str(r["id"]))
                violations += found
    alarms = []
    if nans:
        alarms.append(Alarm(
            "nan_in_metrics", "warn", f"{len(nans)} metric value(s) are NaN or infinite",
            "A NaN or infinity in the metrics means a division by zero or an empty slice slipped through, and any "
            "average or comparison that touches it is meaningless. Find where the value is computed (the paths are "
            "listed) and make the undefined case explicit (None) instead.", (), {"paths": nans}))
    if violations:
        alarms.append(Alarm(
            "broken_invariants", "warn", f"{len(violations)} metric invariant(s) broken",
            "Some metric breaks a rule it cannot break when computed correctly: a ratio outside [0, 1] (nDCG, "
            "precision, recall, accuracy) or recall@k that falls as k grows. That points at a bug in scoring (a "
            "wrong ideal DCG, duplicate ids counted twice, k larger than the list) or at records edited by hand; "
            "do not trust any number from this run until it is fixed.", tuple(bad_cases),
            {"violations": violations}))
    return alarms


def _walk(value: Any, path: str, nans: list[str], violations: list[dict[str, Any]]) -> None:
    if isinstance(value, Mapping):
        _check_block(value, path or "metrics", violations)
        for key, item in value.items():
            _walk(item, f"{path}.{key}" if path else str(key), nans, violations)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", nans, violations)
    elif isinstance(value, float) and not math.isfinite(value):
        nans.append(path)


def _check_block(block: Mapping[str, Any], where: str, violations: list[dict[str, Any]]) -> None:
    """Unit metrics in [0, 1], and recall@k / hit_rate@k non-decreasing in k, among one dict's own keys."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for key, value in block.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        base = str(key).split("@")[0]
        if base in UNIT_METRICS and not -_EPS <= value <= 1 + _EPS:
            violations.append({"where": where, "metric": str(key), "value": value, "rule": "must lie in [0, 1]"})
        match = _AT_K.match(str(key))
        if match:
            curves.setdefault(match.group(1), []).append((int(match.group(2)), float(value)))
    for name, points in curves.items():
        points.sort()
        for (k1, v1), (k2, v2) in itertools.pairwise(points):
            if v2 < v1 - _EPS:
                violations.append({"where": where, "metric": f"{name}@{k2}", "value": v2,
                                   "rule": f"{name}@k must not fall as k grows ({name}@{k1} = {v1:.4f})"})
