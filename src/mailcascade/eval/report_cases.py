"""The report's case browser: every case in one table to filter and sort, each opening to its email and outputs.

One `<tbody class="case">` per case holds a summary row and a detail row, so sorting moves both. Alarm and
ceiling case ids elsewhere in the page link to `#case-<anchor>`; opening such a link opens that case. The script
is inline and small: the page stays one self-contained file that works offline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

MAX_RAW_CHARS = 4000
FILTERS = (("outcome", "outcome"), ("gold", "gold department"), ("pred", "predicted"), ("code", "failure code"),
           ("alarm", "alarm"))


def case_anchor(case_id: Any) -> str:
    """The HTML id of a case's row: `case-` and the id with anything but letters, digits, - and _ replaced."""
    return "case-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(case_id))


def case_link(case_id: Any) -> str:
    return f'<a href="#{case_anchor(case_id)}"><code>{escape(str(case_id))}</code></a>'


def outcome(record: Mapping[str, Any]) -> str:
    """One word for the case: error (no answer from the model), failed, wrong (a stage scored wrong), ok."""
    stages = record.get("stages") or []
    if any(s.get("status") == "error" for s in stages):
        return "error"
    if record.get("status") == "failed":
        return "failed"
    scores = record.get("scores") or {}
    retrieval = scores.get("retrieval") or {}
    if scores.get("route_correct") is False or retrieval.get("hit_rate@5", retrieval.get("mrr")) == 0:
        return "wrong"
    return "ok"


def _attr(values: Sequence[str]) -> str:
    return escape(" ".join(sorted({v.replace(" ", "_") for v in values if v})))


def _raw(text: str) -> str:
    cut = text[:MAX_RAW_CHARS]
    more = f"\n[... {len(text) - MAX_RAW_CHARS} more characters]" if len(text) > MAX_RAW_CHARS else ""
    return f"<pre>{escape(cut + more)}</pre>"


def _detail(record: Mapping[str, Any], level: str) -> str:
    email = record.get("email") or {}
    exp = record.get("expected") or {}
    parts = []
    if email:
        parts.append(f'<div class="email"><b>Subject:</b> {escape(str(email.get("subject") or ""))}'
                     f"{_raw(str(email.get('body') or ''))}</div>")
    else:
        parts.append('<p class="note">The email text is not in this run (made before runs stored it).</p>')
    if record.get("error"):
        parts.append(f'<p class="note">error: {escape(str(record["error"]))}</p>')
    route = record.get("route")
    if route:
        parts.append(f"<p><b>route</b>: {escape(str(route.get('department')))} (confidence "
                     f"{route.get('confidence')}) — {escape(str(route.get('reason') or ''))}; gold: "
                     f"{escape(str(exp.get('department')))}</p>")
    key = "passage_id" if level == "passage" else "product_id"
    relevant = exp.get("relevant") or {}
    if record.get("retrieved"):
        hits = ", ".join(f"{escape(str(h[key]))}{'✓' if h[key] in relevant else ''} ({h.get('score', 0):.3f})"
                         for h in record["retrieved"])
        parts.append(f"<p><b>retrieved</b> (✓ relevant): {hits}<br>relevant: "
                     f"{escape(', '.join(f'{k}:{v}' for k, v in relevant.items()) or 'none given')}</p>")
    for s in record.get("stages") or []:
        codes = ", ".join(s.get("failure_codes") or []) or "no codes"
        parts.append(f"<p><b>{escape(str(s.get('stage')))}</b>: {escape(str(s.get('status')))}, {escape(codes)}, "
                     f"{s.get('attempts', 0)} answers / {s.get('http_attempts', 0)} requests"
                     + (f", error: {escape(str(s['error']))}" if s.get("error") else "") + "</p>")
        for a in s.get("attempt_log") or []:
            acodes = ", ".join(c["code"] for c in a.get("codes", [])) or "no codes"
            label = (f"{s['stage']} attempt {a.get('n')}: {a.get('status')}, finish {a.get('finish_reason')}"
                     f"{', cached' if a.get('cached') else ''} ({acodes})")
            parts.append(f"<details><summary>{escape(label)}</summary>{_raw(str(a.get('raw') or ''))}</details>")
    draft = record.get("draft")
    if draft is not None or exp.get("reference_reply"):
        reply = str((draft or {}).get("reply") or "(no valid draft)")
        cited = ", ".join((draft or {}).get("cited") or []) or "none"
        parts.append('<div class="pair"><div><b>draft</b> (cites ' + escape(cited) + f"){_raw(reply)}</div>"
                     f"<div><b>reference reply</b>{_raw(str(exp.get('reference_reply') or '(none)'))}</div></div>")
    return "".join(parts)


def cases_section(records: Sequence[Mapping[str, Any]], level: str, alarms: Sequence[Mapping[str, Any]]) -> str:
    by_case: dict[str, list[str]] = {}
    for alarm in alarms:
        for case_id in alarm.get("cases") or []:
            by_case.setdefault(str(case_id), []).append(str(alarm.get("name")))
    heads = ("id", "outcome", "gold", "predicted", "conf.", "codes", "alarms")
    rows = []
    options: dict[str, set[str]] = {k: set() for k, _ in FILTERS}
    for r in records:
        route = r.get("route") or {}
        codes = sorted({c for s in r.get("stages") or [] for c in s.get("failure_codes") or []})
        values = {"outcome": [outcome(r)], "gold": [str((r.get("expected") or {}).get("department") or "")],
                  "pred": [str(route.get("department") or "")], "code": codes, "alarm": by_case.get(str(r["id"]), [])}
        for k, vs in values.items():
            options[k].update(v for v in vs if v)
        data = " ".join(f'data-{k}="{_attr(vs)}"' for k, vs in values.items())
        conf = route.get("confidence")
        cells = [case_link(r["id"]), escape(values["outcome"][0]), escape(values["gold"][0]), escape(values["pred"][0]),
                 f"{conf:.2f}" if isinstance(conf, int | float) else "–", escape(", ".join(codes)),
                 escape(", ".join(values["alarm"]))]
        summary = "".join(f"<td>{c}</td>" for c in cells)
        rows.append(f'<tbody class="case" id="{case_anchor(r["id"])}" {data} data-id="{escape(str(r["id"]))}" '
                    f'data-conf="{conf if isinstance(conf, int | float) else -1}"><tr class="sum">{summary}</tr>'
                    f'<tr class="detail" hidden><td colspan="{len(heads)}">{_detail(r, level)}</td></tr></tbody>')
    selects = "".join(
        f'<label>{escape(label)} <select data-filter="{key}"><option value="">all</option>'
        + "".join(f'<option value="{_attr([v])}">{escape(v)}</option>' for v in sorted(options[key]))
        + "</select></label> " for key, label in FILTERS)
    head = "".join(f'<th data-sort="{i}">{escape(h)} ⇅</th>' for i, h in enumerate(heads))
    return (f'<section id="cases"><h2>Cases</h2><p class="note">Every case. Filter, sort by a column (click its '
            f'head), click a row to open the email, each stage\'s output and the raw model answers.</p>'
            f'<div class="filters">{selects}<input type="search" placeholder="search text" data-filter="text"> '
            f'<span id="shown">{len(records)}</span> shown</div><table id="case-table"><thead><tr>{head}</tr></thead>'
            + "".join(rows) + f"</table></section><script>{SCRIPT}</script>")


CSS = """
.case .sum{cursor:pointer}.case .sum:hover{background:#eef4fb}.case.open .sum{background:#e2ecf7}
.detail td{background:#fafafa}.detail pre{white-space:pre-wrap;max-height:320px;overflow:auto}
.pair{display:flex;gap:12px}.pair>div{flex:1;min-width:0}.filters label{margin-right:8px}
#case-table th[data-sort]{cursor:pointer}
"""

SCRIPT = """
(function(){
const table=document.getElementById('case-table');if(!table)return;
const cases=[...table.querySelectorAll('tbody.case')];
function open(tb,on){tb.classList.toggle('open',on);tb.querySelector('.detail').hidden=!on;}
cases.forEach(tb=>tb.querySelector('.sum').addEventListener('click',e=>{
  if(e.target.tagName==='A')return;open(tb,tb.querySelector('.detail').hidden);}));
function apply(){
  const sel=[...document.querySelectorAll('[data-filter]')];let n=0;
  cases.forEach(tb=>{let ok=true;sel.forEach(s=>{const v=s.value.trim();if(!v)return;
    if(s.dataset.filter==='text'){ok=ok&&tb.textContent.toLowerCase().includes(v.toLowerCase());}
    else{ok=ok&&(tb.dataset[s.dataset.filter]||'').split(' ').includes(v);}});
    tb.hidden=!ok;n+=ok?1:0;});
  document.getElementById('shown').textContent=n;}
document.querySelectorAll('[data-filter]').forEach(s=>s.addEventListener('input',apply));
let dir={};
table.querySelectorAll('th[data-sort]').forEach(th=>th.addEventListener('click',()=>{
  const i=+th.dataset.sort;dir[i]=-(dir[i]||-1);
  const key=tb=>i===4?parseFloat(tb.dataset.conf):tb.querySelector('.sum').children[i].textContent;
  cases.sort((a,b)=>{const x=key(a),y=key(b);return (x<y?-1:x>y?1:0)*dir[i];});
  cases.forEach(tb=>table.appendChild(tb));}));
function show(){const id=decodeURIComponent(location.hash.slice(1));const tb=document.getElementById(id);
  if(tb&&tb.classList.contains('case')){tb.hidden=false;open(tb,true);tb.scrollIntoView();}}
window.addEventListener('hashchange',show);show();
})();
"""
