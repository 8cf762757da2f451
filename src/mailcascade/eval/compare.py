"""Compare two eval runs: paired metric deltas, per-case flips per stage, prompt and configuration differences."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mailcascade.eval.report import load_run, num
from mailcascade.eval.stats import mcnemar, paired_bootstrap

Record = Mapping[str, Any]
Getter = Callable[[Record], float | None]
Run = tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]
MISSING = "<absent>"


def _score(record: Record, stage: str, key: str | None = None) -> Any:
    value = (record.get("scores") or {}).get(stage)
    if key is None or value is None:
        return value
    return value.get(key) if isinstance(value, Mapping) else None


def route_correct(record: Record) -> float | None:
    value = _score(record, "route_correct")
    return None if value is None else float(bool(value))


def retrieval_score(key: str) -> Getter:
    def get(record: Record) -> float | None:
        value = _score(record, "retrieval", key)
        return None if value is None else float(value)
    return get


def draft_rouge(record: Record) -> float | None:
    value = _score(record, "draft", "rouge_l")
    return None if value is None else float(value)


def draft_valid(record: Record) -> float | None:
    """1.0 when the draft stage produced a valid draft, 0.0 when it ran and did not; None when it did not run."""
    scores = _score(record, "draft")
    if scores is None:
        return None
    valid = scores.get("valid") if isinstance(scores, Mapping) else None
    return float(bool(record.get("draft") is not None if valid is None else valid))


def retrieval_hit(record: Record) -> float | None:
    return retrieval_score("hit_rate@5")(record)


METRICS: tuple[tuple[str, Getter], ...] = (
    ("route accuracy", route_correct),
    ("retrieval recall@5", retrieval_score("recall@5")),
    ("retrieval MRR", retrieval_score("mrr")),
    ("retrieval nDCG@5", retrieval_score("ndcg@5")),
    ("draft ROUGE-L", draft_rouge),
    ("draft valid share", draft_valid),
)
FLIPS: tuple[tuple[str, Getter], ...] = (
    ("routing correct", route_correct),
    ("retrieval hit@5", retrieval_hit),
    ("draft valid", draft_valid),
)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to {"a.b.c": value}; lists and scalars are leaves."""
    if not isinstance(data, Mapping) or (prefix and not data):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def dict_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Key-by-key differences of two nested dicts, flattened; a missing key shows as "<absent>"."""
    fa, fb = flatten(a), flatten(b)
    return [{"key": k, "a": fa.get(k, MISSING), "b": fb.get(k, MISSING)}
            for k in sorted(fa.keys() | fb.keys()) if fa.get(k, MISSING) != fb.get(k, MISSING)]


def prompt_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per prompt: both hashes, whether it changed, and a unified diff of the prompt texts."""
    out = []
    for name in sorted(a.keys() | b.keys()):
        pa, pb = a.get(name) or {}, b.get(name) or {}
        changed = pa.get("hash") != pb.get("hash")
        diff = "".join(difflib.unified_diff(
            str(pa.get("text", "")).splitlines(keepends=True), str(pb.get("text", "")).splitlines(keepends=True),
            fromfile=f"A/{name}", tofile=f"B/{name}")) if changed else ""
        out.append({"name": name, "hash_a": pa.get("hash"), "hash_b": pb.get("hash"),
                    "version_a": pa.get("version"), "version_b": pb.get("version"), "changed": changed,
                    "diff": diff})
    return out


def _pairs(shared: Sequence[tuple[Record, Record]], get: Getter) -> tuple[list[str], list[float], list[float]]:
    ids, va, vb = [], [], []
    for ra, rb in shared:
        x, y = get(ra), get(rb)
        if x is not None and y is not None:
            ids.append(str(ra["id"]))
            va.append(x)
            vb.append(y)
    return ids, va, vb


def compare_runs(a: Path, b: Path, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Differences B - A on the cases both runs share; raises EvalError when a directory is not a run."""
    return compare_loaded(Path(a), load_run(Path(a)), Path(b), load_run(Path(b)), n_boot=n_boot, seed=seed)


def compare_loaded(a: Path, run_a: Run, b: Path, run_b: Run, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """`compare_runs` over runs already loaded (`load_run`: run.json, metrics.json, records)."""
    info_a, metrics_a, records_a = run_a
    info_b, metrics_b, records_b = run_b
    by_b = {str(r["id"]): r for r in records_b}
    ids_a = {str(r["id"]) for r in records_a}
    shared = [(r, by_b[str(r["id"])]) for r in records_a if str(r["id"]) in by_b]

    deltas = []
    for name, get in METRICS:
        ids, va, vb = _pairs(shared, get)
        if not ids:
            continue
        row: dict[str, Any] = {"metric": name, "n": len(ids), "a": sum(va) / len(va), "b": sum(vb) / len(vb),
                               **paired_bootstrap(va, vb, n=n_boot, seed=seed)}
        if get is route_correct:
            row["mcnemar_p"] = mcnemar([x == 1.0 for x in va], [y == 1.0 for y in vb])
        deltas.append(row)

    flips = []
    for name, get in FLIPS:
        ids, va, vb = _pairs(shared, get)
        if ids:
            flips.append({"stage": name, "n": len(ids),
                          "fixed": [i for i, x, y in zip(ids, va, vb, strict=True) if x < 1 <= y],
                          "broken": [i for i, x, y in zip(ids, va, vb, strict=True) if y < 1 <= x]})

    return {
        "a": {"path": str(a), "name": info_a.get("name"), "n_cases": len(records_a), "created": info_a.get("created")},
        "b": {"path": str(b), "name": info_b.get("name"), "n_cases": len(records_b), "created": info_b.get("created")},
        "n_shared": len(shared),
        "only_a": [str(r["id"]) for r in records_a if str(r["id"]) not in by_b],
        "only_b": [str(r["id"]) for r in records_b if str(r["id"]) not in ids_a],
        "deltas": deltas,
        "flips": flips,
        "prompts": prompt_diff(info_a.get("prompts") or {}, info_b.get("prompts") or {}),
        "settings": dict_diff(info_a.get("settings") or {}, info_b.get("settings") or {}),
        "options": dict_diff(info_a.get("options") or {}, info_b.get("options") or {}),
        "eval_set": dict_diff(info_a.get("eval_set") or {}, info_b.get("eval_set") or {}),
        "n_failed": {"a": metrics_a.get("n_failed"), "b": metrics_b.get("n_failed")},
    }


def _ids(ids: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" ... (+{len(ids) - limit})" if len(ids) > limit else "") if ids else "-"


def format_compare(result: Mapping[str, Any]) -> str:
    """Plain text for the terminal."""
    ra, rb = result["a"], result["b"]
    lines = [f"A: {ra['path']} ({ra['n_cases']} cases)", f"B: {rb['path']} ({rb['n_cases']} cases)",
             f"shared cases: {result['n_shared']}   only in A: {len(result['only_a'])}   "
             f"only in B: {len(result['only_b'])}", ""]
    head = f"{'metric (B - A)':<22}{'n':>6}{'A':>8}{'B':>8}{'delta':>9}  {'95% CI':<18}{'p':>7}{'McNemar p':>11}"
    lines += [head, "-" * len(head)]
    for d in result["deltas"]:
        ci = f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        lines.append(f"{d['metric']:<22}{d['n']:>6}{num(d['a']):>8}{num(d['b']):>8}{d['delta']:>+9.3f}  "
                     f"{ci:<18}{d['p_value']:>7.3f}{num(d.get('mcnemar_p')):>11}")
    lines.append("")
    for f in result["flips"]:
        lines.append(f"{f['stage']} ({f['n']} cases): fixed {len(f['fixed'])}, broken {len(f['broken'])}")
        lines.append(f"  fixed:  {_ids(f['fixed'])}")
        lines.append(f"  broken: {_ids(f['broken'])}")
    for key, label in (("only_a", "only in A"), ("only_b", "only in B")):
        if result[key]:
            lines.append(f"{label}: {_ids(result[key])}")
    lines.append("")
    changed = [p for p in result["prompts"] if p["changed"]]
    lines.append("prompts: " + ("unchanged" if not changed else f"{len(changed)} changed"))
    for p in result["prompts"]:
        mark = "changed" if p["changed"] else "same"
        lines.append(f"  {p['name']}: {p['hash_a']} -> {p['hash_b']} ({mark})")
        if p["diff"]:
            lines += ["    " + line for line in p["diff"].rstrip("\n").splitlines()]
    for key in ("settings", "options", "eval_set"):
        rows = result[key]
        lines.append(f"{key}: " + ("no differences" if not rows else f"{len(rows)} differ"))
        lines += [f"  {r['key']}: {r['a']!r} -> {r['b']!r}" for r in rows]
    return "\n".join(lines)
