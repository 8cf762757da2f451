"""The case browser of the run report and the compare page: cases in one table to filter and sort, each opening to
its email and outputs.

Each case's data is stored once, as JSON in the page; the table holds only the summary rows, and a case's detail
(the email, each stage's output, the raw model answer of every attempt with its codes, the draft beside the
reference reply) is rendered from that data by the inline script when the case is opened. So a page of 1,000
cases stays small and opens fast. A case shows one run (the report) or two side by side (compare). Links to
`#case-<anchor>` elsewhere in the page open that case. Nothing is loaded from outside the page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

MAX_RAW_CHARS = 4000
FILTERS = (("outcome", "outcome"), ("gold", "gold department"), ("pred", "predicted"), ("code", "failure code"),
           ("alarm", "alarm"))
Record = Mapping[str, Any]


def case_anchor(case_id: Any) -> str:
    """The HTML id of a case's row: `case-` and the id with anything but letters, digits, - and _ replaced."""
    return "case-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(case_id))


def case_link(case_id: Any) -> str:
    return f'<a href="#{case_anchor(case_id)}"><code>{escape(str(case_id))}</code></a>'


def outcome(record: Record) -> str:
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


def failure_codes(record: Record) -> list[str]:
    return sorted({c for s in record.get("stages") or [] for c in s.get("failure_codes") or []})


def _cut(value: Any) -> str:
    text = str(value or "")
    return text[:MAX_RAW_CHARS] + (f"\n[... {len(text) - MAX_RAW_CHARS} more characters]"
                                   if len(text) > MAX_RAW_CHARS else "")


def case_data(record: Record, level: str) -> dict[str, Any]:
    """What the detail of one case shows, as plain JSON (long texts cut to MAX_RAW_CHARS)."""
    email = record.get("email") or {}
    exp = record.get("expected") or {}
    key = "passage_id" if level == "passage" else "product_id"
    relevant = exp.get("relevant") or {}
    route = record.get("route")
    draft = record.get("draft")
    stages = []
    for s in record.get("stages") or []:
        attempts = [{"label": f"{s.get('stage')} attempt {a.get('n')}: {a.get('status')}, finish "
                              f"{a.get('finish_reason')}{', cached' if a.get('cached') else ''} "
                              f"({', '.join(c['code'] for c in a.get('codes', [])) or 'no codes'})",
                     "raw": _cut(a.get("raw"))} for a in s.get("attempt_log") or []]
        stages.append({"stage": s.get("stage"), "status": s.get("status"),
                       "codes": ", ".join(s.get("failure_codes") or []) or "no codes",
                       "answers": s.get("attempts", 0), "requests": s.get("http_attempts", 0),
                       "error": s.get("error") or "", "attempts": attempts})
    return {
        "email": {"subject": str(email.get("subject") or ""), "body": _cut(email.get("body"))} if email else None,
        "error": str(record.get("error") or ""),
        "route": {"department": route.get("department"), "confidence": route.get("confidence"),
                  "reason": str(route.get("reason") or "")} if route else None,
        "gold": exp.get("department"),
        "retrieved": [[h[key], round(float(h.get("score", 0)), 3), h[key] in relevant]
                      for h in record.get("retrieved") or []],
        "relevant": ", ".join(f"{k}:{v}" for k, v in relevant.items()),
        "stages": stages,
        "draft": {"reply": _cut(draft.get("reply")), "cited": ", ".join(draft.get("cited") or []) or "none"}
        if draft is not None else None,
        "reference": _cut(exp.get("reference_reply")) if exp.get("reference_reply") else None,
    }


@dataclass(frozen=True)
class CaseRow:
    """One case of a browser: its summary cells (HTML), filter values, the numeric sort key of a cell (by column
    index), and the runs' data for its detail (one `case_data` per run, with a label)."""

    case_id: str
    cells: Sequence[str]
    filters: Mapping[str, Sequence[str]]
    sides: Sequence[tuple[str, Mapping[str, Any]]]
    numbers: Mapping[int, float] = field(default_factory=dict)


def _attr(values: Sequence[str]) -> str:
    return escape(" ".join(sorted({v.replace(" ", "_") for v in values if v})))


def _json_for_script(data: Any) -> str:
    """JSON that cannot end the <script> element it sits in (or open a comment): <, > and & as \\u escapes."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def case_browser(rows: Sequence[CaseRow], heads: Sequence[str], filters: Sequence[tuple[str, str]], *,
                 title: str = "Cases", intro: str = "") -> str:
    """The section: filters, the table of summary rows, the case data as JSON and the script that renders it."""
    options: dict[str, set[str]] = {k: set() for k, _ in filters}
    body = []
    for n, row in enumerate(rows):
        for k, vs in row.filters.items():
            options.setdefault(k, set()).update(v for v in vs if v)
        data = " ".join(f'data-{k}="{_attr(vs)}"' for k, vs in row.filters.items())
        cells = "".join(f'<td data-v="{row.numbers[i]}">{c}</td>' if i in row.numbers else f"<td>{c}</td>"
                        for i, c in enumerate(row.cells))
        body.append(f'<tbody class="case" id="{case_anchor(row.case_id)}" data-n="{n}" {data}>'
                    f'<tr class="sum">{cells}</tr></tbody>')
    selects = "".join(
        f'<label>{escape(label)} <select data-filter="{key}"><option value="">all</option>'
        + "".join(f'<option value="{_attr([v])}">{escape(v)}</option>' for v in sorted(options[key]))
        + "</select></label> " for key, label in filters)
    head = "".join(f'<th data-sort="{i}">{escape(h)} ⇅</th>' for i, h in enumerate(heads))
    sides = [[{"label": label, **side} for label, side in row.sides] for row in rows]
    return (f'<section id="cases"><h2>{escape(title)}</h2><p class="note">{escape(intro)} Filter, sort by a column '
            "(click its head), click a row to open the email, each stage's output and the raw model answers.</p>"
            f'<div class="filters">{selects}<input type="search" placeholder="search text" data-filter="text"> '
            f'<span id="shown">{len(rows)}</span> shown</div><table id="case-table"><thead><tr>{head}</tr></thead>'
            + "".join(body) + '</table><script type="application/json" id="case-data">' + _json_for_script(sides)
            + f"</script></section><script>{SCRIPT}</script>")


def report_rows(records: Sequence[Record], level: str, alarms: Sequence[Mapping[str, Any]]) -> list[CaseRow]:
    """The report's rows: every case of one run."""
    by_case: dict[str, list[str]] = {}
    for alarm in alarms:
        for case_id in alarm.get("cases") or []:
            by_case.setdefault(str(case_id), []).append(str(alarm.get("name")))
    rows = []
    for r in records:
        route = r.get("route") or {}
        codes = failure_codes(r)
        values = {"outcome": [outcome(r)], "gold": [str((r.get("expected") or {}).get("department") or "")],
                  "pred": [str(route.get("department") or "")], "code": codes, "alarm": by_case.get(str(r["id"]), [])}
        raw = route.get("confidence")
        conf = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
        cells = [case_link(r["id"]), escape(values["outcome"][0]), escape(values["gold"][0]), escape(values["pred"][0]),
                 "–" if conf is None else f"{conf:.2f}", escape(", ".join(codes)), escape(", ".join(values["alarm"]))]
        rows.append(CaseRow(str(r["id"]), cells, values, [("", case_data(r, level))],
                            {4: -1.0 if conf is None else conf}))
    return rows


def cases_section(records: Sequence[Record], level: str, alarms: Sequence[Mapping[str, Any]]) -> str:
    """The report's case browser: every case."""
    return case_browser(report_rows(records, level, alarms),
                        ("id", "outcome", "gold", "predicted", "conf.", "codes", "alarms"), FILTERS,
                        intro="Every case.")


CSS = """
.case .sum{cursor:pointer}.case .sum:hover{background:#eef4fb}.case.open .sum{background:#e2ecf7}
.detail td{background:#fafafa;text-align:left}.detail pre{white-space:pre-wrap;max-height:320px;overflow:auto}
.pair{display:flex;gap:12px}.pair>div{flex:1;min-width:0}.filters label{margin-right:8px}
#case-table th[data-sort]{cursor:pointer}#case-table td{text-align:left}
.side{border-top:2px solid #2b6cb0;margin-top:4px}
"""

# The detail renderer: every value from the data goes through esc() before it is put into HTML.
SCRIPT = """
(function(){
const table=document.getElementById('case-table');if(!table)return;
const DATA=JSON.parse(document.getElementById('case-data').textContent);
const cases=[...table.querySelectorAll('tbody.case')];
const ENT={'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'};
const esc=v=>String(v==null?'':v).replace(/[&<>"']/g,c=>ENT[c]);
const pre=t=>'<pre>'+esc(t)+'</pre>';
function outputs(d){let h='';
  if(d.error)h+='<p class="note">error: '+esc(d.error)+'</p>';
  if(d.route)h+='<p><b>route</b>: '+esc(d.route.department)+' (confidence '+esc(d.route.confidence)+') — '
    +esc(d.route.reason)+'; gold: '+esc(d.gold)+'</p>';
  if(d.retrieved.length)h+='<p><b>retrieved</b> (✓ relevant): '+d.retrieved.map(x=>esc(x[0])+(x[2]?'✓':'')
    +' ('+Number(x[1]).toFixed(3)+')').join(', ')+'<br>relevant: '+esc(d.relevant||'none given')+'</p>';
  d.stages.forEach(s=>{h+='<p><b>'+esc(s.stage)+'</b>: '+esc(s.status)+', '+esc(s.codes)+', '+esc(s.answers)
    +' answers / '+esc(s.requests)+' requests'+(s.error?', error: '+esc(s.error):'')+'</p>';
    s.attempts.forEach(a=>{h+='<details><summary>'+esc(a.label)+'</summary>'+pre(a.raw)+'</details>';});});
  return h;}
function draft(d){return d.draft?'<div><b>draft'+(d.label?' '+esc(d.label):'')+'</b> (cites '+esc(d.draft.cited)+')'
  +pre(d.draft.reply)+'</div>':'<div><b>draft'+(d.label?' '+esc(d.label):'')+'</b>'+pre('(no valid draft)')+'</div>';}
function detail(sides){const d=sides[0];let h='';
  h+=d.email?'<div class="email"><b>Subject:</b> '+esc(d.email.subject)+pre(d.email.body)+'</div>'
    :'<p class="note">The email text is not in this run (made before runs stored it).</p>';
  if(sides.length>1)h+='<div class="pair">'+sides.map(s=>'<div class="side"><h4>'+esc(s.label)+'</h4>'
    +outputs(s)+'</div>').join('')+'</div>';else h+=outputs(d);
  if(sides.some(s=>s.draft||s.reference))h+='<div class="pair">'+sides.map(draft).join('')
    +'<div><b>reference reply</b>'+pre(d.reference||'(none)')+'</div></div>';
  return h;}
const WIDTH=table.querySelectorAll('thead th').length;
function open(tb,on){tb.classList.toggle('open',on);let row=tb.querySelector('.detail');
  if(on&&!row){row=tb.insertRow();row.className='detail';const td=row.insertCell();td.colSpan=WIDTH;
    td.innerHTML=detail(DATA[+tb.dataset.n]);}
  if(row)row.hidden=!on;}
table.addEventListener('click',e=>{const sum=e.target.closest('tr.sum');if(!sum||e.target.closest('a'))return;
  const tb=sum.parentNode;open(tb,!tb.classList.contains('open'));});
let texts=null;
function text(tb){if(!texts)texts=cases.map(t=>(t.querySelector('.sum').textContent+' '
  +JSON.stringify(DATA[+t.dataset.n])).toLowerCase());return texts[+tb.dataset.n];}
function apply(){
  const sel=[...document.querySelectorAll('[data-filter]')];let n=0;
  cases.forEach(tb=>{let ok=true;sel.forEach(s=>{const v=s.value.trim();if(!v)return;
    if(s.dataset.filter==='text'){ok=ok&&text(tb).includes(v.toLowerCase());}
    else{ok=ok&&(tb.dataset[s.dataset.filter]||'').split(' ').includes(v);}});
    tb.hidden=!ok;n+=ok?1:0;});
  document.getElementById('shown').textContent=n;}
document.querySelectorAll('[data-filter]').forEach(s=>s.addEventListener('input',apply));
let dir={};
table.querySelectorAll('th[data-sort]').forEach(th=>th.addEventListener('click',()=>{
  const i=+th.dataset.sort;dir[i]=-(dir[i]||-1);
  const key=tb=>{const td=tb.querySelector('.sum').children[i];return td.dataset.v!==undefined?
    parseFloat(td.dataset.v):td.textContent;};
  cases.sort((a,b)=>{const x=key(a),y=key(b);return (x<y?-1:x>y?1:0)*dir[i];});
  cases.forEach(tb=>table.appendChild(tb));}));
function show(){const id=decodeURIComponent(location.hash.slice(1));const tb=document.getElementById(id);
  if(tb&&tb.classList.contains('case')){tb.hidden=false;open(tb,true);tb.scrollIntoView();}}
window.addEventListener('hashchange',show);show();
})();
"""
