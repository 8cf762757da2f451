"""Per-case eval records, and every metric computed from those records alone.

`metrics.json` is `compute_metrics(records, ...)`; recomputing it from `cases.jsonl` gives the same numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mailcascade.eval.baselines import strongest_constant
from mailcascade.eval.cases import EvalCase
from mailcascade.eval.drafting import drafting_case, drafting_metrics
from mailcascade.eval.oos import threshold_analysis
from mailcascade.eval.retrieval import retrieval_case, retrieval_metrics
from mailcascade.eval.routing import accuracy, bootstrap_routing, macro_f1, routing_correct, routing_metrics
from mailcascade.eval.stats import bootstrap_ci, mean_or_none, percentiles
from mailcascade.failures import outcome
from mailcascade.record import stage_trace
from mailcascade.types import Result

KS = (1, 3, 5, 10)
Record = Mapping[str, Any]


def retrieved_ids(record: Record, level: str) -> list[str]:
    key = "passage_id" if level == "passage" else "product_id"
    return [h[key] for h in record.get("retrieved", [])]


def case_record(
    case: EvalCase, result: Result, *, level: str, labels: Sequence[str], passage_products: Mapping[str, str],
) -> dict[str, Any]:
    """One JSON-ready record: what was expected, what each stage produced and cost, and the per-case scores.

    The eval fills in after the run what it computes for all cases at once: "baselines" ({baseline name: label}),
    "baseline_confidence" ({baseline name: confidence in [0, 1]} for the learned baselines; records of older runs
    have none: read it as None) and "embed_sim".
    """
    exp = case.expected
    stages = []
    for s in result.stages:
        row = stage_trace(s).model_dump(mode="json")
        row["attempt_log"] = [
            {"n": a.number, "status": a.status, "finish_reason": a.finish_reason, "cached": a.cached,
             "codes": [f.to_dict() for f in a.findings], "raw": a.raw}
            for a in s.attempts
        ]
        stages.append(row)
    record: dict[str, Any] = {
        "id": case.id,
        "split": case.split,
        "expected": {
            "department": exp.department,
            "relevant": dict(exp.relevant),
            "reference_reply": exp.reference_reply,
            **({"relevant_products": {p: passage_products.get(p, p) for p in exp.relevant}} if level == "passage"
               else {}),
        },
        "status": result.status,
        "error": result.error,
        "route": ({"department": result.route.department, "confidence": result.route.confidence,
                   "reason": result.route.reason, "decided_by": result.route.decided_by,
                   "oos_score": result.route.oos_score, "before_threshold": result.route.before_threshold}
                  if result.route else None),
        "retrieved": [{"product_id": h.product_id, "passage_id": h.passage_id, "score": round(h.score, 6)}
                      for h in result.hits],
        "draft": ({"reply": result.draft.reply, "cited": list(result.draft.product_ids)} if result.draft else None),
        "stages": stages,
        "baselines": {},
        "baseline_confidence": {},
        "embed_sim": None,
        "meta": {k: v for k, v in case.meta.items() if k not in ("answers", "sources")},
        "email_chars": len(case.email.subject) + len(case.email.body),
    }
    record["scores"] = case_scores(record, level=level, labels=labels)
    return record


def _ran(record: Record, stage: str) -> bool:
    return any(s["stage"] == stage and s["status"] in ("ok", "failed") for s in record["stages"])


def case_scores(record: Record, *, level: str, labels: Sequence[str]) -> dict[str, Any]:
    exp = record["expected"]
    scores: dict[str, Any] = {"route_correct": None, "retrieval": None, "draft": None}
    if _ran(record, "route") and exp["department"] is not None:
        pred = record["route"]["department"] if record["route"] else None
        scores["route_correct"] = routing_correct([exp["department"]], [pred], labels)[0]
    if _ran(record, "retrieve") and exp["relevant"]:
        scores["retrieval"] = retrieval_case(exp["relevant"], retrieved_ids(record, level), KS)
    if _ran(record, "draft"):
        draft = record["draft"]
        scores["draft"] = {
            "valid": draft is not None,
            **drafting_case(
                draft["cited"] if draft else [], [h["product_id"] for h in record["retrieved"]],
                exp["relevant"], draft["reply"] if draft else None, exp["reference_reply"],
                relevant_products=exp.get("relevant_products"),
            ),
        }
    return scores


def compute_metrics(
    records: Sequence[Record], *, labels: Sequence[str], level: str, seed: int = 0,
    prices: tuple[float, float] = (0.0, 0.0),
) -> dict[str, Any]:
    """Every headline number, from the records only (deterministic for a given seed).

    `prices` are USD per million input and output tokens (the run's `llm.usd_per_mtok_in/out`).
    """
    out: dict[str, Any] = {"n_cases": len(records), "n_failed": sum(r["status"] == "failed" for r in records)}
    routed = [r for r in records if _ran(r, "route") and r["expected"]["department"] is not None]
    if routed:
        gold = [r["expected"]["department"] for r in routed]
        pred = [r["route"]["department"] if r["route"] else None for r in routed]
        routing = routing_metrics(gold, pred, labels)
        cis = bootstrap_routing(gold, pred, labels, seed=seed)
        routing["accuracy_ci"], routing["macro_f1_ci"] = list(cis["accuracy"]), list(cis["macro_f1"])
        baselines = {}
        for name in sorted({b for r in routed for b in r["baselines"]}):
            bpred = [r["baselines"].get(name) for r in routed]
            baselines[name] = {"accuracy": accuracy(gold, bpred, labels), "macro_f1": macro_f1(gold, bpred, labels),
                               "accuracy_ci": list(bootstrap_routing(gold, bpred, labels, seed=seed)["accuracy"])}
        routing["baselines"] = baselines
        routing["decided_by"] = decided_by_shares(routed, labels)
        routes = [r["route"] or {} for r in routed]
        if all(route.get("oos_score") is not None and route.get("before_threshold") for route in routes):
            routing["oos_threshold"] = threshold_analysis(gold, pred, [route["before_threshold"] for route in routes],
                                                          [route["oos_score"] for route in routes], labels)
        strongest = strongest_constant(baselines)
        if strongest is not None:
            routing["majority_baseline"] = {"name": strongest[0], "accuracy": strongest[1]}
        out["routing"] = routing
    retrieved = [r for r in records if _ran(r, "retrieve")]
    scored = [r for r in retrieved if r["expected"]["relevant"]]
    if scored:
        retrieval = retrieval_metrics([r["expected"]["relevant"] for r in scored],
                                      [retrieved_ids(r, level) for r in scored], KS)
        retrieval["n_without_relevant"] += len(retrieved) - len(scored)
        for key in ("recall@5", "mrr", "ndcg@5"):
            values = [r["scores"]["retrieval"][key] for r in scored]
            retrieval[f"{key}_ci"] = list(bootstrap_ci(values, seed=seed)) if values else None
        out["retrieval"] = retrieval
    drafted = [r for r in records if _ran(r, "draft")]
    if drafted:
        products: dict[str, str] = {}
        for r in drafted:
            products.update(r["expected"].get("relevant_products") or {})
        drafting = drafting_metrics(
            [r["draft"] is not None for r in drafted],
            [r["draft"]["cited"] if r["draft"] else [] for r in drafted],
            [[h["product_id"] for h in r["retrieved"]] for r in drafted],
            [r["expected"]["relevant"] for r in drafted],
            [r["draft"]["reply"] if r["draft"] else None for r in drafted],
            [r["expected"]["reference_reply"] for r in drafted],
            [r["embed_sim"] for r in drafted],
            relevant_products=products or None,
        )
        rouge = [r["scores"]["draft"]["rouge_l"] for r in drafted
                 if r["scores"]["draft"] and r["scores"]["draft"].get("rouge_l") is not None]
        drafting["rouge_l_ci"] = list(bootstrap_ci(rouge, seed=seed)) if rouge else None
        # groundedness is measured on accepted drafts, after the validator dropped ids that were not retrieved;
        # this is how often the model cited such an id in the first place
        cited_unretrieved = [any("unknown_product_id" in s["failure_codes"]
                                 for s in r["stages"] if s["stage"] == "draft") for r in drafted]
        drafting["cited_unretrieved_share"] = sum(cited_unretrieved) / len(drafted)
        out["drafting"] = drafting
    out["validator"] = validator_funnel(records)
    out["infrastructure"] = infrastructure_errors(records)
    out["cost"] = cost(records, prices)
    return out


def decided_by_shares(routed: Sequence[Record], labels: Sequence[str]) -> dict[str, Any] | None:
    """Who decided each routed case ("router" or "llm", from the hybrid strategy): the share of each and the
    accuracy on it. None when no case says (LLM-only runs and records of older runs)."""
    by: dict[str, list[Record]] = {}
    for r in routed:
        who = (r.get("route") or {}).get("decided_by") or ""
        by.setdefault(who, []).append(r)
    if set(by) <= {""}:
        return None
    out: dict[str, Any] = {}
    for who, rows in sorted(by.items()):
        gold = [r["expected"]["department"] for r in rows]
        pred = [r["route"]["department"] if r["route"] else None for r in rows]
        out[who or "unknown"] = {"n": len(rows), "share": len(rows) / len(routed),
                                 "accuracy": accuracy(gold, pred, labels)}
    return out


def validator_funnel(records: Sequence[Record]) -> dict[str, Any]:
    """Per LLM stage: clean on the first attempt, repaired, lossy, rescued by a re-ask, failed; and codes seen."""
    out: dict[str, Any] = {}
    for r in records:
        for s in r["stages"]:
            log = s.get("attempt_log") or []
            if not log or s["status"] == "error":  # no answer came: an infrastructure error, not a model output
                continue
            row = out.setdefault(s["stage"], {"calls": 0, "clean_first": 0, "repaired_first": 0, "lossy_first": 0,
                                              "rescued": 0, "failed": 0, "codes": Counter()})
            row["calls"] += 1
            row[outcome(len(log) if s["status"] == "ok" else None, log[0]["status"])] += 1
            row["codes"].update({c["code"] for a in log for c in a["codes"]})
    for row in out.values():
        row["codes"] = dict(sorted(row["codes"].items(), key=lambda kv: (-kv[1], kv[0])))
    return out


def infrastructure_errors(records: Sequence[Record]) -> dict[str, Any]:
    """Cases whose model call got no answer (timeouts, refused connections, 5xx, deadlines): kept out of every
    model metric above, counted here; `eval --resume --retry-errors` re-runs them."""
    codes = Counter[str]()
    ids = []
    for r in records:
        errors = [s for s in r["stages"] if s["status"] == "error"]
        if errors:
            ids.append(r["id"])
            codes.update(s.get("error_code") or "unknown" for s in errors)
    return {"n_cases": len(ids), "rate": len(ids) / len(records) if records else 0.0,
            "codes": dict(codes.most_common()), "case_ids": ids[:50]}


def cost(records: Sequence[Record], prices: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    per_stage: dict[str, dict[str, list[float]]] = {}
    per_case_tokens: list[float] = []
    per_case_usd: list[float] = []
    calls = Counter[str]()
    cached = Counter[str]()
    for r in records:
        total = 0
        usd = 0.0
        for s in r["stages"]:
            if s["status"] not in ("ok", "failed"):
                continue
            row = per_stage.setdefault(s["stage"], {"latency_ms": [], "queue_ms": [], "tokens": []})
            row["latency_ms"].append(s["latency_ms"])
            row["queue_ms"].append(s.get("queue_ms", 0.0))  # records of older runs have none
            row["tokens"].append(s["tokens_in"] + s["tokens_out"])
            total += s["tokens_in"] + s["tokens_out"]
            usd += (s["tokens_in"] * prices[0] + s["tokens_out"] * prices[1]) / 1e6
            for a in s.get("attempt_log") or []:
                calls[s["stage"]] += 1
                cached[s["stage"]] += int(a["cached"])
        per_case_tokens.append(total)
        per_case_usd.append(usd)
    return {
        "tokens_per_case": {"mean": mean_or_none(per_case_tokens), **percentiles(per_case_tokens)},
        "usd_per_case": {"mean": mean_or_none(per_case_usd), "total": round(sum(per_case_usd), 6),
                         "prices_usd_per_mtok": list(prices)},
        "stages": {
            name: {"latency_ms": percentiles(v["latency_ms"]), "queue_ms": percentiles(v["queue_ms"]),
                   "tokens_mean": mean_or_none(v["tokens"]),
                   "llm_calls": calls[name], "llm_calls_cached": cached[name]}
            for name, v in per_stage.items()
        },
    }
