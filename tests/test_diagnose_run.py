"""`diagnose` on a real run directory: ceiling, attribution, ablations, curves, and no new model calls twice."""

from __future__ import annotations

import json
from pathlib import Path

from fakes import HashEmbedder, sensible
from fakeserver import FakeServer
from mailcascade.eval.diagnose.run import diagnose_run, format_diagnosis
from mailcascade.eval.evalset import load_eval_set
from mailcascade.eval.runner import EvalOptions, run_eval
from test_eval_runner import SAMPLE, settings_for


def test_diagnose_fills_the_ceiling_and_makes_no_new_calls_the_second_time(tmp_path: Path) -> None:
    with FakeServer(sensible) as server:
        settings = settings_for(server, tmp_path)
        run = run_eval(load_eval_set(SAMPLE), tmp_path / "run", EvalOptions(progress=False, limit=12),
                       settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path / "cache")
        calls_after_run = len(server.chat_requests)
        kwargs = {"embedder": HashEmbedder(), "cache_dir": tmp_path / "cache", "ablation_limit": 6}
        diagnosis = diagnose_run(run, **kwargs)
        calls_after_first = len(server.chat_requests)
        again = diagnose_run(run, **kwargs)
        calls_after_second = len(server.chat_requests)
    assert calls_after_first > calls_after_run  # gold-input and ablation re-runs asked the model
    assert calls_after_second == calls_after_first  # ... and the second diagnose reused every answer
    assert again["ceiling"] == diagnosis["ceiling"]
    stages = {row["stage"] for row in diagnosis["ceiling"]}
    assert {"route", "retrieve", "draft", "end-to-end"} <= stages
    draft_rows = [r for r in diagnosis["ceiling"] if r["stage"] == "draft"]
    assert all("predicted" in r and "gold" in r for r in draft_rows)
    parts = {row["part"] for row in diagnosis["ablations"]}
    assert {"department descriptions", "retrieved context", "retrieval.one_hit_per_product"} <= parts
    attributed = sum(v["n"] for v in diagnosis["attribution"].values())
    records = [json.loads(line) for line in (run / "cases.jsonl").read_text().splitlines()]
    failing = [r for r in records if r["scores"]["route_correct"] is False]
    assert attributed >= len(failing) and set(diagnosis["attribution"].get("route", {}).get("cases", [])) == {
        r["id"] for r in failing}
    stored = json.loads((run / "metrics.json").read_text())["diagnosis"]
    assert stored["ceiling"] == diagnosis["ceiling"]
    assert "Ceiling analysis" in (run / "report.html").read_text()
    assert "ceiling" in format_diagnosis(diagnosis)
    # every pass's cache statistics: the first asked the model, the second made no new model calls
    first, second = diagnosis["cache"], again["cache"]
    assert first["total"]["new_model_calls"] == calls_after_first - calls_after_run > 0
    assert first["total"]["cases_run"] > 0 and second["total"]["cases_run"] == 0
    assert second["total"]["new_model_calls"] == 0 and second["total"]["cache_misses"] == 0
    assert set(second["variants"]) == set(first["variants"]) and all(
        row["new_model_calls"] == 0 and row["cases_reused"] == row["cases"] > 0 for row in second["variants"].values())
    assert [p["pass"] for p in second["passes"]] == [1, 2]
    assert second["passes"][0]["new_model_calls"] == first["total"]["new_model_calls"]
    assert json.loads((run / "metrics.json").read_text())["diagnosis"]["cache"]["passes"] == second["passes"]
    text = format_diagnosis(again)
    assert "diagnose pass 2): new model calls: 0" in text and "earlier pass 1: new model calls: " in text
    assert "gold-department" in text


def test_score_jump_compares_like_with_like_and_only_the_diagnosed_run(tmp_path: Path) -> None:
    from mailcascade.eval.diagnose.leakage import score_jump
    from mailcascade.eval.diagnose.run import Diagnoser

    with FakeServer(sensible) as server:
        settings = settings_for(server, tmp_path)
        runs = tmp_path / "runs"
        for name, limit in (("a-sample", 6), ("b-full", 12), ("c-full", 12)):
            run_eval(load_eval_set(SAMPLE), runs / name, EvalOptions(progress=False, limit=limit, stages=("route",)),
                     settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path / "cache")

    def plant(name: str, accuracy: float, created: float) -> None:
        info_path, metrics_path = runs / name / "run.json", runs / name / "metrics.json"
        info, metrics = json.loads(info_path.read_text()), json.loads(metrics_path.read_text())
        metrics["routing"].update({"accuracy": accuracy, "accuracy_ci": [accuracy - 0.02, accuracy + 0.02]})
        info["created"] = created
        info_path.write_text(json.dumps(info))
        metrics_path.write_text(json.dumps(metrics))

    plant("a-sample", 0.10, 1.0)  # another selection of cases: never compared
    plant("b-full", 0.50, 2.0)
    plant("c-full", 0.52, 3.0)
    kwargs = {"embedder": HashEmbedder(), "cache_dir": tmp_path / "cache"}
    history = Diagnoser(runs / "c-full", **kwargs).history()
    assert [h["run"] for h in history] == ["b-full", "c-full"]
    assert score_jump(history) == []  # 0.50 -> 0.52 on the same cases: fine; the 6-case sample is left out
    plant("b-full", 0.95, 2.0)
    jump = score_jump(Diagnoser(runs / "c-full", **kwargs).history())
    assert [(a.data["from_run"], a.data["to_run"]) for a in jump] == [("b-full", "c-full")]
    # earlier runs are never compared with each other: a jump between them is not this run's alarm
    older = [{"run": "x", "metrics": {"routing": {"accuracy": 0.1, "accuracy_ci": [0.08, 0.12]}}},
             {"run": "y", "metrics": {"routing": {"accuracy": 0.9, "accuracy_ci": [0.88, 0.92]}}},
             {"run": "z", "metrics": {"routing": {"accuracy": 0.9, "accuracy_ci": [0.88, 0.92]}}}]
    assert score_jump(older) == []
    ids = {"case_ids": ["1", "2"], "stages": ["route"]}
    assert score_jump([{**older[1], "case_ids": ["9"], "stages": ["route"]}, {**older[0], **ids}]) == []


def test_few_shot_curve_and_a_planted_leak_in_the_router_examples(tmp_path: Path) -> None:
    import dataclasses

    from mailcascade.eval.cases import load_cases
    from mailcascade.stages.embed_route import email_text

    cases = load_cases(SAMPLE)
    leaked = cases[:3]
    examples = tmp_path / "examples.jsonl"
    rows = [{"text": email_text(c.email), "department": c.expected.department} for c in leaked]
    rows += [{"text": "Please cancel my order, I changed my mind", "department": "orders"},
             {"text": "My invoice shows the wrong VAT number", "department": "billing"}]
    examples.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with FakeServer(sensible) as server:
        settings = settings_for(server, tmp_path)
        settings = settings.replace(route=dataclasses.replace(settings.route, examples_path=str(examples)))
        run = run_eval(load_eval_set(SAMPLE), tmp_path / "run", EvalOptions(progress=False, limit=8,
                                                                            stages=("route",)),
                       settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path / "cache")
        diagnosis = diagnose_run(run, embedder=HashEmbedder(), cache_dir=tmp_path / "cache", ablation_limit=8)
        prompts = [r.body["messages"][0]["content"] for r in server.chat_requests]
    curve = next(c for c in diagnosis["learning_curves"] if "few-shot" in c["name"])
    assert [p["x"] for p in curve["points"]] == [0, 2, 4, 8]
    assert any("Examples:" in p for p in prompts) and any("Examples:" not in p for p in prompts)
    leak = next(a for a in diagnosis["alarms"] if a["name"] == "exact_duplicates")
    assert set(leak["cases"]) == {c.id for c in leaked}
    assert {"department descriptions", "few-shot block"} <= {row["part"] for row in diagnosis["ablations"]}
