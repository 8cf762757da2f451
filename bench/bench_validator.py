"""Validator throughput, side by side in one run (python bench/bench_validator.py).

Every side gets the same input texts and gives one result per text.
clean: `validate` on 200 schema-valid outputs vs `json.loads` + a compiled jsonschema validator's `is_valid`
(target ratio >= 0.5).
dirty: `validate` on the 171 malformed outputs of the fixture corpus and the real SmolLM2 outputs (finish_reason
passed), which extracts, repairs syntax, checks and repairs against the schema and names every failure, vs
`json_repair.repair_json(text, return_objects=True)`, which only repairs syntax: no schema check, no failure codes
(target ratio >= 1.0, issue 13). An extra row, for information only, runs json_repair and then the compiled
jsonschema `is_valid` on its result: a schema verdict, still without repairs against the schema or failure codes.
Ratio: our throughput / baseline throughput (higher is better for us), from this process's CPU time, the two sides
alternating round by round; "best" compares each side's fastest round, "median" is the median of the per-round
ratios.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import json_repair  # noqa: E402
from jsonschema import validators  # type: ignore[import-untyped, unused-ignore]  # noqa: E402

from mailcascade.validate import validate  # noqa: E402

CORPUS = ROOT / "tests" / "corpus" / "validator"
ROUNDS = 15


def _clean_inputs(schemas: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(7)
    departments = schemas["route"]["properties"]["department"]["enum"]
    words = ["thanks", "order", "parcel", "refund", "size", "jacket", "charge", "twice", "delivery", "tracking",
             "colour", "boots", "kettle"]
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(200):
        if i % 2 == 0:
            doc: dict[str, Any] = {"department": rng.choice(departments), "confidence": round(rng.random(), 2),
                                   "reason": " ".join(rng.choices(words, k=rng.randint(4, 14))).capitalize() + "."}
            schema = schemas["route"]
        else:
            doc = {"reply": " ".join(rng.choices(words, k=rng.randint(30, 120))).capitalize() + ".",
                   "product_ids": [f"P{rng.randint(1, 114):03d}" for _ in range(rng.randint(0, 3))]}
            doc["product_ids"] = sorted(set(doc["product_ids"]))
            schema = schemas["draft"]
        text = json.dumps(doc, indent=2 if i % 3 == 0 else None)
        out.append((text, schema))
    return out


def _dirty_inputs(schemas: dict[str, Any]) -> list[tuple[str, dict[str, Any], str | None]]:
    out = []
    for name in ("cases.jsonl", "smollm2_raw.jsonl"):
        for line in (CORPUS / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("status") == "clean":
                continue
            out.append((row["raw"], schemas[row["schema"]], row.get("finish_reason")))
    return out


def _side_by_side(ours: Callable[[], None], theirs: Callable[[], None],
                  rounds: int = ROUNDS) -> tuple[float, float, float]:
    """Our best CPU seconds, theirs, and the median of the per-round ratios theirs / ours, in alternating rounds
    (the machine is shared: CPU time leaves out the time other processes hold the cores; both sides are
    single-threaded Python)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((ours, times[0]), (theirs, times[1])):
            t0 = time.process_time()
            fn()
            out.append(time.process_time() - t0)
    return min(times[0]), min(times[1]), statistics.median(t / o for o, t in zip(*times, strict=True))


def main() -> int:
    schemas = json.loads((CORPUS / "schemas.json").read_text(encoding="utf-8"))
    clean = _clean_inputs(schemas)
    dirty = _dirty_inputs(schemas)
    compiled = {id(s): validators.validator_for(s)(s) for s in schemas.values()}
    for text, schema in clean:  # sanity: the inputs really are clean, and warm every cache
        assert compiled[id(schema)].is_valid(json.loads(text))
        assert validate(text, schema).status == "clean"

    def baseline_clean() -> None:
        for text, schema in clean:
            compiled[id(schema)].is_valid(json.loads(text))

    def ours_clean() -> None:
        for text, schema in clean:
            validate(text, schema)

    def repair_dirty() -> None:
        for text, _, _ in dirty:
            json_repair.repair_json(text, return_objects=True)

    def repair_checked_dirty() -> None:
        for text, schema, _ in dirty:
            compiled[id(schema)].is_valid(json_repair.repair_json(text, return_objects=True))

    def ours_dirty() -> None:
        for text, schema, finish in dirty:
            validate(text, schema, finish_reason=finish)

    rows = []
    for label, ours, theirs, name, n in (
        ("clean", ours_clean, baseline_clean, "json.loads + jsonschema is_valid", len(clean)),
        ("dirty", ours_dirty, repair_dirty, "json_repair (syntax only)", len(dirty)),
        ("dirty", ours_dirty, repair_checked_dirty, "json_repair + jsonschema is_valid", len(dirty)),
    ):
        o_best, t_best, ratio_med = _side_by_side(ours, theirs)
        rows.append((label, n, name, n / o_best, n / t_best, t_best / o_best, ratio_med))
    print(f"{'inputs':<7}{'n':>5}  {'baseline':<35}{'ours/s':>9}{'base/s':>9}{'ratio(best)':>13}{'ratio(med)':>12}")
    for label, n, name, ours_rate, base_rate, ratio_best, ratio_med in rows:
        print(f"{label:<7}{n:>5}  {name:<35}{ours_rate:>9.0f}{base_rate:>9.0f}{ratio_best:>13.2f}{ratio_med:>12.2f}")
    print("ours: validate (extract, repair, check and repair against the schema, name every failure); same texts, "
          "one result per text on every side")
    print("ratio = our throughput / baseline throughput (CPU time, alternating rounds; best rounds / median of "
          "per-round ratios); targets: clean >= 0.5, dirty vs json_repair (syntax only) >= 1.0; the "
          "json_repair + jsonschema row is for information")
    return 0


if __name__ == "__main__":
    sys.exit(main())
