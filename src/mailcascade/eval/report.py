"""The run report: one self-contained HTML file (inline CSS and SVG, nothing external) and a terminal summary."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from mailcascade.errors import EvalError, MailcascadeError
from mailcascade.eval import svg
from mailcascade.eval.records import compute_metrics
from mailcascade.eval.report_cases import CSS as CASES_CSS
from mailcascade.eval.report_cases import case_link, cases_section, failure_codes
from mailcascade.jsonl import read_jsonl_records
from mailcascade.types import OUT_OF_SCOPE

MAX_WORST = 20
FUNNEL = (("clean_first", "clean first"), ("repaired_first", "repaired"), ("lossy_first", "lossy"),
          ("rescued", "rescued"), ("failed", "failed"))
FUNNEL_COLOURS = ("#38a169", "#2b6cb0", "#dd6b20", "#805ad5", "#c53030")
CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 20px 40px;color:#222}
h1{margin-bottom:4px}h2{border-bottom:2px solid #2b6cb0;padding-bottom:3px;margin-top:36px}
nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f0f4f8}td:first-child,th:first-child{text-align:left}
.note{color:#666;font-size:13px}
.alarm-warn{border-left:4px solid #dd6b20;padding-left:8px}.alarm-error{border-left:4px solid #c53030;padding-left:8px}
.alarm-info{border-left:4px solid #2b6cb0;padding-left:8px}
pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;word-break:break-word;max-height:400px;overflow:auto}
svg.chart{display:block;margin:8px 0}code{font-size:12px}
.diff .add{background:#e6ffed}.diff .del{background:#ffeef0}
"""


# ------------------------------------------------------------------ loading


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalError(f"{path}: cannot read ({exc})") from exc


def read_cases(path: Path) -> list[dict[str, Any]]:
    """Complete records of a cases.jsonl (an unterminated last line, from a killed run, is ignored)."""
    if not path.is_file():
        raise EvalError(f"{path.parent} is not a run directory: no cases.jsonl")
    try:
        return read_jsonl_records(path, fix="delete that line, or re-run that case with `eval --resume`").records
    except MailcascadeError as exc:
        raise EvalError(str(exc)) from None


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """run.json, metrics.json (recomputed from the records when absent) and the records of a run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise EvalError(f"{run_dir} is not a run directory: no run.json")
    info = read_json(run_dir / "run.json")
    records = read_cases(run_dir / "cases.jsonl")
    if (run_dir / "metrics.json").is_file():
        metrics = read_json(run_dir / "metrics.json")
    else:
        seed = int((info.get("options") or {}).get("seed", 0))
        llm = (info.get("settings") or {}).get("llm") or {}
        prices = (float(llm.get("usd_per_mtok_in", 0.0)), float(llm.get("usd_per_mtok_out", 0.0)))
        metrics = compute_metrics(records, labels=info.get("labels", []), level=info.get("relevance_level", "product"),
                                  prices=prices,
                                  seed=seed)
    if not isinstance(info, dict) or not isinstance(metrics, dict):
        raise EvalError(f"{run_dir}: run.json and metrics.json must hold JSON objects")
    return info, metrics, records


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.html from the run's files; returns its path."""
    run_dir = Path(run_dir)
    info, metrics, records = load_run(run_dir)
    out = run_dir / "report.html"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(render_report(info, metrics, records), encoding="utf-8")
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------ formatting helpers


def num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ci_text(ci: Sequence[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"


class Html(str):
    """A table cell that is already HTML (links), not text to escape."""


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = "".join("<tr>" + "".join(f"<td>{v if isinstance(v, Html) else escape(num(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{escape(title)}</h2>{body}</section>'


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def when(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ts), tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError):
        return "–"


def headline_rows(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(baseline names, rows of [metric, value, ci, *baseline values]) for the headline table."""
    routing, retrieval, drafting = (metrics.get(k) or {} for k in ("routing", "retrieval", "drafting"))
    base = routing.get("baselines") or {}
    known = ("majority", "embedding_knn")
    names = sorted(base, key=lambda n: (known.index(n) if n in known else len(known), n))
    rows: list[list[Any]] = []

    def add(label: str, value: Any, ci: Any = None, key: str | None = None) -> None:
        bvals = [(base[n].get(key) if key else None) for n in names]
        rows.append([label, value, ci_text(ci), *bvals])

    if routing:
        add("route accuracy", routing.get("accuracy"), routing.get("accuracy_ci"), "accuracy")
        add("route macro-F1", routing.get("macro_f1"), routing.get("macro_f1_ci"), "macro_f1")
        add("route invalid rate", routing.get("invalid_rate"))
        add("out-of-scope recall", routing.get("out_of_scope_recall"))
    if retrieval:
        for key, label in (("recall@5", "retrieval recall@5"), ("mrr", "retrieval MRR"),
                           ("ndcg@5", "retrieval nDCG@5"), ("hit_rate@5", "retrieval hit rate@5")):
            if key in retrieval:
                add(label, retrieval.get(key), retrieval.get(f"{key}_ci"))
    if drafting:
        add("draft valid share", drafting.get("valid_share"))
        add("draft grounded in retrieved", drafting.get("grounded_in_retrieved"))
        add("draft cited an unretrieved id", drafting.get("cited_unretrieved_share"))
        add("draft ROUGE-L", drafting.get("rouge_l"), drafting.get("rouge_l_ci"))
        add("draft embedding similarity", drafting.get("embed_sim"))
    return names, rows


# ------------------------------------------------------------------ sections


def header(info: Mapping[str, Any], metrics: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    eval_set = info.get("eval_set") or {}
    model = ((info.get("settings") or {}).get("llm") or {}).get("model")
    # the stages that called a model (a k-NN route or retrieval has no prompt and names its index or "knn")
    llm_stages = sorted({s["stage"] for r in records for s in r.get("stages", []) if s.get("prompt_hash")})
    seen = sorted({s["model"] for r in records for s in r.get("stages", []) if s.get("model")})
    rows: list[list[Any]] = [
        ["eval set", eval_set.get("name") or info.get("name")],
        ["cases", f"{metrics.get('n_cases')} of {eval_set.get('n_cases', '?')} ({metrics.get('n_failed')} failed)"],
        ["date", f"{when(info.get('created'))} (finished {when(info.get('finished'))})"],
        ["model", (model if seen == [model] else f"{model} (records: {', '.join(seen)})") if llm_stages
         else f"no LLM call ({', '.join(seen) or 'no model'})"],
        ["relevance level", info.get("relevance_level")],
        ["stages", ", ".join((info.get("options") or {}).get("stages") or [])],
    ]
    infra = metrics.get("infrastructure") or {}
    if infra.get("n_cases"):
        codes = ", ".join(f"{c}={n}" for c, n in (infra.get("codes") or {}).items())
        rows.append(["infrastructure errors", f"{infra['n_cases']} cases ({infra['rate']:.1%}: {codes}); not model "
                     "outputs, left out of every model metric; `eval --resume --retry-errors` re-runs them"])
    gold = (info.get("options") or {}).get("gold")
    if gold:
        rows.append(["gold upstream input", ", ".join(gold)])
    for name, p in sorted((info.get("prompts") or {}).items()):
        if name in llm_stages:
            rows.append([f"prompt {name}", f"{p.get('hash')} (version {p.get('version')})"])
    return f"<h1>mailcascade eval: {escape(str(rows[0][1]))}</h1>" + table(["", ""], rows)


def headline(metrics: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    names, rows = headline_rows(metrics)
    source = info.get("baseline_source") or {}
    notes = "; ".join(f"{n}: learned from {source[n]}" for n in names if n in source)
    body = table(["metric", "system", "95% CI", *names], rows)
    return section("summary", "Headline metrics", body + (note(f"Baselines ({notes}).") if notes else ""))


def routing_section(routing: Mapping[str, Any]) -> str:
    conf = routing["confusion"]
    chart = svg.heatmap(conf["labels"], conf["columns"], conf["matrix"], title="Routing confusion matrix")
    per = [[label, s["precision"], s["recall"], s["f1"], s["support"], s["predicted"]]
           for label, s in routing["per_label"].items()]
    text = f"{routing['n']} cases, {routing['n_invalid']} invalid outputs."
    if routing.get("unknown_gold_labels"):
        text += f" Gold labels not configured: {', '.join(routing['unknown_gold_labels'])}."
    body = (note(text + " Rows: gold; columns: predicted; colour: share of the row.") + chart
            + table(["department", "precision", "recall", "F1", "support", "predicted"], per)
            + threshold_html(routing.get("oos_threshold") or {}))
    return section("routing", "Routing", body)


def retrieval_section(retrieval: Mapping[str, Any]) -> str:
    ks = retrieval["ks"]
    names = (("recall", "recall@k"), ("ndcg", "nDCG@k"), ("hit_rate", "hit rate@k"), ("precision", "precision@k"))
    series = [(label, [(float(k), retrieval.get(f"{key}@{k}")) for k in ks]) for key, label in names]
    chart = svg.line_chart(series, title="Retrieval metrics over k", x_label="k", y_label="score")
    rows = [[f"k={k}", *(retrieval.get(f"{key}@{k}") for key, _ in names)] for k in ks]
    text = (f"{retrieval['n_scored']} cases scored, {retrieval['n_without_relevant']} without relevant ids; "
            f"MRR {num(retrieval.get('mrr'))}. nDCG@k: gain 2^grade - 1, discount 1 / log2(rank + 1), normalised by "
            "the ideal order of the case's own grades; recall@k: relevant ids in the top k / all relevant ids.")
    return section("retrieval", "Retrieval", note(text) + chart + table(["k", *(n for _, n in names)], rows))


def drafting_section(d: Mapping[str, Any]) -> str:
    rows = [
        ["valid share", d.get("valid_share"), f"{d.get('n')} drafts"],
        ["grounded in retrieved", d.get("grounded_in_retrieved"), f"{d.get('n_citing')} citing, after the validator "
         "dropped unretrieved ids"],
        ["cited an unretrieved id", d.get("cited_unretrieved_share"), "share of drafts, before that repair"],
        ["grounded in relevant", d.get("grounded_in_relevant"), f"{d.get('n_citing_with_relevant')} citing"],
        ["ROUGE-L", d.get("rouge_l"), f"{d.get('n_with_reference')} with reference, CI {ci_text(d.get('rouge_l_ci'))}"],
        ["embedding similarity", d.get("embed_sim"), f"{d.get('n_embed_sim')} with reference"],
        ["length (words), mean", d.get("length_mean"),
         f"p50 {num(d.get('length_p50'), 1)}, p95 {num(d.get('length_p95'), 1)}"],
    ]
    definitions = ("ROUGE-L: F1 of rougeL (sentence-level longest common subsequence) from the rouge-score package "
                   "with its Porter stemmer, draft against the reference reply; a case with a reference and no valid "
                   "draft scores 0. Embedding similarity: cosine of the two texts' sentence embeddings.")
    return section("drafting", "Drafting", table(["metric", "value", "over"], rows) + note(definitions))


def validator_section(funnel: Mapping[str, Any]) -> str:
    stages = list(funnel)
    chart = svg.stacked_bars(stages, [label for _, label in FUNNEL],
                             [[float(funnel[s][key]) for key, _ in FUNNEL] for s in stages],
                             title="Validator funnel per stage", colours=FUNNEL_COLOURS)
    rows = [[s, funnel[s]["calls"], *(funnel[s][key] for key, _ in FUNNEL)] for s in stages]
    body = chart + table(["stage", "cases", *(label for _, label in FUNNEL)], rows)
    for s in stages:
        codes = funnel[s]["codes"]
        body += f"<h3>{escape(s)}: failure modes</h3>"
        body += (svg.bar_chart(list(codes), [("cases", [float(v) for v in codes.values()])],
                               title=f"Failure codes, {s} stage") if codes else note("no failure codes seen"))
    return section("validator", "Validator", body)


def cost_section(cost: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    tok = cost["tokens_per_case"]
    body = table(["tokens per case", "mean", "p50", "p90", "p95", "p99"],
                 [["all stages", *(num(tok.get(k), 1) for k in ("mean", "p50", "p90", "p95", "p99"))]])
    rows = []
    for name, s in cost["stages"].items():
        lat = s["latency_ms"]
        queue = s.get("queue_ms") or {}  # metrics of older runs have none
        rows.append([name, *(num(lat.get(k), 1) for k in ("p50", "p90", "p95", "p99")),
                     num(queue.get("p50"), 1), num(queue.get("p95"), 1), num(s["tokens_mean"], 1),
                     s["llm_calls"], s["llm_calls_cached"]])
    body += table(["stage", "latency p50 ms", "p90", "p95", "p99", "queue p50 ms", "queue p95", "tokens mean",
                   "LLM calls", "from cache"], rows)
    body += note("Latency is each stage's own time; queue is the time its model calls waited for a free server "
                 "slot (llm.max_in_flight).")
    usd = cost.get("usd_per_case") or {}
    if any(usd.get("prices_usd_per_mtok") or ()):
        body += note(f"Cost: {num(usd.get('mean'), 6)} USD per case, {num(usd.get('total'), 4)} USD in all "
                     f"(prices per million tokens in/out: {usd['prices_usd_per_mtok']}).")
    else:
        body += note("Cost in USD: set llm.usd_per_mtok_in and llm.usd_per_mtok_out to see it.")
    cache = info.get("cache")
    if cache:
        body += note(f"LLM cache in this run: {cache.get('hits')} hits, {cache.get('misses')} misses.")
    return section("cost", "Cost", body)


# ------------------------------------------------------------------ worst cases


def worst_cases(records: Sequence[Mapping[str, Any]], limit: int = MAX_WORST) -> list[tuple[str, Mapping[str, Any]]]:
    """(why, record): wrong routes by confidence (highest first), then failed validation, then retrieval misses."""
    scores = [r.get("scores") or {} for r in records]
    wrong = [(r, (r.get("route") or {}).get("confidence") or 0.0) for r, s in zip(records, scores, strict=True)
             if s.get("route_correct") is False and r.get("route")]
    picked: list[tuple[str, Mapping[str, Any]]] = [
        (f"route wrong (confidence {c:.2f})", r) for r, c in sorted(wrong, key=lambda rc: -rc[1])]
    for r in records:
        failed = [s["stage"] for s in r.get("stages", []) if s.get("status") == "failed"]
        if failed or r.get("status") == "failed":
            picked.append((f"failed: {', '.join(failed) or r.get('error') or 'case'}", r))
    for r, s in zip(records, scores, strict=True):
        ret = s.get("retrieval")
        if ret and ret.get("hit_rate@5", ret.get("mrr")) == 0:
            picked.append(("retrieval miss (no relevant id in the top 5)", r))
    seen: set[str] = set()
    out = []
    for why, r in picked:
        if r["id"] not in seen:
            seen.add(r["id"])
            out.append((why, r))
    return out[:limit]


def worst_section(records: Sequence[Mapping[str, Any]]) -> str:
    """The worst cases as a table; each id opens the case (email, outputs, raw attempts) in the case browser."""
    picked = worst_cases(records)
    if not picked:
        return section("worst", "Worst cases", note("No wrong or failed cases."))
    rows = []
    for rank, (why, r) in enumerate(picked, 1):
        route = r.get("route")
        predicted = f"{route['department']} ({num(route.get('confidence'), 2)})" if route else "none (invalid)"
        rows.append([rank, Html(case_link(r["id"])), why, (r.get("expected") or {}).get("department"), predicted,
                     ", ".join(failure_codes(r)) or "–"])
    body = table(["#", "case", "why", "gold", "predicted", "failure codes"], rows)
    return section("worst", "Worst cases", note(f"Up to {MAX_WORST} cases that failed or were wrong; click an id "
                                                "to open the case.") + body)


# ------------------------------------------------------------------ diagnosis hook (issue 5)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def alarms_html(alarms: Sequence[Mapping[str, Any]]) -> str:
    body = ""
    for alarm in alarms:
        level = str(alarm.get("level", "info"))
        cases = ", ".join(case_link(c) for c in alarm.get("cases") or [])
        body += (f'<div class="alarm-{escape(level)}"><h3>{escape(level.upper())}: {escape(str(alarm.get("title")))}'
                 f' <code>{escape(str(alarm.get("name")))}</code></h3><p>{escape(str(alarm.get("explanation")))}</p>'
                 + (f"<p>cases: {cases}</p>" if cases else "") + "</div>")
    return body or note("No alarms raised.")


def ceiling_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """A bar chart of the numeric columns ("predicted" and "gold" when present) and the rows as a table."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    numeric = [k for k in columns if any(_is_number(row.get(k)) for row in rows)
               and all(_is_number(row[k]) or row[k] is None for row in rows if k in row)]
    bars = [k for k in ("predicted", "gold") if k in numeric] or numeric
    label_keys = dict.fromkeys((next((k for k in ("stage", "name") if k in columns), columns[0]), "metric"))
    labels = [" ".join(str(row[k]) for k in label_keys if k in row) for row in rows]
    chart = svg.bar_chart(labels, [(k, [row.get(k) for row in rows]) for k in bars], title="Ceiling analysis",
                          value_format="{:.3f}") if bars else ""
    return ("<h3>Ceiling analysis</h3>" + chart
            + note("predicted / gold: each stage's metric with the predicted upstream input (as run) and with the "
                   "gold upstream input; gain_if_perfect: how much the share of cases with no stage wrong would "
                   "rise if this stage were perfect.")
            + table(columns, [[row.get(k) for k in columns] for row in rows]))


def curve_html(curve: Mapping[str, Any]) -> str:
    points = sorted((p for p in curve.get("points") or [] if _is_number(p.get("x"))), key=lambda p: p["x"])
    line = [(float(p["x"]), p["y"] if _is_number(p.get("y")) else None) for p in points]
    band = [(float(p["x"]), float(p["ci"][0]), float(p["ci"][1])) for p in points
            if p.get("ci") and all(_is_number(v) for v in p["ci"][:2])]
    name = str(curve.get("name"))
    return f"<h3>Learning curve: {escape(name)}</h3>" + svg.line_chart(
        [(name, line)], title=f"Learning curve: {name}", x_label=str(curve.get("x_label", "amount of data")),
        y_label=str(curve.get("y_label", "metric")), y_range=None, bands=[band] if band else None)


def diagnosis_section(diag: Mapping[str, Any]) -> str:
    """HOOK for issue 5: renders metrics["diagnosis"] (alarms, ceiling rows, learning curves) when present."""
    body = alarms_html(diag.get("alarms") or [])
    ceiling = [row for row in diag.get("ceiling") or [] if isinstance(row, Mapping) and row]
    if ceiling:
        body += ceiling_html(ceiling)
    attribution = diag.get("attribution") or {}
    if attribution:
        body += "<h3>First failing stage</h3>" + table(
            ["stage", "cases", "ids"],
            [[stage, a.get("n"), Html(", ".join(case_link(c) for c in (a.get("cases") or [])[:30]))]
             for stage, a in attribution.items()])
    ablations = [a for a in diag.get("ablations") or [] if isinstance(a, Mapping)]
    if ablations:
        body += "<h3>Ablations (same cases, paired bootstrap)</h3>" + table(
            ["part", "metric", "n", "with", "without", "delta", "95% CI", "p"],
            [[a.get("part"), a.get("metric"), a.get("n"), a.get("with"), a.get("without"), a.get("delta_delta"),
              f"[{num(a.get('delta_ci_low'))}, {num(a.get('delta_ci_high'))}]", a.get("delta_p_value")]
             for a in ablations])
    body += "".join(curve_html(c) for c in diag.get("learning_curves") or [] if isinstance(c, Mapping))
    cache = diag.get("cache") or {}
    keys = ("cases_run", "cases_reused", "cache_hits", "cache_misses", "new_model_calls")
    if cache.get("variants"):
        body += "<h3>Re-runs and the LLM cache (this diagnose pass)</h3>" + table(
            ["variant", "cases run", "reused", "cache hits", "misses", "new model calls"],
            [[name, *(row.get(k) for k in keys)] for name, row in cache["variants"].items()]
            + [["total", *((cache.get("total") or {}).get(k) for k in keys)]])
        passes = cache.get("passes") or []
        if len(passes) > 1:
            body += note("Earlier passes: " + "; ".join(f"pass {p.get('pass')}: {p.get('new_model_calls')} new model "
                                                         f"calls, {p.get('cache_hits')} cache hits" for p in passes))
    return section("diagnosis", "Diagnosis", body)


# ------------------------------------------------------------------ page and terminal summary


def render_report(info: Mapping[str, Any], metrics: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    """The whole HTML page as a string."""
    parts = [("summary", "Summary", headline(metrics, info))]
    if isinstance(metrics.get("diagnosis"), Mapping):  # issue 5 fills this in; skipped when absent
        parts.append(("diagnosis", "Diagnosis", diagnosis_section(metrics["diagnosis"])))
    if metrics.get("routing"):
        parts.append(("routing", "Routing", "".join(note(line) for line in router_lines(metrics) if line)
                      + routing_section(metrics["routing"])))
    if metrics.get("retrieval"):
        parts.append(("retrieval", "Retrieval", retrieval_section(metrics["retrieval"])))
    if metrics.get("drafting"):
        parts.append(("drafting", "Drafting", drafting_section(metrics["drafting"])))
    if metrics.get("validator"):
        parts.append(("validator", "Validator", validator_section(metrics["validator"])))
    if metrics.get("cost"):
        parts.append(("cost", "Cost", cost_section(metrics["cost"], info)))
    level = str(info.get("relevance_level", "product"))
    parts.append(("worst", "Worst cases", worst_section(records)))
    diagnosis = metrics.get("diagnosis") if isinstance(metrics.get("diagnosis"), Mapping) else {}
    parts.append(("cases", "Cases", cases_section(records, level, (diagnosis or {}).get("alarms") or [])))
    title = str((info.get("eval_set") or {}).get("name") or info.get("name") or "run")
    return page(f"mailcascade eval: {title}", header(info, metrics, records), parts)


def page(title: str, top: str, parts: Sequence[tuple[str, str, str]]) -> str:
    """A whole self-contained page: the title, `top` (HTML), a menu of the parts (id, menu title, HTML)."""
    nav = "<nav>" + "".join(f'<a href="#{ident}">{escape(name)}</a>' for ident, name, _ in parts) + "</nav>"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}{CASES_CSS}</style></head><body>{top}{nav}"
            + "".join(body for _, _, body in parts) + "</body></html>\n")


def router_lines(metrics: Mapping[str, Any]) -> list[str]:
    """The router's out-of-scope threshold (and where it came from) and, for the hybrid, who decided how much."""
    lines: list[str] = []
    router = metrics.get("router") or {}
    cal = router.get("calibration") or {}
    if router:
        if cal.get("threshold") is None:  # out_of_scope can still be a label learned from the examples
            learned = OUT_OF_SCOPE in (router.get("labels") or ())
            what = "none (out_of_scope only as a label learned from the examples)" if learned else \
                "none (never out of scope)"
        else:
            what = f"{cal['threshold']:.3f} on {cal.get('score')}, {cal.get('source')}"
        if cal.get("source") == "cv":
            what += (f" on the router's examples only ({cal.get('folds')} label-held-out folds; CV accuracy "
                     f"{num(cal.get('cv_accuracy'))}, in scope {num(cal.get('cv_in_scope_accuracy'))})")
        lines += ["", f"router {router.get('name')}: out-of-scope threshold {what}"]
    lines += threshold_lines((metrics.get("routing") or {}).get("oos_threshold") or {})
    shares = (metrics.get("routing") or {}).get("decided_by") or {}
    if len(shares) > 1 or "llm" in shares:
        lines.append("decided by: " + "; ".join(f"{who} {s['share']:.1%} of cases (accuracy {num(s['accuracy'])})"
                                                for who, s in shares.items()))
    return lines


def threshold_lines(analysis: Mapping[str, Any]) -> list[str]:
    """What the out-of-scope threshold cost on this eval set (see `mailcascade.eval.oos`)."""
    if not analysis:
        return []
    e, best = analysis["errors"], analysis["eval_best"]
    where = "none" if best.get("threshold") is None else f"{best['threshold']:.3f}"
    return [f"threshold errors: {e['in_scope_rejected']} in-scope cases rejected that the router had right "
            f"(+{e['in_scope_rejected_wrong_anyway']} it had wrong anyway), {e['out_of_scope_accepted']} out-of-scope "
            f"cases let through; {e['wrong_department']} wrong departments",
            f"accuracy {num(analysis['accuracy'])} as routed, {num(analysis['no_threshold_accuracy'])} with no "
            f"threshold, {num(best['accuracy'])} with the best threshold for this eval set ({where}: out-of-scope "
            f"recall {num(best.get('out_of_scope_recall'))}, in scope {num(best.get('in_scope_accuracy'))}); a "
            "ceiling chosen on these very cases, not a setting to copy"]


def threshold_html(analysis: Mapping[str, Any]) -> str:
    """The accuracy-against-threshold curve of the eval set, under the routing section."""
    curve = analysis.get("curve") or []
    if not curve:
        return ""
    return "<h3>Out-of-scope threshold</h3>" + svg.line_chart(
        [("accuracy", [(float(t), float(a)) for t, a in curve])], title="Accuracy against the out-of-scope threshold",
        x_label="threshold on the router's score", y_label="accuracy", y_range=None)


def format_summary(metrics: Mapping[str, Any]) -> str:
    """Plain-text summary for the terminal: headline metrics with CIs and baselines, validator funnel, cost."""
    names, rows = headline_rows(metrics)
    lines = [f"cases: {metrics.get('n_cases')}   failed: {metrics.get('n_failed')}", ""]
    infra = metrics.get("infrastructure") or {}
    if infra.get("n_cases"):
        codes = ", ".join(f"{c}={n}" for c, n in infra["codes"].items())
        lines[-1:] = [f"infrastructure errors: {infra['n_cases']} cases ({infra['rate']:.1%}; {codes}), left out of "
                      "every model metric below; `eval --resume --retry-errors --out RUN` re-runs them", ""]
    widths = [max(10, len(n)) + 2 for n in names]  # a baseline's name never runs into the next one
    header_row = f"{'metric':<30}{'value':>8}  {'95% CI':<18}" + "".join(
        f"{n:>{w}}" for n, w in zip(names, widths, strict=True))
    lines += [header_row, "-" * len(header_row)]
    for label, value, ci, *base in rows:
        lines.append(f"{label:<30}{num(value):>8}  {ci:<18}" + "".join(
            f"{num(b):>{w}}" for b, w in zip(base, widths, strict=True)))
    lines += router_lines(metrics)
    funnel = metrics.get("validator") or {}
    if funnel:
        head = f"{'validator':<12}{'cases':>7}" + "".join(f"{label:>13}" for _, label in FUNNEL) + "  top codes"
        lines += ["", head, "-" * len(head)]
        for stage, row in funnel.items():
            codes = ", ".join(f"{c}={n}" for c, n in list(row["codes"].items())[:4]) or "-"
            lines.append(f"{stage:<12}{row['calls']:>7}" + "".join(f"{row[k]:>13}" for k, _ in FUNNEL) + f"  {codes}")
    cost = metrics.get("cost") or {}
    if cost:
        tok = cost["tokens_per_case"]
        usd = cost.get("usd_per_case") or {}
        lines += ["", f"tokens per case: mean {num(tok.get('mean'), 1)}, p50 {num(tok.get('p50'), 1)}, "
                      f"p95 {num(tok.get('p95'), 1)}"
                  + (f"; USD per case: {num(usd.get('mean'), 6)}" if any(usd.get("prices_usd_per_mtok") or ()) else "")]
        head = f"{'stage':<12}{'p50 ms':>10}{'p95 ms':>10}{'queue p50':>10}{'tokens':>10}{'calls':>8}{'cached':>8}"
        lines += [head, "-" * len(head)]
        for stage, s in cost["stages"].items():
            lat = s["latency_ms"]
            queue = s.get("queue_ms") or {}
            lines.append(f"{stage:<12}{num(lat.get('p50'), 1):>10}{num(lat.get('p95'), 1):>10}"
                         f"{num(queue.get('p50'), 1):>10}"
                         f"{num(s['tokens_mean'], 1):>10}{s['llm_calls']:>8}{s['llm_calls_cached']:>8}")
    return "\n".join(lines)
