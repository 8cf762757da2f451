"""`mailcascade diagnose RUN`: ceiling analysis, first-failing-stage attribution, ablations, learning curves,
leakage and the record-level alarms, written into the run's metrics.json ("diagnosis") and report.

Every re-run it needs (gold upstream inputs, ablated prompt parts) is an eval run in RUN/diagnosis/<variant>,
resumed when it exists; model answers come from the LLM cache. A second `diagnose` makes no new model calls.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mailcascade.catalog import EmbedderLike, Passage
from mailcascade.config import Settings, load_settings, mask_url, settings_from_dict
from mailcascade.eval.diagnose.alarms import Alarm
from mailcascade.eval.diagnose.collect import diagnose_records
from mailcascade.eval.diagnose.curves import learning_curve, router_learning_curve
from mailcascade.eval.diagnose.leakage import leakage, score_jump, tuned_on_eval
from mailcascade.eval.evalset import EvalSet, load_eval_set
from mailcascade.eval.report import load_run, write_report
from mailcascade.eval.runner import EmbeddingCache, EvalOptions, eval_settings, read_records, run_eval
from mailcascade.eval.stats import bootstrap_ci, paired_bootstrap
from mailcascade.llm.base import LLM
from mailcascade.stages.embed_route import email_text
from mailcascade.stages.retrieve import build_query

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Variant:
    """One re-run of (some of) a run's cases with other inputs or settings."""

    name: str
    stages: tuple[str, ...]
    gold: tuple[str, ...] = ()
    change: Callable[[Settings], Settings] | None = None


def _hit5(record: Record) -> float | None:
    scores = record["scores"].get("retrieval")
    return None if scores is None else float(scores["hit_rate@5"])


def _route(record: Record) -> float | None:
    value = record["scores"].get("route_correct")
    return None if value is None else float(value)


def _draft(key: str) -> Callable[[Record], float | None]:
    def get(record: Record) -> float | None:
        scores = record["scores"].get("draft")
        if scores is None:
            return None
        value = scores.get(key)
        return None if value is None else float(value)
    return get


def _cites_relevant(record: Record) -> float | None:
    """1 when the draft cites a relevant product (None when the case has no relevant items or no draft ran)."""
    exp = record["expected"]
    if not exp["relevant"] or record["scores"].get("draft") is None:
        return None
    products = exp.get("relevant_products") or {}
    relevant = {products.get(i, i) for i in exp["relevant"]}
    cited = record["draft"]["cited"] if record["draft"] else []
    return float(any(c in relevant for c in cited))


def e2e_ok(record: Record) -> float:
    """1 when no stage that ran went wrong: routed right, a relevant item in the top 5, a valid draft."""
    route, hit, draft = _route(record), _hit5(record), record["scores"].get("draft")
    ok = route in (None, 1.0) and hit in (None, 1.0) and (draft is None or bool(draft.get("valid")))
    return float(ok and record["status"] == "ok")


def first_failing_stage(record: Record) -> str | None:
    if _route(record) == 0.0:
        return "route"
    if _hit5(record) == 0.0:
        return "retrieve"
    draft = record["scores"].get("draft")
    if draft is not None and not draft.get("valid"):
        return "draft"
    if record["status"] != "ok":
        return next((s["stage"] for s in record["stages"] if s["status"] == "failed"), "pipeline")
    return None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _by_id(records: Sequence[Record]) -> dict[str, Record]:
    return {r["id"]: r for r in records}


def _ran(records: Sequence[Record], stage: str) -> bool:
    return any(s["stage"] == stage and s["status"] in ("ok", "failed") for r in records for s in r["stages"])


class Diagnoser:
    def __init__(self, run_dir: Path, *, data_dir: str | None = None, llm: LLM | None = None,
                 embedder: EmbedderLike | None = None, cache_dir: str | Path = ".mailcascade",
                 ablation_limit: int | None = 40, progress: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.info, self.metrics, self.records = load_run(self.run_dir)
        position = {case_id: i for i, case_id in enumerate(self.info["case_ids"])}
        self.records.sort(key=lambda r: position.get(r["id"], len(position)))
        options = self.info.get("options") or {}
        self.eval_set = self._eval_set(data_dir or options.get("data_dir"))
        self.settings = self._settings()
        self.llm = llm
        self.cache_dir = Path(cache_dir)
        self.ablation_limit = ablation_limit
        self.progress = progress
        self.labels = list(self.info["labels"])
        self.level = self.info.get("relevance_level", "product")
        self.stages = tuple(s for s in ("route", "retrieve", "draft") if _ran(self.records, s))
        from mailcascade.catalog import Embedder

        self.vectors = EmbeddingCache(embedder or Embedder(self.settings.embedding), self.cache_dir / "embeddings")
        self.cache: dict[str, dict[str, int]] = {}  # per variant, this pass: cases run now, reused, LLM cache

    # -- loading ------------------------------------------------------------------------------------------
    def _eval_set(self, data_dir: str | None) -> EvalSet:
        es = self.info["eval_set"]
        path = es.get("definition") or es.get("source")
        eval_set = load_eval_set(path, data_dir=data_dir)
        wanted = set(self.info["case_ids"])
        return dataclasses.replace(eval_set, cases=[c for c in eval_set.cases if c.id in wanted])

    def _settings(self) -> Settings:
        stored = settings_from_dict(self.info["settings"])
        current = load_settings(None)  # connection details (and the secret the run did not store) come from now
        # run.json stores the URL with its password masked: take the live one when it is the same endpoint
        live = current.llm.base_url
        base_url = live if mask_url(live) == stored.llm.base_url else stored.llm.base_url
        return stored.replace(llm=dataclasses.replace(stored.llm, api_key=current.llm.api_key, base_url=base_url))

    # -- re-runs ------------------------------------------------------------------------------------------
    def rerun(self, variant: Variant, case_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        out = self.run_dir / "diagnosis" / variant.name
        eval_set = self.eval_set
        if case_ids is not None:
            keep = set(case_ids)
            eval_set = dataclasses.replace(eval_set, cases=[c for c in eval_set.cases if c.id in keep])
        settings = eval_settings(eval_set, self.settings, self.cache_dir)
        if variant.change is not None:
            settings = variant.change(settings)
        options = EvalOptions(stages=variant.stages, gold=variant.gold, resume=True, progress=self.progress,
                              seed=int(self.info["options"].get("seed", 0)))
        before = len(read_records(out / "cases.jsonl").records)
        run_eval(eval_set, out, options, settings=settings, llm=self.llm, embedder=self.vectors.embedder,
                 cache_dir=self.cache_dir)
        info, _, records = load_run(out)
        stats = info.get("cache") or {}  # this run_eval's own LLM cache counts (0/0 when every case was done)
        row = self.cache.setdefault(variant.name, {"cases": 0, "cases_run": 0, "cases_reused": 0,
                                                   "cache_hits": 0, "cache_misses": 0, "new_model_calls": 0})
        row["cases"] = max(row["cases"], len(records))
        row["cases_run"] += len(records) - before
        row["cases_reused"] += min(before, len(records))
        row["cache_hits"] += int(stats.get("hits") or 0)
        row["cache_misses"] += int(stats.get("misses") or 0)
        row["new_model_calls"] += int(stats.get("misses") or 0)  # a miss is a request to the model
        return records

    # -- ceiling and attribution --------------------------------------------------------------------------
    def ceiling(self) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        rows: list[dict[str, Any]] = []
        base = self.records
        e2e_pred = _mean([e2e_ok(r) for r in base])
        attribution: dict[str, list[str]] = {}
        for r in base:
            stage = first_failing_stage(r)
            if stage:
                attribution.setdefault(stage, []).append(r["id"])
        # per stage: its metric with the predicted upstream input (as run) and with the gold upstream input
        # (route has no upstream), and what the end-to-end share would gain if the stage were perfect
        if "route" in self.stages:
            rows.append({"stage": "route", "metric": "accuracy", "predicted": _mean([_route(r) for r in base]),
                         "gold": None})
        downstream = tuple(s for s in self.stages if s != "route")
        gold_dept = base
        if "route" in self.stages and downstream and self.eval_set.cases[0].expected.department is not None:
            gold_dept = self.rerun(Variant("gold-department", downstream, ("department",)))
            rows[-1]["gain_if_perfect"] = _gain(_mean([e2e_ok(r) for r in gold_dept]), e2e_pred)
        if "retrieve" in self.stages:
            rows.append({"stage": "retrieve", "metric": "hit_rate@5",
                         "predicted": _mean([_hit5(r) for r in base]),
                         "gold": _mean([_hit5(r) for r in gold_dept]) if gold_dept is not base else None})
        if "draft" in self.stages and "retrieve" in self.stages and self.level in ("passage", "product"):
            gold_hits = self.rerun(Variant("gold-hits", ("draft",), ("department", "hits")))
            e2e_dept = _mean([e2e_ok(r) for r in gold_dept])
            e2e_hits = _mean([e2e_ok(r) for r in gold_hits])
            for row in rows:
                if row["stage"] == "retrieve":
                    row["gain_if_perfect"] = _gain(e2e_hits, e2e_dept)
            for key in ("valid", "rouge_l", "grounded_in_relevant"):
                predicted = _mean([_draft(key)(r) for r in base])
                gold = _mean([_draft(key)(r) for r in gold_hits])
                if predicted is not None or gold is not None:
                    rows.append({"stage": "draft", "metric": key,
                                 "predicted": predicted, "gold": gold, "gain_if_perfect": _gain(1.0, e2e_hits)})
            rows.append({"stage": "end-to-end", "metric": "share of cases with no stage wrong",
                         "predicted": e2e_pred, "gold": None})
        else:
            rows.append({"stage": "end-to-end", "metric": "share of cases with no stage wrong",
                         "predicted": e2e_pred, "gold": None})
        return rows, attribution

    # -- ablations ----------------------------------------------------------------------------------------
    def ablations(self) -> tuple[list[dict[str, Any]], list[Alarm]]:
        ids = [r["id"] for r in self.records][: self.ablation_limit]
        tried: list[tuple[str, str, Variant, Variant, Callable[[Record], float | None]]] = []
        s = self.settings
        if "route" in self.stages and s.route.strategy == "llm":
            tried.append(("department descriptions", "route accuracy",
                          Variant("route-with-descriptions", ("route",), (), _route_set(describe=True)),
                          Variant("route-without-descriptions", ("route",), (), _route_set(describe=False)), _route))
            if self.eval_set.train or s.route.examples_path:
                tried.append(("few-shot block", "route accuracy",
                              Variant("route-with-few-shot", ("route",), (), _route_set(few_shot=8)),
                              Variant("route-without-few-shot", ("route",), (), _route_set(few_shot=0)), _route))
        if "draft" in self.stages and "retrieve" in self.stages:
            tried.append(("retrieved context", "draft cites a relevant product",
                          Variant("draft-with-context", ("retrieve", "draft"), ("department",), _draft_set(True)),
                          Variant("draft-without-context", ("retrieve", "draft"), ("department",), _draft_set(False)),
                          _cites_relevant))
        if "retrieve" in self.stages:
            for key, on in (("include_route_in_query", True), ("one_hit_per_product", True)):
                tried.append((f"retrieval.{key}", "hit_rate@5",
                              Variant(f"retrieve-{key}-on", ("retrieve",), ("department",), _retrieval_set(key, on)),
                              Variant(f"retrieve-{key}-off", ("retrieve",), ("department",),
                                      _retrieval_set(key, not on)), _hit5))
        rows: list[dict[str, Any]] = []
        alarms: list[Alarm] = []
        for part, metric, with_part, without_part, score in tried:
            limit = None if with_part.stages == ("retrieve",) else ids
            a = _by_id(self.rerun(with_part, limit))
            b = _by_id(self.rerun(without_part, limit))
            shared = [i for i in a if i in b and score(a[i]) is not None and score(b[i]) is not None]
            if not shared:
                continue
            without = [float(score(b[i]) or 0) for i in shared]
            test = paired_bootstrap(without, [float(score(a[i]) or 0) for i in shared], seed=0)
            row = {"part": part, "metric": metric, "n": len(shared),
                   "with": _mean([score(a[i]) for i in shared]), "without": _mean([score(b[i]) for i in shared]),
                   **{f"delta_{k}": v for k, v in test.items()}}
            rows.append(row)
            if test["ci_high"] < 0:
                worse = [i for i in shared if (score(a[i]) or 0) < (score(b[i]) or 0)]
                alarms.append(Alarm(
                    "part_hurts", "warn", f"Having the {part} lowers {metric} by {-test['delta']:.3f} "
                    f"(95% CI [{test['ci_low']:.3f}, {test['ci_high']:.3f}], n={len(shared)})",
                    "A part of the prompt or configuration that makes the result worse on the same cases is costing "
                    "you. Read the listed cases with and without it (diagnosis/<variant>/cases.jsonl) to see why; "
                    "remove or rewrite the part, then re-run and compare the two runs.",
                    tuple(worse), row))
        return rows, alarms

    # -- learning curves ----------------------------------------------------------------------------------
    def curves(self) -> tuple[list[dict[str, Any]], list[Alarm]]:
        curves: list[dict[str, Any]] = []
        alarms: list[Alarm] = []
        train = [c for c in self.eval_set.train if c.expected.department is not None]
        test = [c for c in self.eval_set.cases if c.expected.department is not None]
        if train and test and "route" in self.stages:
            points = router_learning_curve(
                [email_text(c.email) for c in train], [str(c.expected.department) for c in train],
                [email_text(c.email) for c in test], [str(c.expected.department) for c in test],
                self.vectors, k=self.settings.route.neighbours)
            curves.append({"name": "embedding router: accuracy vs router examples", "x_label": "router examples",
                           "y_label": "accuracy", "points": points})
            alarms += learning_curve(points, name="embedding router", what="router examples")
        if "route" in self.stages and self.settings.route.strategy == "llm" and (
                train or self.settings.route.examples_path):
            points = self._few_shot_curve()
            curves.append({"name": "LLM router: accuracy vs few-shot examples", "x_label": "few-shot examples",
                           "y_label": "accuracy", "points": points})
            alarms += learning_curve(points, name="few-shot examples", what="few-shot examples in the route prompt")
        if "retrieve" in self.stages:
            points = self._catalog_curve()
            if points:
                curves.append({"name": "retrieval: hit rate@5 vs catalogue size", "x_label": "passages indexed",
                               "y_label": "hit rate@5", "points": points})
                alarms += learning_curve(points, name="catalogue size", what="catalogue passages")
        return curves, alarms

    def _few_shot_curve(self, sizes: Sequence[int] = (0, 2, 4, 8)) -> list[dict[str, Any]]:
        """Route accuracy with n few-shot examples in the prompt, on the ablation cases (model calls, cached)."""
        ids = [r["id"] for r in self.records][: self.ablation_limit]
        names = {0: "route-without-few-shot", 8: "route-with-few-shot"}  # the same runs as the ablation
        points = []
        for n in sizes:
            records = self.rerun(Variant(names.get(n, f"route-few-shot-{n}"), ("route",), (), _route_set(few_shot=n)),
                                 ids)
            correct = [v for v in (_route(r) for r in records) if v is not None]
            if correct:
                points.append({"x": n, "y": sum(correct) / len(correct), "ci": list(bootstrap_ci(correct, seed=0)),
                               "n_test": len(correct)})
        return points

    def _catalog_curve(self, fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0)) -> list[dict[str, Any]]:
        """Hit rate@5 when only a random part of the catalogue is indexed (exact search over cached vectors)."""
        from mailcascade.catalog import load_passages, load_source

        settings = eval_settings(self.eval_set, self.settings, self.cache_dir)
        path = settings.catalog_path()
        passages = load_passages(path) if self.eval_set.passages is not None else load_source(path)[0]
        cases = [c for c in self.eval_set.cases if c.expected.relevant]
        if not cases or not passages:
            return []
        pvecs = self.vectors.encode([p.text for p in passages])
        qvecs = self.vectors.encode([build_query(c.email, None, settings.retrieval, settings.input.max_prompt_chars)
                                     for c in cases])
        by_passage = self.level == "passage"

        def key(p: Passage) -> str:
            return p.passage_id if by_passage else p.product_id

        order = random.Random(0).sample(range(len(passages)), len(passages))
        points = []
        for fraction in fractions:
            keep = np.array(sorted(order[: max(1, round(fraction * len(passages)))]))
            sims = qvecs @ pvecs[keep].T
            top = np.argsort(-sims, axis=1)[:, :20]
            hits = []
            for row, case in zip(top, cases, strict=True):
                ids = list(dict.fromkeys(key(passages[keep[j]]) for j in row))[:5]
                hits.append(float(any(i in case.expected.relevant for i in ids)))
            points.append({"x": len(keep), "fraction": fraction, "y": sum(hits) / len(hits),
                           "ci": list(bootstrap_ci(hits, seed=0)), "n_test": len(hits)})
        return points

    # -- leakage ------------------------------------------------------------------------------------------
    def leaks(self) -> list[Alarm]:
        texts = {c.id: email_text(c.email) for c in self.eval_set.cases}
        sources: dict[str, list[str]] = {}
        if router := self._router_texts():
            sources["router_examples"] = router
        sources["prompt_text"] = [p["text"] for p in self.info.get("prompts", {}).values()]
        if "retrieve" in self.stages and self.eval_set.passages is not None:
            sources["catalog_passages"] = [p.text for p in self.eval_set.passages]
        return leakage(texts, sources, self.vectors)

    def _router_texts(self) -> list[str]:
        """Every text the router learned from or was calibrated on: the examples file (else the eval set's train
        split, which the k-NN router and few-shot prompts fall back to), the negative examples, and a trained
        router's own examples (its model_dir), which may come from anywhere."""
        from mailcascade.stages.embed_route import load_examples, negative_texts

        route = self.settings.route
        texts = ([t for t, _ in load_examples(route.examples_path)] if route.examples_path
                 else [email_text(c.email) for c in self.eval_set.train])
        texts += negative_texts(self.settings)
        if route.model_dir and route.strategy in ("trained", "hybrid"):
            from mailcascade.router.model import trained_texts

            texts += trained_texts(route.model_dir)
        return list(dict.fromkeys(texts))

    def history(self) -> list[dict[str, Any]]:
        """Earlier finished runs in the same folder that scored the same cases (same eval set, same case ids)
        with the same stages, oldest first, then this one (like with like: a 30-case sample is never compared
        with a 397-case run)."""
        key = self._comparable(self.info)
        found = []
        for run in sorted(self.run_dir.parent.iterdir()):
            if run.resolve() == self.run_dir.resolve():
                continue
            try:
                info = json.loads((run / "run.json").read_text(encoding="utf-8"))
                metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if (info.get("status") == "done" and self._comparable(info) == key
                    and info.get("created", 0) <= self.info.get("created", 0)):
                found.append({"run": run.name, "metrics": metrics, "created": info.get("created", 0),
                              "case_ids": info.get("case_ids"), "stages": key[2]})
        found.sort(key=lambda h: h["created"])
        return [*found, {"run": self.run_dir.name, "metrics": self.metrics, "created": self.info.get("created", 0),
                         "case_ids": self.info.get("case_ids"), "stages": key[2]}]

    @staticmethod
    def _comparable(info: Mapping[str, Any]) -> tuple[Any, ...]:
        options = info.get("options") or {}
        return (info.get("name"), tuple(info.get("case_ids") or ()), tuple(options.get("stages") or ()),
                tuple(options.get("gold") or ()))

    # -- everything ---------------------------------------------------------------------------------------
    def diagnose(self) -> dict[str, Any]:
        texts = {c.id: email_text(c.email) for c in self.eval_set.cases}
        history = self.history()
        previous = None
        if len(history) >= 2:
            previous = load_run(self.run_dir.parent / history[-2]["run"])[2]
        base = diagnose_records(self.records, self.metrics, self.labels, texts=texts, previous=previous)
        ceiling, attribution = self.ceiling()
        ablations, ablation_alarms = self.ablations()
        curves, curve_alarms = self.curves()
        extra = [*ablation_alarms, *curve_alarms, *self.leaks(), *tuned_on_eval(self.info),
                 *score_jump(history, "routing.accuracy")]
        alarms = [*base["alarms"], *(a.to_dict() for a in extra)]
        alarms.sort(key=lambda a: a["level"] != "warn")
        return {"alarms": alarms, "ceiling": ceiling, "cache": self.cache_summary(),
                "attribution": {k: {"n": len(v), "cases": v} for k, v in attribution.items()},
                "ablations": ablations, "learning_curves": curves, "slices": base["slices"],
                "formats": base["formats"]}


    def cache_summary(self) -> dict[str, Any]:
        """This pass's re-runs: per variant the cases run now and reused, LLM cache hits and misses and the new
        model calls (0 on a second diagnose); the totals; and every earlier pass's totals (from metrics.json)."""
        keys = ("cases_run", "cases_reused", "cache_hits", "cache_misses", "new_model_calls")
        total = {k: sum(v[k] for v in self.cache.values()) for k in keys}
        earlier = ((self.metrics.get("diagnosis") or {}).get("cache") or {}).get("passes") or []
        this = {"pass": len(earlier) + 1, "finished": round(time.time(), 3), **total}
        return {"variants": {name: dict(row) for name, row in sorted(self.cache.items())}, "total": total,
                "passes": [*earlier, this]}


def _gain(perfect: float | None, now: float | None) -> float | None:
    return None if perfect is None or now is None else round(perfect - now, 6)


def _route_set(*, describe: bool | None = None, few_shot: int | None = None) -> Callable[[Settings], Settings]:
    def change(s: Settings) -> Settings:
        route = s.route
        if describe is not None:
            route = dataclasses.replace(route, describe_departments=describe)
        if few_shot is not None:
            route = dataclasses.replace(route, few_shot=few_shot)
        return s.replace(route=route)
    return change


def _draft_set(include: bool) -> Callable[[Settings], Settings]:
    return lambda s: s.replace(draft=dataclasses.replace(s.draft, include_passages=include))


def _retrieval_set(key: str, value: bool) -> Callable[[Settings], Settings]:
    return lambda s: s.replace(retrieval=dataclasses.replace(s.retrieval, **{key: value}))


def diagnose_run(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Diagnose a run, store the result in its metrics.json under "diagnosis", and rewrite its report."""
    run = Path(run_dir)
    diagnosis = Diagnoser(run, **kwargs).diagnose()
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    metrics["diagnosis"] = diagnosis
    tmp = metrics_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, metrics_path)
    write_report(run)
    return diagnosis


def _num(value: Any) -> str:
    return "-" if value is None else (f"{value:+.3f}" if isinstance(value, float) and value < 0 else
                                      f"{value:.3f}" if isinstance(value, float) else str(value))


def format_diagnosis(diagnosis: Mapping[str, Any]) -> str:
    """The alarms, the ceiling table, attribution and ablations as plain text."""
    lines = ["alarms"]
    for a in diagnosis["alarms"] or []:
        cases = ", ".join(a["cases"][:8]) + (f" (+{len(a['cases']) - 8} more)" if len(a["cases"]) > 8 else "")
        lines.append(f"  [{a['level']}] {a['name']}: {a['title']}")
        lines.append(f"      {a['explanation']}")
        if cases:
            lines.append(f"      cases: {cases}")
    if not diagnosis["alarms"]:
        lines.append("  none")
    header = (f"{'ceiling':<12}{'metric':<36}{'predicted upstream':>20}{'gold upstream':>15}"
              f"{'gain if perfect':>17}")
    lines += ["", header]
    for row in diagnosis["ceiling"]:
        lines.append(f"{row['stage']:<12}{row['metric']:<36}{_num(row.get('predicted')):>20}"
                     f"{_num(row.get('gold')):>15}{_num(row.get('gain_if_perfect')):>17}")
    cache = diagnosis.get("cache") or {}
    if cache.get("variants"):
        total = cache["total"]
        lines += ["", f"re-runs (diagnose pass {len(cache.get('passes') or [])}): new model calls: "
                      f"{total['new_model_calls']}, cache hits {total['cache_hits']}, misses {total['cache_misses']}, "
                      f"cases run {total['cases_run']}, reused {total['cases_reused']}",
                  f"  {'variant':<36}{'cases':>6}{'run':>6}{'reused':>8}{'hits':>7}{'misses':>8}{'new calls':>11}"]
        for name, row in cache["variants"].items():
            lines.append(f"  {name:<36}{row['cases']:>6}{row['cases_run']:>6}{row['cases_reused']:>8}"
                         f"{row['cache_hits']:>7}{row['cache_misses']:>8}{row['new_model_calls']:>11}")
        for p in (cache.get("passes") or [])[:-1]:
            lines.append(f"  earlier pass {p['pass']}: new model calls: {p['new_model_calls']}, "
                         f"cache hits {p['cache_hits']}, misses {p['cache_misses']}")
    attribution = diagnosis["attribution"]
    lines += ["", "first failing stage: " + (", ".join(f"{k}={v['n']}" for k, v in attribution.items()) or "none")]
    if diagnosis["ablations"]:
        lines += ["", f"{'ablation':<34}{'metric':<32}{'n':>5}{'with':>8}{'without':>9}{'delta':>8}  95% CI"]
        for row in diagnosis["ablations"]:
            lines.append(f"{row['part']:<34}{row['metric']:<32}{row['n']:>5}{_num(row['with']):>8}"
                         f"{_num(row['without']):>9}{_num(row['delta_delta']):>8}  "
                         f"[{_num(row['delta_ci_low'])}, {_num(row['delta_ci_high'])}]")
    return "\n".join(lines)
