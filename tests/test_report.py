"""The HTML report and the terminal summary, over small synthetic run directories."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from mailcascade.errors import EvalError
from mailcascade.eval.drafting import rouge_l
from mailcascade.eval.records import compute_metrics
from mailcascade.eval.report import format_summary, render_report, worst_cases, write_report
from mailcascade.eval.retrieval import retrieval_case
from mailcascade.eval.routing import routing_correct

LABELS = ["orders", "shipping", "billing", "out_of_scope"]
SCRIPT = "<script>alert('x')</script>"
CHROMIUM = Path("/usr/bin/chromium")


def stage(name: str, status: str = "ok", raws: tuple[str, ...] = (), codes: tuple[str, ...] = (),
          prompt_hash: str = "", first: str = "clean") -> dict[str, Any]:
    """One stage row of a case record, with an attempt per raw output."""
    log = [{"n": i + 1, "status": first if i == 0 else "clean", "finish_reason": "stop", "cached": i == 0,
            "codes": [{"code": c, "where": "offset 0", "action": "repaired"} for c in (codes if i == 0 else ())],
            "raw": raw} for i, raw in enumerate(raws)]
    if status == "failed" and log:
        log[-1]["status"] = "failed"
    return {"stage": name, "status": status, "prompt_hash": prompt_hash, "model": "tiny-model" if raws else "",
            "attempts": len(log), "failure_codes": list(codes), "validator_status": log[-1]["status"] if log else None,
            "tokens_in": 100 * len(log), "tokens_out": 20 * len(log), "latency_ms": 40.0 + 10 * len(log),
            "input_hash": "h", "attempt_log": log}


def make_record(ident: str, gold: str, pred: str | None, *, confidence: float = 0.8,
                relevant: dict[str, int] | None = None, retrieved: tuple[str, ...] = (), reply: str | None = "ok",
                reference: str | None = "thanks for your order", route_raw: str = '{"department": "orders"}',
                route_codes: tuple[str, ...] = (), draft_hash: str = "d1") -> dict[str, Any]:
    """A case record in the runner's format; scores computed with the eval metric functions."""
    relevant = relevant if relevant is not None else {"p1": 1}
    route_status = "ok" if pred is not None else "failed"
    draft_status = "ok" if reply is not None else "failed"
    record: dict[str, Any] = {
        "id": ident, "split": "test",
        "expected": {"department": gold, "relevant": relevant, "reference_reply": reference},
        "status": "ok" if pred is not None and reply is not None else "failed",
        "error": "" if reply is not None else "draft: no valid output",
        "route": {"department": pred, "confidence": confidence, "reason": "r"} if pred is not None else None,
        "retrieved": [{"product_id": p, "passage_id": f"{p}#0", "score": 0.5} for p in retrieved],
        "draft": {"reply": reply, "cited": list(retrieved[:1])} if reply is not None else None,
        "stages": [
            stage("route", route_status, (route_raw,) if pred is not None else (route_raw, route_raw),
                  route_codes, "r1"),
            stage("retrieve"),
            stage("draft", draft_status, ('{"reply": "..."}',), (), draft_hash),
        ],
        "baselines": {"majority": "orders", "embedding_knn": gold},
        "embed_sim": 0.5 if reply is not None else None,
        "meta": {},
        "email_chars": 40,
    }
    ret = retrieval_case(relevant, list(retrieved))
    record["scores"] = {
        "route_correct": routing_correct([gold], [pred], LABELS)[0],
        "retrieval": ret,
        "draft": {"valid": reply is not None, "rouge_l": rouge_l(reply, reference) if reply and reference else 0.0},
    }
    return record


def write_run(folder: Path, records: list[dict[str, Any]], *, prompts: dict[str, str] | None = None,
              top_k: int = 5, metrics_extra: dict[str, Any] | None = None) -> Path:
    """run.json, cases.jsonl and metrics.json (compute_metrics over the records) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = prompts or {"route": "Route this email.\n", "draft": "Draft a reply.\nBe short.\n"}
    info = {
        "name": "synthetic", "eval_set": {"name": "synthetic", "n_cases": len(records), "level": "product"},
        "created": 1_700_000_000.0, "finished": 1_700_000_060.0, "status": "done",
        "options": {"stages": ["route", "retrieve", "draft"], "seed": 0, "limit": None, "gold": []},
        "settings": {"llm": {"model": "tiny-model", "base_url": "http://127.0.0.1:8765/v1"},
                     "retrieval": {"top_k": top_k, "one_hit_per_product": True}},
        "prompts": {name: {"hash": hashlib.sha256(text.encode()).hexdigest()[:12], "version": "1", "path": f"{name}.md",
                           "text": text} for name, text in prompts.items()},
        "labels": LABELS, "relevance_level": "product", "case_ids": [r["id"] for r in records],
        "baseline_source": {"majority": "train split", "embedding_knn": "train split"},
        "cache": {"hits": 3, "misses": 9},
    }
    metrics = compute_metrics(records, labels=LABELS, level="product", seed=0)
    metrics.update(metrics_extra or {})
    (folder / "run.json").write_text(json.dumps(info), encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (folder / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


def sample_records() -> list[dict[str, Any]]:
    return [
        make_record("c1", "orders", "orders", retrieved=("p1", "p2")),
        make_record("c2", "shipping", "orders", confidence=0.97, route_raw=f"Sure! {SCRIPT} {{}}",
                    route_codes=("prefix_text",), retrieved=("p9",)),
        make_record("c3", "billing", "shipping", confidence=0.55, retrieved=("p1",)),
        make_record("c4", "billing", None, retrieved=("p1",)),
        make_record("c5", "out_of_scope", "out_of_scope", retrieved=("p3", "p1"), reply=None),
        make_record("c6", "orders", "orders", retrieved=("p7", "p8")),
    ]


def svgs(html: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html, flags=re.S)


def case_data(html: str) -> dict[str, list[dict[str, Any]]]:
    """The case browser's data, by case id: the runs' data of each row (one for a report, two for a compare)."""
    found = re.search(r'<script type="application/json" id="case-data">(.*?)</script>', html, flags=re.S)
    assert found is not None and "<" not in found.group(1)  # nothing in the data can close the script element
    ids = re.findall(r'<tbody class="case" id="case-([^"]+)" data-n="(\d+)"', html)
    data = json.loads(found.group(1))
    assert [int(n) for _, n in ids] == list(range(len(data)))
    return {case_id: data[int(n)] for case_id, n in ids}


def chromium_dom(page: str, profile: Path) -> str:
    """The DOM of a page (a file URI, with an optional #fragment) after its scripts ran, from headless Chromium."""
    done = subprocess.run([str(CHROMIUM), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--disable-background-networking", f"--user-data-dir={profile}", "--dump-dom", page],
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_report_has_sections_charts_and_nothing_external(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", sample_records())
    path = write_report(run)
    assert path == run / "report.html"
    html = path.read_text(encoding="utf-8")
    for ident in ("summary", "routing", "retrieval", "drafting", "validator", "cost", "worst"):
        assert f'<section id="{ident}">' in html
    assert 'id="diagnosis"' not in html  # no diagnosis key in metrics.json
    # header: eval set, date, model, prompt hashes, relevance level
    info = json.loads((run / "run.json").read_text())
    assert "2023-11-14" in html and "tiny-model" in html and "product" in html
    for p in info["prompts"].values():
        assert p["hash"] in html
    charts = svgs(html)
    # heatmap, retrieval curve, funnel, failure codes of the route stage
    assert len(charts) == 4
    for chart in charts:
        ET.fromstring(chart)  # each chart is well-formed XML
    titles = [ET.fromstring(c).findtext("title") for c in charts]
    assert titles == ["Routing confusion matrix", "Retrieval metrics over k", "Validator funnel per stage",
                      "Failure codes, route stage"]
    # nothing external: no URLs at all (the base_url in settings is not rendered), no imports
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "<link" not in html and "src=" not in html
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', html))


def test_report_escapes_raw_outputs_and_lists_worst_cases_first_by_confidence(tmp_path: Path) -> None:
    html = write_report(write_run(tmp_path / "run", sample_records())).read_text(encoding="utf-8")
    assert html.count("<script") == 2  # the case data and the case browser; the model's script is data
    assert "<script>alert" not in html and "\\u003cscript\\u003ealert(" in html
    attempt = case_data(html)["c2"][0]["stages"][0]["attempts"][0]
    assert attempt == {"label": "route attempt 1: clean, finish stop, cached (prefix_text)",
                       "raw": f"Sure! {SCRIPT} {{}}"}
    worst = html[html.index('<section id="worst">'):html.index('<section id="cases">')]
    # c2 (wrong, 0.97) before c3 (wrong, 0.55) before the failures (c4 route, c5 draft), then misses (c6)
    order = [worst.index(f"<code>{c}</code>") for c in ("c2", "c3", "c4", "c5", "c6")]
    assert order == sorted(order)
    assert "<code>c1</code>" not in worst


def test_worst_cases_reasons() -> None:
    picked = worst_cases(sample_records())
    assert [r["id"] for _, r in picked] == ["c2", "c3", "c4", "c5", "c6"]
    assert picked[0][0] == "route wrong (confidence 0.97)"
    assert picked[2][0].startswith("failed: route")
    assert picked[4][0].startswith("retrieval miss")
    assert len(worst_cases([make_record(f"x{i}", "orders", "billing") for i in range(30)])) == 20


def test_confusion_heatmap_counts_and_colour(tmp_path: Path) -> None:
    records = sample_records()
    metrics = compute_metrics(records, labels=LABELS, level="product")
    info = json.loads((write_run(tmp_path / "run", records) / "run.json").read_text())
    chart = ET.fromstring(svgs(render_report(info, metrics, records))[0])
    cells = [c for c in chart.iter("rect") if c.get("class") == "cell"]
    conf = metrics["routing"]["confusion"]
    assert len(cells) == len(conf["labels"]) * len(conf["columns"])
    assert "invalid" in conf["columns"]
    tips = [c.findtext("title") for c in cells]
    assert "gold shipping, predicted orders: 1 (100% of row)" in tips
    assert "gold billing, predicted invalid: 1 (50% of row)" in tips
    full = next(c for c in cells if c.findtext("title") == "gold shipping, predicted orders: 1 (100% of row)")
    empty = next(c for c in cells if c.findtext("title") == "gold shipping, predicted shipping: 0 (0% of row)")
    assert full.get("fill") != empty.get("fill") and empty.get("fill") == "rgb(255,255,255)"


def test_diagnosis_section_renders_alarms_ceiling_and_curves(tmp_path: Path) -> None:
    diagnosis = {
        "alarms": [{"name": "below_majority", "level": "error", "title": "Router <below> majority",
                    "explanation": "The router is worse than always saying orders.", "cases": ["c2", "c3"]}],
        "ceiling": [{"stage": "retrieval", "metric": "recall@5", "predicted": 0.4, "gold": 0.9},
                    {"stage": "drafting", "metric": "rouge_l", "predicted": 0.2, "gold": 0.35}],
        "learning_curves": [{"name": "router examples", "points": [
            {"x": 10, "y": 0.5, "ci": [0.4, 0.6]}, {"x": 20, "y": 0.6, "ci": [0.5, 0.7]},
            {"x": 40, "y": 0.65, "ci": [0.55, 0.75]}]}],
    }
    run = write_run(tmp_path / "run", sample_records(), metrics_extra={"diagnosis": diagnosis})
    html = write_report(run).read_text(encoding="utf-8")
    part = html[html.index('<section id="diagnosis">'):html.index('<section id="routing">')]
    assert "Router &lt;below&gt; majority" in part and "alarm-error" in part
    assert '<a href="#case-c2"><code>c2</code></a>, <a href="#case-c3"><code>c3</code></a>' in part
    titles = [ET.fromstring(c).findtext("title") for c in svgs(part)]
    assert titles == ["Ceiling analysis", "Learning curve: router examples"]
    assert "0.900" in part and "recall@5" in part
    assert part.count("<polygon") == 1  # the CI band


def test_report_without_metrics_json_recomputes(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", sample_records())
    (run / "metrics.json").unlink()
    html = write_report(run).read_text(encoding="utf-8")
    assert '<section id="routing">' in html


def test_report_only_routing_stage(tmp_path: Path) -> None:
    records = sample_records()
    for r in records:
        r["stages"] = r["stages"][:1]
        r["scores"]["retrieval"] = r["scores"]["draft"] = None
    html = write_report(write_run(tmp_path / "run", records)).read_text(encoding="utf-8")
    assert '<section id="routing">' in html
    assert '<section id="retrieval">' not in html and '<section id="drafting">' not in html


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="not a run directory"):
        write_report(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(EvalError, match=r"no cases\.jsonl"):
        write_report(tmp_path)


def test_format_summary(tmp_path: Path) -> None:
    records = sample_records()
    metrics = compute_metrics(records, labels=LABELS, level="product")
    text = format_summary(metrics)
    acc = metrics["routing"]["accuracy"]
    line = next(line for line in text.splitlines() if line.startswith("route accuracy"))
    lo, hi = metrics["routing"]["accuracy_ci"]
    assert f"{acc:.3f}" in line and f"[{lo:.3f}, {hi:.3f}]" in line
    assert f"{metrics['routing']['baselines']['majority']['accuracy']:.3f}" in line
    assert text.index("majority") < text.index("embedding_knn")  # the baselines in their usual order
    metrics["routing"]["baselines"]["always_out_of_scope_long_name"] = {"accuracy": 0.5, "macro_f1": 0.1}
    header = next(line for line in format_summary(metrics).splitlines() if line.startswith("metric"))
    names = list(metrics["routing"]["baselines"])
    assert names and sorted(header.split()[4:]) == sorted(names)  # names never run together, however long
    funnel_line = next(line for line in text.splitlines() if "prefix_text=1" in line)
    assert funnel_line.split()[:2] == ["route", "6"]
    assert "tokens per case" in text


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None,
                    reason="Chromium is not installed at /usr/bin/chromium")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    path = write_report(write_run(tmp_path / "run", sample_records()))
    done = subprocess.run([str(CHROMIUM), "--headless", "--disable-gpu", "--no-sandbox",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True)
    dom = done.stdout
    assert dom.count("<svg") == 4
    assert "Routing confusion matrix" in dom and 'class="cell"' in dom



@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None,
                    reason="Chromium is not installed at /usr/bin/chromium")
def test_following_an_alarm_link_opens_the_case_in_chromium(tmp_path: Path) -> None:
    records = sample_records()
    records[1]["email"] = {"subject": "Parcel missing", "body": "It never came.", "from": "a@b.c"}
    alarm = {"name": "label_noise", "level": "warn", "title": "t", "explanation": "e", "cases": ["c2"]}
    path = write_report(write_run(tmp_path / "run", records, metrics_extra={"diagnosis": {"alarms": [alarm]}}))
    html = path.read_text(encoding="utf-8")
    link = re.search(r'<div class="alarm-warn">.*?href="(#case-c2)"', html, flags=re.S)
    assert link is not None
    dom = chromium_dom(path.as_uri() + link.group(1), tmp_path / "profile")
    case = re.search(r'<tbody class="case open" id="case-c2".*?</tbody>', dom, flags=re.S)
    assert case is not None, "the linked case did not open"
    detail = case.group(0)
    assert re.search(r'<tr class="detail"(?![^>]*hidden)[^>]*>', detail)  # no longer hidden
    assert "Parcel missing" in detail and "It never came." in detail and "route attempt 1" in detail
    # the raw model answer is shown as text: its script tag is escaped, not an element of the page
    assert "<pre>Sure! &lt;script&gt;alert('x')&lt;/script&gt; {}</pre>" in detail
    assert "thanks for your order" in detail and "reference reply" in detail
    assert dom.count('<tbody class="case open"') == 1  # only that one
    assert dom.count("<script") == 2


def test_report_tolerates_sparse_runs_and_partial_diagnosis(tmp_path: Path) -> None:
    empty = write_run(tmp_path / "empty", [])
    html = write_report(empty).read_text(encoding="utf-8")
    assert "No wrong or failed cases." in html and '<section id="routing">' not in html
    diagnosis = {"alarms": [], "ceiling": [{"stage": "retrieval", "predicted": 0.3, "gold": None}],
                 "learning_curves": [{"name": "catalogue size", "points": [{"x": 1, "y": None}, {"x": 2, "y": 0.4},
                                                                             {"x": 4, "y": 0.5, "ci": None}]}]}
    run = write_run(tmp_path / "run", sample_records(), metrics_extra={"diagnosis": diagnosis})
    part = write_report(run).read_text(encoding="utf-8")
    part = part[part.index('<section id="diagnosis">'):part.index('<section id="routing">')]
    assert "No alarms raised." in part and "<polygon" not in part
    charts = [ET.fromstring(c) for c in svgs(part)]
    assert [c.findtext("title") for c in charts] == ["Ceiling analysis", "Learning curve: catalogue size"]
    assert len(list(charts[1].iter("circle"))) == 2  # the point without a value is left out


def test_every_case_is_in_the_case_table_with_filters_and_links_from_alarms(tmp_path: Path) -> None:
    records = sample_records()
    records[1]["email"] = {"subject": "Where <is> my parcel?", "body": "It never came.", "from": "a@b.c"}
    alarm = {"name": "label_noise", "level": "warn", "title": "t", "explanation": "e", "cases": ["c2", "c5"]}
    html = write_report(write_run(tmp_path / "run", records,
                                  metrics_extra={"diagnosis": {"alarms": [alarm]}})).read_text(encoding="utf-8")
    cases = html[html.index('<section id="cases">'):]
    bodies = re.findall(r'<tbody class="case" id="(case-[^"]+)"([^>]*)>', cases)
    assert [ident for ident, _ in bodies] == [f"case-c{i}" for i in range(1, 7)]
    attrs = dict(bodies)
    assert 'data-outcome="wrong"' in attrs["case-c2"] and 'data-alarm="label_noise"' in attrs["case-c2"]
    assert 'data-outcome="failed"' in attrs["case-c4"] and 'data-code="prefix_text"' in attrs["case-c2"]
    assert 'data-gold="shipping"' in attrs["case-c2"] and 'data-pred="orders"' in attrs["case-c2"]
    for key in ("outcome", "gold", "pred", "code", "alarm"):
        assert f'<select data-filter="{key}">' in cases
    data = case_data(html)
    assert list(data) == [f"c{i}" for i in range(1, 7)]
    assert data["c2"][0]["email"] == {"subject": "Where <is> my parcel?", "body": "It never came."}
    assert data["c1"][0]["email"] is None  # a record without the email text
    assert data["c2"][0]["reference"] == "thanks for your order" and data["c5"][0]["draft"] is None
    assert data["c2"][0]["route"]["department"] == "orders" and data["c2"][0]["gold"] == "shipping"
    assert [s["stage"] for s in data["c2"][0]["stages"]] == ["route", "retrieve", "draft"]
    assert "Where" not in cases.replace(cases[cases.index('id="case-data">'):], "")  # the detail is not in the rows
    diagnosis = html[html.index('<section id="diagnosis">'):html.index('<section id="routing">')]
    for target in re.findall(r'href="#(case-[^"]+)"', diagnosis):
        assert target in attrs  # every alarm link lands on a case row


def test_a_case_with_an_odd_id_gets_a_safe_anchor() -> None:
    from mailcascade.eval.report_cases import case_anchor

    assert case_anchor("data/x.jsonl:7 a") == "case-data_x_jsonl_7_a"


def test_a_knn_run_shows_no_llm_model_or_prompt_hashes(tmp_path: Path) -> None:
    records = [make_record(f"k{i}", "orders", "orders") for i in range(3)]
    for r in records:
        r["stages"] = [{**stage("route"), "model": "knn"}]
    html = write_report(write_run(tmp_path / "run", records)).read_text(encoding="utf-8")
    head = html[:html.index("<nav>")]
    assert "no LLM call (knn)" in head and "prompt route" not in head and "tiny-model" not in head


def test_the_diagnosis_shows_each_pass_cache_statistics(tmp_path: Path) -> None:
    row = {"cases_run": 0, "cases_reused": 6, "cache_hits": 0, "cache_misses": 0, "new_model_calls": 0}
    cache = {"variants": {"gold_department": row}, "total": row,
             "passes": [{"pass": 1, "new_model_calls": 12, "cache_hits": 0}, {"pass": 2, **row}]}
    html = write_report(write_run(tmp_path / "run", sample_records(),
                                  metrics_extra={"diagnosis": {"alarms": [], "cache": cache}})).read_text()
    part = html[html.index('<section id="diagnosis">'):html.index('<section id="routing">')]
    assert "new model calls" in part and "gold_department" in part
    assert "pass 1: 12 new model calls" in part and "pass 2: 0 new model calls" in part


def test_the_router_line_says_how_out_of_scope_can_still_be_answered_without_a_threshold() -> None:
    from mailcascade.eval.report import router_lines

    def line(labels: list[str]) -> str:
        router = {"name": "knn", "labels": labels, "calibration": {"threshold": None, "source": "off"}}
        return next(x for x in router_lines({"router": router}) if "threshold" in x)

    assert line(["orders", "returns"]).endswith("none (never out of scope)")
    assert "out_of_scope only as a label learned from the examples" in line(["orders", "out_of_scope"])
    calibrated = {"name": "knn", "labels": ["orders"], "calibration": {"threshold": 0.41, "score": "similarity",
                                                                      "source": "cv", "folds": 5, "cv_accuracy": 0.8}}
    assert "0.410 on similarity, cv" in router_lines({"router": calibrated})[1]
