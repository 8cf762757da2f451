"""Drafting metrics: valid share, groundedness of citations, similarity to the reference reply, reply length.

Conventions:
- Ids: `cited` holds the product ids a draft cites; `retrieved` and `relevant` should hold the same kind of id.
  When `relevant` (or `retrieved`) holds passage ids, pass `relevant_products` (passage id -> product id): every
  id in `relevant` and `retrieved` is mapped through it (ids not in the mapping are kept as they are), and a
  product's grade is the highest grade of its passages. Only grades > 0 count as relevant.
- Groundedness is per case (share of the case's distinct cited ids), averaged over the cases that cite anything;
  "in relevant" is averaged over the cases that cite anything and have relevant ids.
- ROUGE-L and embedding similarity are averaged over the cases that have a reference reply; a case with a
  reference but no reply (invalid draft) scores 0 on both, so a run cannot look better by failing more often.
  An embed_sim of None for a case with a reference and a reply leaves that case out of the embedding mean.
- Length is in whitespace-separated words, over the replies that exist.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from mailcascade.eval.stats import mean_or_none, percentiles


@functools.cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 as published figures compute it: the `rouge-score` package, rougeL with its Porter stemmer
    (sentence-level LCS, not rougeLsum). 0.0 if either text has no tokens."""
    score: float = _rouge().score(b, a)["rougeL"].fmeasure
    return score


def _map_ids(ids: Sequence[str], mapping: Mapping[str, str] | None) -> list[str]:
    return [mapping.get(i, i) for i in ids] if mapping else list(ids)


def _relevant_ids(relevant: Mapping[str, int], mapping: Mapping[str, str] | None) -> set[str]:
    grades: dict[str, int] = {}
    for item, grade in relevant.items():
        key = mapping.get(item, item) if mapping else item
        grades[key] = max(grade, grades.get(key, grade))
    return {item for item, grade in grades.items() if grade > 0}


def drafting_case(
    cited: Sequence[str],
    retrieved: Sequence[str],
    relevant: Mapping[str, int],
    reply: str | None,
    reference: str | None,
    *,
    relevant_products: Mapping[str, str] | None = None,
) -> dict[str, float | None]:
    """Per-case drafting scores: grounded_in_retrieved, grounded_in_relevant, rouge_l, length (None = undefined)."""
    distinct = list(dict.fromkeys(cited))
    retrieved_ids = set(_map_ids(retrieved, relevant_products))
    relevant_ids = _relevant_ids(relevant, relevant_products)
    grounded_ret = sum(c in retrieved_ids for c in distinct) / len(distinct) if distinct else None
    grounded_rel = sum(c in relevant_ids for c in distinct) / len(distinct) if distinct and relevant_ids else None
    rouge = None if reference is None else (rouge_l(reply, reference) if reply is not None else 0.0)
    return {
        "grounded_in_retrieved": grounded_ret,
        "grounded_in_relevant": grounded_rel,
        "rouge_l": rouge,
        "length": float(len(reply.split())) if reply is not None else None,
    }


def drafting_metrics(
    valid: Sequence[bool],
    cited: Sequence[Sequence[str]],
    retrieved: Sequence[Sequence[str]],
    relevant: Sequence[Mapping[str, int]],
    replies: Sequence[str | None],
    references: Sequence[str | None],
    embed_sim: Sequence[float | None] | None = None,
    *,
    relevant_products: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Corpus-level drafting scores (see the module docstring for the conventions).

    Returns n, valid_share, n_citing, grounded_in_retrieved, n_citing_with_relevant, grounded_in_relevant,
    n_with_reference, rouge_l, n_embed_sim, embed_sim, n_replies, length_mean, length_p50, length_p95.
    Means over no cases are None.
    """
    n = len(valid)
    columns: dict[str, Sequence[object]] = {
        "cited": cited, "retrieved": retrieved, "relevant": relevant, "replies": replies, "references": references
    }
    if embed_sim is not None:
        columns["embed_sim"] = embed_sim
    wrong = {name: len(col) for name, col in columns.items() if len(col) != n}
    if wrong:
        raise ValueError(f"every column must have {n} items (one per case); got {wrong}")
    cases = [
        drafting_case(c, h, r, reply, ref, relevant_products=relevant_products)
        for c, h, r, reply, ref in zip(cited, retrieved, relevant, replies, references, strict=True)
    ]

    def column(key: str) -> list[float]:
        return [v for v in (case[key] for case in cases) if v is not None]

    sims: list[float] = []
    if embed_sim is not None:
        for sim, reply, ref in zip(embed_sim, replies, references, strict=True):
            if ref is None:
                continue
            if reply is None:
                sims.append(0.0)
            elif sim is not None:
                sims.append(float(sim))
    lengths = column("length")
    spread = percentiles(lengths, (50, 95))
    return {
        "n": n,
        "valid_share": mean_or_none([float(v) for v in valid]),
        "n_citing": len(column("grounded_in_retrieved")),
        "grounded_in_retrieved": mean_or_none(column("grounded_in_retrieved")),
        "n_citing_with_relevant": len(column("grounded_in_relevant")),
        "grounded_in_relevant": mean_or_none(column("grounded_in_relevant")),
        "n_with_reference": len(column("rouge_l")),
        "rouge_l": mean_or_none(column("rouge_l")),
        "n_embed_sim": len(sims),
        "embed_sim": mean_or_none(sims),
        "n_replies": len(lengths),
        "length_mean": mean_or_none(lengths),
        "length_p50": spread["p50"],
        "length_p95": spread["p95"],
    }
