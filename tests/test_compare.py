"""Comparing two runs: paired deltas, flips per stage, cases in one run only, prompt and settings differences."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from mailcascade.errors import EvalError
from mailcascade.eval.compare import compare_runs, dict_diff, format_compare
from mailcascade.eval.stats import mcnemar, paired_bootstrap
from test_report import make_record, write_run

PROMPTS_A = {"route": "Route this email.\n", "draft": "Draft a reply.\nBe short.\n"}
PROMPTS_B = {"route": "Route this email.\n", "draft": "Draft a reply.\nBe brief and kind.\n"}


def run_a() -> list[dict[str, Any]]:
    return [
        make_record("c1", "orders", "orders", retrieved=("p1",)),
        make_record("c2", "shipping", "orders", retrieved=("p9",)),
        make_record("c3", "billing", "billing", retrieved=("p1",)),
        make_record("c4", "billing", "shipping", retrieved=("p1",), reply=None),
        make_record("c5", "orders", "orders", retrieved=("p1",)),
        make_record("c6", "orders", None, retrieved=("p1",)),
        make_record("a_only", "orders", "orders", retrieved=("p1",)),
    ]


def run_b() -> list[dict[str, Any]]:
    return [
        make_record("c1", "orders", "orders", retrieved=("p9",)),  # retrieval broken
        make_record("c2", "shipping", "shipping", retrieved=("p1",)),  # routing and retrieval fixed
        make_record("c3", "billing", "shipping", retrieved=("p1",)),  # routing broken
        make_record("c4", "billing", "shipping", retrieved=("p1",), reply="valid now"),  # draft fixed
        make_record("c5", "orders", "orders", retrieved=("p1",), reply=None),  # draft broken
        make_record("c6", "orders", "orders", retrieved=("p1",)),  # routing fixed
        make_record("b_only", "billing", "billing", retrieved=("p1",)),
    ]


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(tmp_path / "a", run_a(), prompts=PROMPTS_A, top_k=5)
    b = write_run(tmp_path / "b", run_b(), prompts=PROMPTS_B, top_k=8)
    return a, b


def test_flips_and_cases_in_one_run_only(runs: tuple[Path, Path]) -> None:
    result = compare_runs(*runs)
    assert result["n_shared"] == 6
    assert result["only_a"] == ["a_only"] and result["only_b"] == ["b_only"]
    flips = {f["stage"]: f for f in result["flips"]}
    assert flips["routing correct"]["fixed"] == ["c2", "c6"]
    assert flips["routing correct"]["broken"] == ["c3"]
    assert flips["retrieval hit@5"]["fixed"] == ["c2"] and flips["retrieval hit@5"]["broken"] == ["c1"]
    assert flips["draft valid"]["fixed"] == ["c4"] and flips["draft valid"]["broken"] == ["c5"]
    assert all(f["n"] == 6 for f in flips.values())


def test_paired_deltas_on_shared_cases(runs: tuple[Path, Path]) -> None:
    result = compare_runs(*runs)
    deltas = {d["metric"]: d for d in result["deltas"]}
    route = deltas["route accuracy"]
    a, b = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # c1..c6
    assert route["n"] == 6 and route["a"] == pytest.approx(0.5) and route["b"] == pytest.approx(4 / 6)
    assert route["delta"] == pytest.approx(1 / 6)
    expected = paired_bootstrap(a, b, seed=0)
    assert route["ci_low"] == expected["ci_low"] and route["ci_high"] == expected["ci_high"]
    assert route["p_value"] == expected["p_value"]
    assert route["ci_low"] <= route["delta"] <= route["ci_high"]
    assert route["mcnemar_p"] == mcnemar([x == 1 for x in a], [y == 1 for y in b])
    # recall@5: one fixed, one broken -> no change; draft valid share 5/6 in both
    assert deltas["retrieval recall@5"]["delta"] == pytest.approx(0.0)
    assert deltas["draft valid share"]["a"] == pytest.approx(5 / 6)
    assert deltas["draft valid share"]["delta"] == pytest.approx(0.0)
    assert {"retrieval MRR", "retrieval nDCG@5", "draft ROUGE-L"} <= set(deltas)
    assert "mcnemar_p" not in deltas["retrieval MRR"]


def test_prompt_and_settings_differences(runs: tuple[Path, Path]) -> None:
    result = compare_runs(*runs)
    prompts = {p["name"]: p for p in result["prompts"]}
    assert not prompts["route"]["changed"] and prompts["route"]["diff"] == ""
    draft = prompts["draft"]
    assert draft["changed"] and draft["hash_a"] != draft["hash_b"]
    assert "-Be short.\n" in draft["diff"] and "+Be brief and kind.\n" in draft["diff"]
    assert "--- A/draft" in draft["diff"] and "+++ B/draft" in draft["diff"]
    assert result["settings"] == [{"key": "retrieval.top_k", "a": 5, "b": 8}]
    text = format_compare(result)
    assert "fixed:  c2, c6" in text and "broken: c3" in text
    assert f"draft: {draft['hash_a']} -> {draft['hash_b']} (changed)" in text
    assert "retrieval.top_k: 5 -> 8" in text
    assert "only in A: a_only" in text and "only in B: b_only" in text
    route_line = next(line for line in text.splitlines() if line.startswith("route accuracy"))
    assert "+0.167" in route_line


def test_identical_runs(tmp_path: Path, runs: tuple[Path, Path]) -> None:
    a = runs[0]
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    result = compare_runs(a, copy)
    assert all(d["delta"] == 0 and d["p_value"] == 1.0 for d in result["deltas"])
    assert all(not f["fixed"] and not f["broken"] for f in result["flips"])
    assert not any(p["changed"] for p in result["prompts"])
    assert result["settings"] == [] and result["only_a"] == [] and result["only_b"] == []
    assert "settings: no differences" in format_compare(result)


def test_dict_diff_flattens_and_marks_absent_keys() -> None:
    rows = dict_diff({"a": {"b": 1, "same": 2}, "c": [1]}, {"a": {"b": 2, "same": 2, "d": 3}})
    assert rows == [{"key": "a.b", "a": 1, "b": 2}, {"key": "a.d", "a": "<absent>", "b": 3},
                    {"key": "c", "a": [1], "b": "<absent>"}]


def test_not_a_run_directory(tmp_path: Path, runs: tuple[Path, Path]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="not a run directory"):
        compare_runs(runs[0], tmp_path / "empty")
    with pytest.raises(EvalError, match="not a run directory"):
        compare_runs(tmp_path / "missing", runs[1])
    (runs[1] / "run.json").write_text("{not json")
    with pytest.raises(EvalError, match="cannot read"):
        compare_runs(runs[0], runs[1])
