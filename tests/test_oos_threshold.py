"""The out-of-scope threshold's own error analysis: hand-counted breakdowns, the sweep against brute force, and
an eval with a planted far-too-high threshold that the analysis must expose (and a well-set one it must not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import HashEmbedder
from mailcascade.config import RouteSettings, Settings, StoreSettings
from mailcascade.eval.evalset import load_eval_set
from mailcascade.eval.oos import threshold_analysis
from mailcascade.eval.report import format_summary
from mailcascade.eval.runner import EvalOptions, run_eval
from mailcascade.types import OUT_OF_SCOPE
from test_router_train import examples, write_jsonl_cases

OOS = OUT_OF_SCOPE
LABELS = ["a", "b"]


def test_each_routing_error_is_put_on_the_threshold_or_the_ranking() -> None:
    gold = ["a", "a", "b", "b", OOS, OOS, OOS]
    before = ["a", "b", "b", "a", "a", "b", OOS]  # the last: out_of_scope learned as a label
    scores = [0.9, 0.2, 0.3, 0.8, 0.7, 0.1, 0.5]
    pred = [b if s >= 0.4 and b != OOS else OOS for b, s in zip(before, scores, strict=True)]
    assert pred == ["a", OOS, OOS, "a", "a", OOS, OOS]
    out = threshold_analysis(gold, pred, before, scores, LABELS)
    assert out["errors"] == {"in_scope_rejected": 1, "in_scope_rejected_wrong_anyway": 1,
                             "out_of_scope_accepted": 1, "wrong_department": 1}
    assert out["accuracy"] == pytest.approx(3 / 7)  # a@0.9, and two out-of-scope cases
    assert out["no_threshold_accuracy"] == pytest.approx(3 / 7)  # a, b, and the learned out_of_scope
    best = out["eval_best"]
    # 4 of 7 is the most any threshold gets (0.15, 0.25, 0.75 and 0.85 all do); the rule of `best_threshold` (the
    # middle of the winning cuts) names 0.75: it rejects everything but a@0.9 and the wrong a@0.8
    assert best["threshold"] == pytest.approx(0.75) and best["accuracy"] == pytest.approx(4 / 7, abs=1e-6)
    assert best["out_of_scope_recall"] == 1.0 and best["in_scope_accuracy"] == pytest.approx(1 / 4)
    curve = out["curve"]
    assert curve[0] == [0.1, pytest.approx(out["no_threshold_accuracy"])]  # nothing rejected at the lowest score
    assert curve[-1][1] == pytest.approx(3 / 7)  # everything rejected above the highest: the 3 out-of-scope right
    assert max(a for _, a in curve) <= best["accuracy"] + 1e-9


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", OOS]), st.sampled_from(["a", "b", OOS]),
                          st.integers(0, 20)), min_size=1, max_size=30))
def test_the_eval_best_threshold_is_the_best_any_threshold_gives(rows: list[tuple[str, str, int]]) -> None:
    gold = [g for g, _, _ in rows]
    before = [b for _, b, _ in rows]
    scores = [s / 20 for _, _, s in rows]
    out = threshold_analysis(gold, before, before, scores, LABELS)

    def right(t: float) -> int:
        return sum((OOS if s < t or b == OOS else b) == g for g, b, s in zip(gold, before, scores, strict=True))

    brute = max(right(t) for t in [-1.0, *(s + 1e-3 for s in scores)])
    assert out["eval_best"]["accuracy"] == pytest.approx(brute / len(rows), abs=1e-6)
    t = out["eval_best"]["threshold"]
    assert right(-1.0 if t is None else t) == brute  # the threshold it names gives that accuracy


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one prediction"):
        threshold_analysis(["a"], ["a"], [], [0.5], LABELS)


def run_route_eval(tmp_path: Path, name: str, route: RouteSettings) -> tuple[dict, list[dict], Path]:
    texts, labels = examples()
    write_jsonl_cases(tmp_path / "train.jsonl", [(f"t{i}", t, d) for i, (t, d) in
                                                 enumerate(zip(texts, labels, strict=True))])
    # in scope: close rewordings of the training examples; out of scope: words the examples never use
    test = [(f"i{i}", t.split('my ')[1], d)
            for i, (t, d) in enumerate(zip(texts, labels, strict=True)) if i % 2 == 0]
    test += [(f"o{i}", text, OOS) for i, text in enumerate(["lunch with kate on friday", "the weather at the coast",
                                                             "plumber needed for a leaking tap", "school concert"])]
    write_jsonl_cases(tmp_path / "test.jsonl", test)
    (tmp_path / "set.toml").write_text('adapter = "jsonl"\npath = "./test.jsonl"\ntrain_path = "./train.jsonl"\n',
                                       encoding="utf-8")
    run = run_eval(load_eval_set(tmp_path / "set.toml"), tmp_path / name,
                   EvalOptions(stages=("route",), progress=False),
                   settings=Settings(route=route, store=StoreSettings(path=str(tmp_path / "log.db"), cache=False)),
                   embedder=HashEmbedder(), cache_dir=tmp_path / "cache")
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    records = [json.loads(line) for line in (run / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    return metrics, records, run


def test_a_planted_threshold_far_too_high_is_shown_as_the_threshold_s_cost(tmp_path: Path) -> None:
    metrics, records, run = run_route_eval(tmp_path, "high", RouteSettings(strategy="embedding", neighbours=3,
                                                                           oos_threshold=0.999))
    analysis = metrics["routing"]["oos_threshold"]
    in_scope = [r for r in records if r["expected"]["department"] != OOS]
    # every in-scope case is rejected, and the router had each one right before the threshold
    assert all(r["route"]["department"] == OOS for r in in_scope)
    had_right = [r["id"] for r in in_scope if r["route"]["before_threshold"] == r["expected"]["department"]]
    assert analysis["errors"]["in_scope_rejected"] == len(had_right) > 0
    assert analysis["no_threshold_accuracy"] > analysis["accuracy"]
    assert analysis["eval_best"]["accuracy"] > analysis["accuracy"]
    assert metrics["routing"]["accuracy"] == pytest.approx(analysis["accuracy"])
    assert all(r["route"]["oos_score"] < 0.999 for r in records)
    summary = format_summary(metrics)
    assert f"threshold errors: {len(had_right)} in-scope cases rejected" in summary
    assert "Accuracy against the out-of-scope threshold" in (run / "report.html").read_text(encoding="utf-8")


def test_a_threshold_that_separates_the_set_costs_nothing(tmp_path: Path) -> None:
    metrics, records, _ = run_route_eval(tmp_path, "cv", RouteSettings(strategy="embedding", neighbours=3))
    analysis = metrics["routing"]["oos_threshold"]
    scores = {r["id"]: r["route"]["oos_score"] for r in records}
    lowest_in = min(s for i, s in scores.items() if not i.startswith("o"))
    highest_out = max(s for i, s in scores.items() if i.startswith("o"))
    assert highest_out < lowest_in  # the planted set is separable by the score ...
    assert analysis["eval_best"]["out_of_scope_recall"] == 1.0
    assert analysis["eval_best"]["accuracy"] >= analysis["accuracy"]
    # ... so the ceiling is every out-of-scope case caught and every in-scope case the ranking had right kept
    ranked_right = sum(r["route"]["before_threshold"] == r["expected"]["department"] for r in records
                       if r["expected"]["department"] != OOS)
    out_of_scope = sum(r["expected"]["department"] == OOS for r in records)
    assert analysis["eval_best"]["accuracy"] == pytest.approx((ranked_right + out_of_scope) / len(records), abs=1e-6)
