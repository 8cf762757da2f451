"""Every eval metric in one import: routing, retrieval, drafting and the statistics behind the intervals.

The functions are pure, take plain sequences, return JSON-serialisable values (None where a value is undefined,
never NaN) and are deterministic. The conventions are documented in the module each one lives in.
"""

from __future__ import annotations

from mailcascade.eval.drafting import drafting_case, drafting_metrics, rouge_l
from mailcascade.eval.retrieval import DEFAULT_KS, first_positions, retrieval_case, retrieval_metrics
from mailcascade.eval.routing import INVALID, accuracy, bootstrap_routing, macro_f1, routing_correct, routing_metrics
from mailcascade.eval.stats import bootstrap_ci, bootstrap_metric, mcnemar, mean_or_none, paired_bootstrap, percentiles

__all__ = [
    "DEFAULT_KS",
    "INVALID",
    "accuracy",
    "bootstrap_ci",
    "bootstrap_metric",
    "bootstrap_routing",
    "drafting_case",
    "drafting_metrics",
    "first_positions",
    "macro_f1",
    "mcnemar",
    "mean_or_none",
    "paired_bootstrap",
    "percentiles",
    "retrieval_case",
    "retrieval_metrics",
    "rouge_l",
    "routing_correct",
    "routing_metrics",
]
