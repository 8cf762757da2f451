"""Comparing two runs: paired deltas, flips per stage, cases in one run only, prompt and settings differences."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from bigrun import BITEXT, big_run
from mailcascade.cli import main
from mailcascade.errors import EvalError
from mailcascade.eval.compare import compare_runs, dict_diff, format_compare
from mailcascade.eval.compare_report import write_compare_html
from mailcascade.eval.stats import mcnemar, paired_bootstrap
from test_report import CHROMIUM, case_data, chromium_dom, make_record, write_run

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


# ------------------------------------------------------------------ compare --html


def html_runs(tmp_path: Path, prompts_b: dict[str, str] = PROMPTS_B) -> tuple[Path, Path]:
    """Runs A and B of the fixture plus one case scored alike in both (it must not show as flipped)."""
    same = make_record("c7", "billing", "billing", retrieved=("p1",))
    a = write_run(tmp_path / "a", [*run_a(), same], prompts=PROMPTS_A, top_k=5)
    b = write_run(tmp_path / "b", [*run_b(), same], prompts=prompts_b, top_k=8)
    return a, b


def test_compare_html_has_deltas_flipped_cases_with_both_outputs_and_the_prompt_diff(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = html_runs(tmp_path)
    out = tmp_path / "cmp.html"
    assert main(["compare", str(a), str(b), "--html", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == format_compare(compare_runs(a, b)).strip()  # the text output is unchanged
    assert f"wrote {out}" in printed.err
    html = out.read_text(encoding="utf-8")
    for ident in ("deltas", "flips", "cases", "prompts", "config", "only"):
        assert f'<section id="{ident}">' in html
    # deltas: the paired interval and McNemar of route accuracy, as compare_runs computes them
    route = next(d for d in compare_runs(a, b)["deltas"] if d["metric"] == "route accuracy")
    deltas = html[html.index('<section id="deltas">'):html.index('<section id="flips">')]
    assert (f"<td>route accuracy</td><td>7</td><td>{route['a']:.3f}</td><td>{route['b']:.3f}</td>"
            f"<td>{route['delta']:+.3f}</td><td>[{route['ci_low']:+.3f}, {route['ci_high']:+.3f}]</td>") in deltas
    assert f"<td>{route['mcnemar_p']:.3f}</td>" in deltas
    # flipped cases: one row each (c7 is not one), both runs' data side by side
    rows = dict(re.findall(r'<tbody class="case" id="case-(c\d)" data-n="\d+" ([^>]*)>', html))
    assert sorted(rows) == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert 'data-flip="broken" data-stage="routing_correct"' in rows["c3"]
    assert 'data-flip="fixed"' in rows["c2"] and "retrieval_hit@5" in rows["c2"]
    data = case_data(html)
    a_side, b_side = data["c3"]
    assert a_side["label"] == "A" and b_side["label"] == "B"
    assert a_side["route"]["department"] == "billing" and b_side["route"]["department"] == "shipping"
    assert a_side["stages"][0]["attempts"][0]["raw"] == '{"department": "orders"}'
    assert data["c4"][0]["draft"] is None and data["c4"][1]["draft"]["reply"] == "valid now"
    assert data["c4"][0]["reference"] == "thanks for your order"
    flips = html[html.index('<section id="flips">'):html.index('<section id="cases">')]
    for target in re.findall(r'href="#(case-[^"]+)"', flips):
        assert target.removeprefix("case-") in rows  # every flip id opens its case
    # the prompt diff, coloured, and the settings that differ
    prompts = html[html.index('<section id="prompts">'):html.index('<section id="config">')]
    assert '<span class="del">-Be short.</span>' in prompts
    assert '<span class="add">+Be brief and kind.</span>' in prompts
    assert prompts.count('<pre class="diff">') == 1  # the route prompt did not change
    assert "<td>retrieval.top_k</td><td>5</td><td>8</td>" in html
    assert "only in A: a_only" in html and "only in B: b_only" in html
    # one self-contained file
    assert "http://" not in html and "https://" not in html and "<link" not in html and "src=" not in html
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', html))


def test_compare_html_of_identical_runs_has_no_flips_and_no_diff(tmp_path: Path) -> None:
    a, _ = html_runs(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    result = write_compare_html(a, copy, tmp_path / "same.html")
    html = (tmp_path / "same.html").read_text(encoding="utf-8")
    assert result == compare_runs(a, copy)
    assert '<tbody class="case"' not in html and '<span id="shown">0</span>' in html
    assert '<pre class="diff">' not in html and html.count("no differences") == 3


def test_compare_html_to_an_unwritable_place_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = html_runs(tmp_path)
    assert main(["compare", str(a), str(b), "--html", str(tmp_path / "missing" / "cmp.html")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--html" in err and "missing" in err


def test_compare_help_names_html(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "--html OUT" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium")
def test_a_flipped_case_opens_with_both_runs_in_chromium(tmp_path: Path) -> None:
    a, b = html_runs(tmp_path)
    records = run_a()
    records[2]["email"] = {"subject": "Invoice twice", "body": "I was billed twice.", "from": "x@y.z"}
    write_run(a, [*records], prompts=PROMPTS_A, top_k=5)
    out = tmp_path / "cmp.html"
    write_compare_html(a, b, out)
    dom = chromium_dom(out.as_uri() + "#case-c3", tmp_path / "profile")
    case = re.search(r'<tbody class="case open" id="case-c3".*?</tbody>', dom, flags=re.S)
    assert case is not None, "the linked case did not open"
    detail = case.group(0)
    assert "Invoice twice" in detail and "I was billed twice." in detail
    assert "<h4>A</h4>" in detail and "<h4>B</h4>" in detail
    assert "<b>route</b>: billing" in detail and "<b>route</b>: shipping" in detail
    assert detail.count("route attempt 1") == 2
    assert "<b>draft A</b>" in detail and "<b>draft B</b>" in detail and "reference reply" in detail
    assert dom.count('<tbody class="case open"') == 1


# ------------------------------------------------------------------ 1,000 cases


@pytest.mark.slow
@pytest.mark.skipif(not BITEXT.is_dir(), reason="the shared Bitext data is not there")
def test_a_report_and_a_compare_page_of_1000_real_cases_stay_small(tmp_path: Path) -> None:
    a = big_run(tmp_path, "a", 1000)
    b = big_run(tmp_path, "b", 1000, variant="b")
    report = (a / "report.html").read_text(encoding="utf-8")
    assert len(report.encode()) < 5_000_000
    data = case_data(report)
    assert len(data) == 1000 and len(set(data)) == 1000  # every case, once
    assert all(d[0]["email"]["body"] and [s["stage"] for s in d[0]["stages"]] == ["route", "retrieve", "draft"]
               for d in data.values())
    reasked = [d for d in data.values() if len(d[0]["stages"][2]["attempts"]) == 2]
    assert reasked and all("truncated" in d[0]["stages"][2]["attempts"][0]["label"] for d in reasked)
    # the table holds summary rows only: a case's detail is rendered from the data when it is opened
    rows = report[report.index('<section id="cases">'):report.index('<script type="application/json"')]
    assert len(rows.encode()) < 600 * 1000 and "<details>" not in rows and "<pre>" not in rows
    assert report.count('<tr class="sum">') == 1000 and 'class="detail"' not in report

    out = tmp_path / "cmp.html"
    result = write_compare_html(a, b, out)
    page = out.read_text(encoding="utf-8")
    assert len(page.encode()) < 5_000_000
    flipped = {i for f in result["flips"] for i in f["fixed"] + f["broken"]}
    assert len(flipped) >= 20 and set(case_data(page)) == flipped
    assert all(len(sides) == 2 for sides in case_data(page).values())
    assert '<pre class="diff">' in page and "+Keep the reply under 120 words." in page
    if CHROMIUM.exists():  # the big report opens at a linked case with its detail rendered
        case_id = sorted(flipped)[0]
        dom = chromium_dom(out.as_uri() + f"#case-{case_id}", tmp_path / "profile")
        assert re.search(rf'<tbody class="case open" id="case-{case_id}".*?<h4>B</h4>.*?</tbody>', dom, flags=re.S)
