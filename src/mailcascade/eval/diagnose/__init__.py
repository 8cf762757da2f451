"""Error analysis from eval records: the "that looks strange" alarms, weak slices, label noise, leakage and
learning curves. Every check returns a list of `Alarm` (empty when nothing is wrong)."""

from mailcascade.eval.diagnose.alarms import Alarm
from mailcascade.eval.diagnose.collect import diagnose_records
from mailcascade.eval.diagnose.curves import learning_curve, router_learning_curve
from mailcascade.eval.diagnose.difficulty import difficulty, label_noise, worse_on_easy
from mailcascade.eval.diagnose.formats import format_consistency, format_table
from mailcascade.eval.diagnose.leakage import leakage, normalise, score_jump, tuned_on_eval
from mailcascade.eval.diagnose.scores import implausible_scores
from mailcascade.eval.diagnose.slices import guess_language, slice_table, weak_slices

__all__ = [
    "Alarm",
    "diagnose_records",
    "difficulty",
    "format_consistency",
    "format_table",
    "guess_language",
    "implausible_scores",
    "label_noise",
    "leakage",
    "learning_curve",
    "normalise",
    "router_learning_curve",
    "score_jump",
    "slice_table",
    "tuned_on_eval",
    "weak_slices",
    "worse_on_easy",
]
