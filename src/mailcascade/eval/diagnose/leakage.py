"""Test set too good: eval cases found in what the system was built from, settings tuned on the eval set, and
scores that jump more than their confidence intervals allow."""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mailcascade.catalog import EmbedderLike
from mailcascade.eval.diagnose.alarms import Alarm

_PUNCT = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")
_BLOCK = 512
_SEP = "\x00"


def normalise(text: str) -> str:
    """Lowercase, punctuation stripped, whitespace collapsed."""
    return _SPACE.sub(" ", _PUNCT.sub("", text.lower())).strip()


def _snippet(text: str, width: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _units(texts: Sequence[str], chunk_chars: int) -> list[tuple[int, str]]:
    """(text index, unit): short texts whole, long ones (a prompt, a long passage) line by line."""
    out = []
    for i, text in enumerate(texts):
        if len(text) <= chunk_chars:
            if text.strip():
                out.append((i, text))
            continue
        out.extend((i, line) for line in text.splitlines() if len(line.strip()) >= 20)
    return out


def exact_matches(
    eval_texts: Mapping[str, str], sources: Mapping[str, Sequence[str]], *, min_contained_chars: int = 40
) -> list[dict[str, Any]]:
    """Eval cases whose normalised text equals a source text, or (when at least `min_contained_chars` long)
    appears inside one (an example pasted into a prompt)."""
    found = []
    norm_eval = {case_id: normalise(text) for case_id, text in eval_texts.items()}
    for source, texts in sources.items():
        norms = [normalise(t) for t in texts]
        first: dict[str, int] = {}
        for i, n in enumerate(norms):
            if n:
                first.setdefault(n, i)
        big = _SEP.join(norms)
        starts = np.cumsum([0] + [len(n) + 1 for n in norms[:-1]]).tolist() if norms else []
        for case_id, n in norm_eval.items():
            if not n:
                continue
            if n in first:
                i, kind = first[n], "equal"
            elif len(n) >= min_contained_chars and (pos := big.find(n)) >= 0:
                i, kind = bisect.bisect_right(starts, pos) - 1, "contained"
            else:
                continue
            found.append({"case": case_id, "source": source, "index": i, "kind": kind, "similarity": 1.0,
                          "case_text": _snippet(eval_texts[case_id]), "source_text": _snippet(texts[i])})
    return found


def near_matches(
    eval_texts: Mapping[str, str], sources: Mapping[str, Sequence[str]], embedder: EmbedderLike, *,
    near_threshold: float = 0.92, chunk_chars: int = 1000, skip: set[tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Per (eval case, source): the most similar source text when cosine similarity >= `near_threshold`.

    Everything is embedded once; similarities are computed in blocks of eval rows (numpy, exact inner product).
    Long source texts (> `chunk_chars`) are compared line by line. Pairs in `skip` are left out.
    """
    ids = [i for i, t in eval_texts.items() if t.strip()]
    units: list[tuple[str, int, str]] = [(s, i, u) for s, texts in sources.items()
                                         for i, u in _units(texts, chunk_chars)]
    if not ids or not units:
        return []
    queries = np.asarray(embedder.encode([eval_texts[i] for i in ids]), dtype=np.float32)
    keys = np.asarray(embedder.encode([u for _, _, u in units]), dtype=np.float32)
    found = []
    for start in range(0, len(ids), _BLOCK):
        sims = queries[start:start + _BLOCK] @ keys.T
        rows, cols = np.nonzero(sims >= near_threshold)
        best: dict[tuple[str, str], tuple[float, int, int]] = {}
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            pair = (ids[start + row], units[col][0])
            if skip and pair in skip:
                continue
            sim = float(sims[row, col])
            seen = best.get(pair)
            if seen is None or sim > seen[0]:
                best[pair] = (sim, col, (seen[2] if seen else 0) + 1)
            else:
                best[pair] = (seen[0], seen[1], seen[2] + 1)
        for (case_id, source), (sim, col, count) in best.items():
            _, index, unit = units[col]
            found.append({"case": case_id, "source": source, "index": index, "kind": "near",
                          "similarity": round(sim, 4), "n_similar": count,
                          "case_text": _snippet(eval_texts[case_id]), "source_text": _snippet(unit)})
    return found


def leakage(
    eval_texts: Mapping[str, str], sources: Mapping[str, Sequence[str]], embedder: EmbedderLike, *,
    near_threshold: float = 0.92, min_contained_chars: int = 40, chunk_chars: int = 1000,
) -> list[Alarm]:
    """Eval cases duplicated (exactly or nearly) in what the system was built from.

    `sources` names each body of text, e.g. {"router_examples": [...], "few_shot": [...], "prompt_text": [...],
    "catalog_passages": [...]}. Exact: equal normalised text, or the case's normalised text inside a source text.
    Near: cosine similarity >= `near_threshold` between embeddings (the embedder's rows are L2-normalised).
    """
    exact = exact_matches(eval_texts, sources, min_contained_chars=min_contained_chars)
    near = near_matches(eval_texts, sources, embedder, near_threshold=near_threshold, chunk_chars=chunk_chars,
                        skip={(m["case"], m["source"]) for m in exact})
    alarms = []
    what = ("A test case that is also in the router's examples, a few-shot block, the prompt or the catalogue is "
            "answered from memory, not by generalising, so the score overstates what users will see. Remove the "
            "listed cases from the eval set (or the copies from the sources), then re-run; if many cases match, "
            "rebuild the split so that no source was written from the eval set.")
    for name, matches, label in (("exact_duplicates", exact, "exact"),
                                 ("near_duplicates", near, f"near (cosine >= {near_threshold})")):
        if not matches:
            continue
        cases = tuple(dict.fromkeys(m["case"] for m in matches))
        by_source: dict[str, int] = {}
        for m in matches:
            by_source[m["source"]] = by_source.get(m["source"], 0) + 1
        alarms.append(Alarm(
            name, "warn", f"{len(cases)} eval case(s) have {label} copies in "
            + ", ".join(f"{s} ({n})" for s, n in sorted(by_source.items())),
            what, cases, {"by_source": by_source, "matches": matches, "n_eval": len(eval_texts)},
        ))
    return alarms


def _lookup(metrics: Mapping[str, Any], path: str) -> tuple[float | None, list[float] | None]:
    node: Any = metrics
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
        return None, None
    value, ci = node.get(parts[-1]), node.get(parts[-1] + "_ci")
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None, None
    ok_ci = isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(c, int | float) for c in ci)
    return float(value), ([float(c) for c in ci] if ok_ci and ci is not None else None)


def score_jump(history: Sequence[Mapping[str, Any]], metric: str = "routing.accuracy") -> list[Alarm]:
    """The run being diagnosed (the last item) against the latest earlier run scored on the same cases with the
    same stages, when `metric` (a dotted path into metrics.json, its CI at the same path + "_ci") moved by more
    than sqrt(h1^2 + h2^2), h being each run's CI half-width.

    Each history item is {"run": name, "metrics": {...}, "case_ids": [...], "stages": [...]} (the last two
    optional: when the diagnosed run has them, an earlier run must match them to be compared) or a metrics
    dict itself, oldest first. Earlier runs are never compared with each other.
    """
    if len(history) < 2:
        return []
    points = []
    for i, item in enumerate(history):
        metrics = item["metrics"] if isinstance(item.get("metrics"), Mapping) else item
        value, ci = _lookup(metrics, metric)
        points.append((str(item.get("run", f"#{i}")), value, ci, item))
    run_b, b, ci_b, current = points[-1]
    like = [p for p in points[:-1] if all(current.get(key) is None or p[3].get(key) == current.get(key)
                                          for key in ("case_ids", "stages"))]
    if not like or b is None or ci_b is None:
        return []
    run_a, a, ci_a, _ = like[-1]
    if a is None or ci_a is None:
        return []
    allowed = math.hypot((ci_a[1] - ci_a[0]) / 2, (ci_b[1] - ci_b[0]) / 2)
    if abs(b - a) <= allowed:
        return []
    up = b > a
    return [Alarm(
        "score_jump", "warn", f"{metric} {'jumped' if up else 'dropped'} from {a:.3f} to {b:.3f} "
        f"({run_a} -> {run_b}, same cases and stages)",
        ("The score moved by more than its confidence intervals allow since the last run on the same cases with "
         "the same stages. "
         + ("A sudden gain after a change that should give a small one often means leakage: eval cases "
            "copied into examples or the prompt, or settings picked on this eval set. "
            if up else "A sudden drop usually means a broken prompt, parser or mapping. ")
         + "Compare the two runs case by case (mailcascade compare) and read the prompt and config diff."),
        (), {"metric": metric, "from_run": run_a, "to_run": run_b, "from": a, "to": b, "from_ci": ci_a,
             "to_ci": ci_b, "allowed_change": allowed, "n_comparable_earlier_runs": len(like)})]


def tuned_on_eval(run_info: Mapping[str, Any]) -> list[Alarm]:
    """Alarms from run.json about settings chosen on the eval set itself.

    - tuned_on_eval: the run says thresholds or settings were chosen on the cases it is scored on: "eval",
      "test" or the eval set's name in run_info["options"]["tuned_on"] (`mailcascade eval --tuned-on-eval`),
      run_info["eval_set"]["tuned_on"] (the eval definition's `tuned_on = "eval"`) or run_info["tuned_on"].
    - examples_are_eval: the embedding router's examples file (settings.route.examples_path) is the eval
      set's own data file.
    - baseline_on_eval (info): the baselines learned from the eval set (no train split; leave-one-out).
    """
    alarms = []
    options = run_info.get("options") or {}
    name = run_info.get("name") or (run_info.get("eval_set") or {}).get("name")
    declared = [("--tuned-on-eval", options.get("tuned_on")),
                ("eval definition", (run_info.get("eval_set") or {}).get("tuned_on")),
                ("run.json", run_info.get("tuned_on"))]
    said = [(where, str(v)) for where, v in declared
               if v and str(v).lower() in {"eval", "test", str(name).lower()}]
    if said:
        where, tuned = said[0]
        alarms.append(Alarm(
            "tuned_on_eval", "warn", f"Settings were chosen on the eval set (tuned_on = {tuned!r}, from the {where})",
            "Thresholds, prompts or settings picked to maximise the score on the very cases they are scored on "
            "give an optimistic number. Tune on a separate dev split and report the eval set once, untouched.",
            (), {"tuned_on": tuned, "from": where, "declared_by": [w for w, _ in said]}))
    settings = run_info.get("settings") or {}
    examples = (settings.get("route") or {}).get("examples_path")
    source = (run_info.get("eval_set") or {}).get("source")
    if examples and source and _same_file(str(examples), str(source)):
        alarms.append(Alarm(
            "examples_are_eval", "warn", "The router's examples file is the eval set's own data",
            "The embedding router learns from the same file it is scored on, so every case finds itself as its "
            "nearest neighbour. Point route.examples_path at the train split.",
            (), {"examples_path": examples, "eval_source": source}))
    learned = run_info.get("baseline_source") or {}
    on_eval = sorted(k for k, v in learned.items() if "eval set" in str(v))
    if on_eval:
        alarms.append(Alarm(
            "baseline_on_eval", "info", f"Baselines learned from the eval set ({', '.join(on_eval)})",
            "This eval set has no train split, so the majority class is counted on the eval set and the embedding "
            "baseline is leave-one-out over it. Both are slightly optimistic; give the eval set a train split "
            "for a fair comparison.", (), {"baseline_source": dict(learned)}))
    return alarms


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b
