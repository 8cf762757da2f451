"""The alarm type every diagnosis returns, plus small helpers shared by the checks.

A record is one line of a run's `cases.jsonl` (see `mailcascade.eval.records.case_record`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Level = Literal["warn", "info"]
Record = Mapping[str, Any]


@dataclass(frozen=True)
class Alarm:
    """One finding: what looks strange, what it means and what to try, and the cases behind it."""

    name: str
    level: Level
    title: str
    explanation: str
    cases: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict, hash=False)  # not hashed: may hold dicts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists, numpy scalars plain numbers, NaN None."""
        return {"name": self.name, "level": self.level, "title": self.title, "explanation": self.explanation,
                "cases": list(self.cases), "data": jsonable(dict(self.data))}


def jsonable(value: Any) -> Any:
    """A copy of `value` that json.dumps accepts without NaN (NaN and infinities become None)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [jsonable(v) for v in items]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def gold_department(record: Record) -> str | None:
    dept = record["expected"].get("department")
    return str(dept) if dept is not None else None


def predicted_department(record: Record) -> str | None:
    route = record.get("route")
    return str(route["department"]) if route and route.get("department") is not None else None


def route_correct(record: Record) -> bool | None:
    """Whether routing was right; None when routing was not scored for this case."""
    value = (record.get("scores") or {}).get("route_correct")
    return None if value is None else bool(value)


def routed(records: Sequence[Record]) -> list[Record]:
    """The records whose routing was scored."""
    return [r for r in records if route_correct(r) is not None]


def baseline_confidence(record: Record, key: str) -> float | None:
    """A baseline's confidence, if the run recorded it under record["baseline_confidence"][key]."""
    value = (record.get("baseline_confidence") or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


#: the learned baselines a run may record, and the learner each one is
LEARNED_BASELINES = {"embedding_logreg": "logreg", "embedding_knn": "knn"}


def system_learner(records: Sequence[Record]) -> str:
    """What the system's route stage is: "knn" for the embedding router (its stage records name the model
    "knn:<embedder>:k=<k>"), else "llm"."""
    for r in records:
        for s in r.get("stages") or []:
            if s.get("stage") == "route" and s.get("model"):
                return "knn" if str(s["model"]).startswith("knn:") else "llm"
    return "llm"


def independent_baselines(records: Sequence[Record]) -> list[str]:
    """The learned baselines recorded in these records that are not the same learner as the system (the k-NN
    baseline is left out when the system is the embedding router), the regression first."""
    learner = system_learner(records)
    present = {k for r in records for k, v in (r.get("baselines") or {}).items() if v is not None}
    return [k for k, kind in LEARNED_BASELINES.items() if k in present and kind != learner]


def bootstrap_diff(
    a: Sequence[float], b: Sequence[float], *, n: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(b) - mean(a) for two independent groups (each resampled alone)."""
    if not len(a) or not len(b):
        raise ValueError("bootstrap_diff needs two non-empty groups")
    rng = np.random.default_rng(seed)
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    ma = xa[rng.integers(0, xa.size, size=(n, xa.size))].mean(axis=1)
    mb = xb[rng.integers(0, xb.size, size=(n, xb.size))].mean(axis=1)
    low, high = np.quantile(mb - ma, [alpha / 2, 1 - alpha / 2])
    point = float(xb.mean() - xa.mean())
    return min(float(low), point), max(float(high), point)


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (1.0 when undefined)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = abs(k1 / n1 - k2 / n2) / se
    return math.erfc(z / math.sqrt(2))


def rate(values: Sequence[bool | float]) -> float | None:
    return float(sum(values)) / len(values) if values else None
