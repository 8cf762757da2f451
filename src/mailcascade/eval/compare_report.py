"""`compare A B --html OUT`: the comparison of two runs as one self-contained page, like the run report.

Metric deltas with their paired intervals, the flips per stage, every flipped case side by side with both runs'
outputs (the report's case browser, showing two runs), the prompt diffs and the configuration differences.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from mailcascade.errors import EvalError
from mailcascade.eval.compare import MISSING, compare_loaded
from mailcascade.eval.report import Html, load_run, note, num, page, section, table, when
from mailcascade.eval.report_cases import CaseRow, case_browser, case_data, case_link, failure_codes

Record = Mapping[str, Any]
FILTERS = (("flip", "flip"), ("stage", "stage"), ("gold", "gold department"), ("code", "failure code"))
MAX_IDS = 40


def write_compare_html(a: Path, b: Path, out: Path) -> dict[str, Any]:
    """Compare two run directories, write the page to `out` (replaced whole) and return the comparison."""
    run_a, run_b = load_run(Path(a)), load_run(Path(b))
    result = compare_loaded(Path(a), run_a, Path(b), run_b)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_text(render_compare(result, run_a[0], run_a[2], run_b[0], run_b[2]), encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise EvalError(f"--html {out}: cannot write ({exc.strerror or exc}); give a path in a writable "
                        "folder") from None
    return result


def _header(result: Mapping[str, Any], info_a: Mapping[str, Any], info_b: Mapping[str, Any]) -> str:
    rows: list[list[Any]] = []
    for side, info in (("a", info_a), ("b", info_b)):
        r = result[side]
        model = ((info.get("settings") or {}).get("llm") or {}).get("model")
        stages = ", ".join((info.get("options") or {}).get("stages") or [])
        rows.append([side.upper(), Html(f"<code>{escape(str(r['path']))}</code>"), r.get("name"), r["n_cases"],
                     when(r.get("created")), model, stages])
    shared = (f"{result['n_shared']} shared cases, {len(result['only_a'])} only in A, {len(result['only_b'])} only in "
              "B; failed cases: A " + num(result["n_failed"]["a"]) + ", B " + num(result["n_failed"]["b"]))
    return ("<h1>mailcascade compare: " + escape(f"{result['a'].get('name')} vs {result['b'].get('name')}") + "</h1>"
            + table(["run", "path", "eval set", "cases", "date", "model", "stages"], rows) + note(shared))


def _deltas(result: Mapping[str, Any]) -> str:
    rows = [[d["metric"], d["n"], d["a"], d["b"], Html(f"{d['delta']:+.3f}"),
             f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]", d["p_value"], d.get("mcnemar_p")] for d in result["deltas"]]
    text = ("B - A on the cases both runs scored. 95% CI: percentile bootstrap of the mean paired difference "
            "(cases resampled together); p: two-sided, from that bootstrap; McNemar p: exact test on the routing "
            "cases only one run got right.")
    body = table(["metric (B - A)", "n", "A", "B", "delta", "95% CI", "p", "McNemar p"], rows) if rows else ""
    return section("deltas", "Metric deltas", note(text) + (body or note("No metric was scored in both runs.")))


def _ids(ids: Sequence[str]) -> Html:
    shown = ", ".join(case_link(i) for i in ids[:MAX_IDS])
    return Html((shown + (f" … (+{len(ids) - MAX_IDS})" if len(ids) > MAX_IDS else "")) if ids else "–")


def _flips(result: Mapping[str, Any]) -> str:
    rows = [[f["stage"], f["n"], len(f["fixed"]), len(f["broken"]), _ids(f["fixed"]), _ids(f["broken"])]
            for f in result["flips"]]
    text = "fixed: wrong in A and right in B; broken: right in A and wrong in B. Click an id to open the case."
    return section("flips", "Flips per stage",
                   note(text) + table(["stage", "cases", "fixed", "broken", "fixed ids", "broken ids"], rows))


def flip_rows(result: Mapping[str, Any], records_a: Sequence[Record], records_b: Sequence[Record],
              level: str) -> list[CaseRow]:
    """One row per case that flipped in any stage, in A's order, with both runs' data."""
    flips: dict[str, list[tuple[str, str]]] = {}
    for f in result["flips"]:
        for direction in ("fixed", "broken"):
            for case_id in f[direction]:
                flips.setdefault(case_id, []).append((f["stage"], direction))
    by_b = {str(r["id"]): r for r in records_b}
    rows = []
    for ra in records_a:
        case_id = str(ra["id"])
        if case_id not in flips:
            continue
        rb = by_b[case_id]
        pred_a, pred_b = ((r.get("route") or {}).get("department") or "" for r in (ra, rb))
        gold = str((ra.get("expected") or {}).get("department") or "")
        codes_a, codes_b = failure_codes(ra), failure_codes(rb)
        what = "; ".join(f"{stage}: {direction}" for stage, direction in flips[case_id])
        cells = [case_link(case_id), escape(what), escape(gold), escape(str(pred_a)), escape(str(pred_b)),
                 escape(", ".join(codes_a)), escape(", ".join(codes_b))]
        values = {"flip": [d for _, d in flips[case_id]], "stage": [s for s, _ in flips[case_id]], "gold": [gold],
                  "code": codes_a + codes_b}
        rows.append(CaseRow(case_id, cells, values, [("A", case_data(ra, level)), ("B", case_data(rb, level))]))
    return rows


def _diff_html(diff: str) -> str:
    lines = []
    for line in diff.splitlines():
        kind = "add" if line.startswith("+") and not line.startswith("+++") else \
            "del" if line.startswith("-") and not line.startswith("---") else ""
        lines.append(f'<span class="{kind}">{escape(line)}</span>' if kind else escape(line))
    return '<pre class="diff">' + "\n".join(lines) + "</pre>"


def _prompts(result: Mapping[str, Any]) -> str:
    prompts = result["prompts"]
    rows = [[p["name"], p["hash_a"], p["hash_b"], p["version_a"], p["version_b"], p["changed"]] for p in prompts]
    body = table(["prompt", "hash A", "hash B", "version A", "version B", "changed"], rows) if rows else \
        note("Neither run records its prompts.")
    body += "".join(f"<h3>{escape(p['name'])}</h3>" + _diff_html(p["diff"]) for p in prompts if p["diff"])
    return section("prompts", "Prompts", body)


def _value(value: Any) -> str:
    return value if value == MISSING else json.dumps(value, ensure_ascii=False)


def _config(result: Mapping[str, Any]) -> str:
    body = ""
    for key, title in (("settings", "Settings"), ("options", "Eval options"), ("eval_set", "Eval set")):
        rows = [[r["key"], _value(r["a"]), _value(r["b"])] for r in result[key]]
        body += f"<h3>{title}</h3>" + (table(["key", "A", "B"], rows) if rows else note("no differences"))
    return section("config", "Configuration", body)


def render_compare(result: Mapping[str, Any], info_a: Mapping[str, Any], records_a: Sequence[Record],
                   info_b: Mapping[str, Any], records_b: Sequence[Record]) -> str:
    """The whole page as a string."""
    level = str(info_a.get("relevance_level", "product"))
    rows = flip_rows(result, records_a, records_b, level)
    cases = case_browser(rows, ("id", "flips", "gold", "A predicted", "B predicted", "A codes", "B codes"), FILTERS,
                         title="Flipped cases", intro="Every case that one run got right and the other wrong, with "
                         "both runs' outputs side by side.")
    only = "".join(f"<p>{label}: {', '.join(escape(i) for i in result[key][:200])}"
                   + (f" … (+{len(result[key]) - 200})" if len(result[key]) > 200 else "") + "</p>"
                   for key, label in (("only_a", "only in A"), ("only_b", "only in B")) if result[key])
    parts = [("deltas", "Deltas", _deltas(result)), ("flips", "Flips", _flips(result)),
             ("cases", "Flipped cases", cases), ("prompts", "Prompts", _prompts(result)),
             ("config", "Configuration", _config(result))]
    if only:
        parts.append(("only", "Cases in one run", section("only", "Cases in one run only", only)))
    return page(f"mailcascade compare: {result['a'].get('name')} vs {result['b'].get('name')}",
                _header(result, info_a, info_b), parts)
