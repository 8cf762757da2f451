"""Everything that can be diagnosed from one run's records alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mailcascade.eval.diagnose.alarms import Record
from mailcascade.eval.diagnose.difficulty import label_noise, worse_on_easy
from mailcascade.eval.diagnose.formats import format_consistency, format_table
from mailcascade.eval.diagnose.scores import implausible_scores
from mailcascade.eval.diagnose.slices import slice_table, weak_slices


def diagnose_records(
    records: Sequence[Record], metrics: Mapping[str, Any], labels: Sequence[str], *,
    texts: Mapping[str, str] | None = None, previous: Sequence[Record] | None = None, seed: int = 0,
) -> dict[str, Any]:
    """Run the record-only checks and return JSON-ready data.

    {"alarms": [alarm dicts, warn first], "slices": slice_table rows, "formats": format_table rows}. `texts`
    (case id -> email text) enables the language and order-number slices; `previous` (the records of an
    earlier run) enables the format-change check.
    """
    alarms = [
        *implausible_scores(metrics, records, labels, seed=seed),
        *worse_on_easy(records, seed=seed),
        *weak_slices(records, texts, seed=seed),
        *label_noise(records),
        *format_consistency(records, previous),
    ]
    alarms.sort(key=lambda a: a.level != "warn")
    return {"alarms": [a.to_dict() for a in alarms], "slices": slice_table(records, texts, seed=seed),
            "formats": format_table(records)}
