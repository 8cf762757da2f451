"""Eval metrics: hand-computed examples, edge cases, and invariants as hypothesis properties."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcascade.eval.metrics import (
    accuracy,
    bootstrap_ci,
    bootstrap_metric,
    bootstrap_routing,
    drafting_case,
    drafting_metrics,
    macro_f1,
    mcnemar,
    paired_bootstrap,
    percentiles,
    retrieval_case,
    retrieval_metrics,
    rouge_l,
    routing_correct,
    routing_metrics,
)


def strict_json(value: Any) -> str:
    """Fails on NaN or infinity, and on anything that is not plain JSON."""
    return json.dumps(value, allow_nan=False)


# ---------------------------------------------------------------- routing

LABELS = ["orders", "billing"]


def test_routing_hand_computed() -> None:
    gold = ["orders", "orders", "billing", "billing", "out_of_scope"]
    pred = ["orders", "billing", "billing", None, "orders"]
    m = routing_metrics(gold, pred, LABELS)
    # out_of_scope is not configured, so it gets its own row and a column after "invalid"
    assert m["confusion"]["labels"] == ["orders", "billing", "out_of_scope"]
    assert m["confusion"]["columns"] == ["orders", "billing", "invalid", "out_of_scope"]
    assert m["confusion"]["matrix"] == [
        [1, 1, 0, 0],  # orders: one right, one sent to billing
        [0, 1, 1, 0],  # billing: one right, one invalid (None)
        [1, 0, 0, 0],  # out_of_scope: sent to orders
    ]
    assert m["accuracy"] == pytest.approx(2 / 5)  # cases 1 and 3
    assert m["n_invalid"] == 1 and m["invalid_rate"] == pytest.approx(1 / 5)
    # orders: TP 1, predicted 2 (cases 1, 5), support 2 -> P = R = F1 = 0.5
    assert m["per_label"]["orders"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "predicted": 2}
    # billing: TP 1, predicted 2 (cases 2, 3), support 2 -> 0.5 each; the None in case 4 is a FN, not a FP
    assert m["per_label"]["billing"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "predicted": 2}
    # out_of_scope: never predicted -> precision undefined; recall 0; F1 = 2*0 / (1 + 0) = 0
    assert m["per_label"]["out_of_scope"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 1,
                                              "predicted": 0}
    assert m["macro_f1"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert m["out_of_scope_recall"] == 0.0
    assert m["in_scope_accuracy"] == pytest.approx(2 / 4)
    assert m["unknown_gold_labels"] == []
    strict_json(m)


def test_routing_unconfigured_prediction_is_invalid_and_oos_column_when_configured() -> None:
    labels = ["orders", "out_of_scope"]
    m = routing_metrics(["orders", "out_of_scope", "orders"], ["shipping", "out_of_scope", "orders"], labels)
    # out_of_scope is configured: no extra column; "shipping" is not a configured label -> invalid
    assert m["confusion"]["columns"] == ["orders", "out_of_scope", "invalid"]
    assert m["confusion"]["matrix"] == [[1, 0, 1], [0, 1, 0]]
    assert m["out_of_scope_recall"] == 1.0
    assert m["in_scope_accuracy"] == 0.5
    # macro-F1 over orders (2*1 / (2 + 1) = 2/3) and out_of_scope (1.0)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)


def test_routing_unknown_gold_label_gets_a_row() -> None:
    m = routing_metrics(["orders", "legal"], ["orders", "legal"], LABELS)
    assert m["unknown_gold_labels"] == ["legal"]
    assert m["confusion"]["labels"][-1] == "legal"
    assert m["confusion"]["matrix"][-1] == [0, 0, 1, 0]  # "legal" is not configured: predicted -> invalid
    assert m["accuracy"] == 0.5


def test_routing_all_invalid_and_empty() -> None:
    m = routing_metrics(["orders", "billing"], [None, None], LABELS)
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0 and m["invalid_rate"] == 1.0
    assert all(s["precision"] is None for s in m["per_label"].values())
    assert m["out_of_scope_recall"] is None  # no out-of-scope gold: undefined, not 0
    strict_json(m)

    empty = routing_metrics([], [], LABELS)
    assert empty["n"] == 0
    assert empty["accuracy"] is None and empty["macro_f1"] is None and empty["in_scope_accuracy"] is None
    assert empty["confusion"]["matrix"] == [[0, 0, 0, 0]] * 3
    strict_json(empty)


def test_routing_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        routing_metrics(["orders"], [], LABELS)
    with pytest.raises(ValueError, match="unique"):
        routing_metrics([], [], ["orders", "orders"])


def test_routing_helpers_agree_with_routing_metrics() -> None:
    gold = ["orders", "billing", "out_of_scope", "orders"]
    pred: list[str | None] = ["orders", "orders", "out_of_scope", None]
    assert routing_correct(gold, pred, LABELS) == [True, False, True, False]
    assert accuracy(gold, pred, LABELS) == routing_metrics(gold, pred, LABELS)["accuracy"] == 0.5
    assert macro_f1(gold, pred, LABELS) == routing_metrics(gold, pred, LABELS)["macro_f1"]
    assert accuracy([], [], LABELS) is None


ROUTE_LABELS = st.sampled_from(["a", "b", "c", "out_of_scope"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(ROUTE_LABELS, st.one_of(st.none(), ROUTE_LABELS, st.just("zzz"))), max_size=40))
def test_routing_properties(pairs: list[tuple[str, str | None]]) -> None:
    gold = [g for g, _ in pairs]
    pred = [p for _, p in pairs]
    m = routing_metrics(gold, pred, ["a", "b", "c"])
    strict_json(m)
    matrix = m["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == len(pairs)
    columns = m["confusion"]["columns"]
    diagonal = sum(matrix[i][columns.index(label)] for i, label in enumerate(m["confusion"]["labels"]))
    if pairs:
        assert m["accuracy"] == pytest.approx(diagonal / len(pairs))
        assert 0.0 <= m["macro_f1"] <= 1.0
    for s in m["per_label"].values():
        for key in ("precision", "recall", "f1"):
            assert s[key] is None or 0.0 <= s[key] <= 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "out_of_scope", "unmapped"]),
                          st.one_of(st.none(), ROUTE_LABELS, st.just("zzz"), st.just("invalid"))),
                min_size=1, max_size=60),
       st.booleans(), st.integers(0, 3))
def test_bootstrap_routing_equals_the_per_replicate_metric(pairs: list[tuple[str, str | None]], oos_label: bool,
                                                           seed: int) -> None:
    """The vectorised intervals are bootstrap_metric's over accuracy and macro_f1: same replicates, same numbers
    (invalid and unknown predictions, unknown gold labels, out_of_scope configured or not)."""
    gold, pred = [g for g, _ in pairs], [p for _, p in pairs]
    labels = ["a", "b", "c", "out_of_scope"] if oos_label else ["a", "b", "c"]
    fast = bootstrap_routing(gold, pred, labels, n=200, seed=seed)
    for name, fn in (("accuracy", accuracy), ("macro_f1", macro_f1)):
        slow = bootstrap_metric(lambda g, p, f=fn: f(g, p, labels), gold, pred, n=200, seed=seed)
        assert fast[name] == pytest.approx(slow, abs=1e-12)


# ---------------------------------------------------------------- retrieval


def test_retrieval_hand_computed_binary() -> None:
    relevant = [{"a": 1}, {"c": 1}]
    retrieved = [["a", "b"], ["x", "y", "c"]]  # first relevant at rank 1 and at rank 3
    m = retrieval_metrics(relevant, retrieved, ks=(1, 3))
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["recall@1"] == 0.5 and m["recall@3"] == 1.0
    assert m["hit_rate@1"] == 0.5 and m["hit_rate@3"] == 1.0
    assert m["precision@1"] == 0.5  # (1/1 + 0/1) / 2
    assert m["precision@3"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    # nDCG@3: case 1 = 1; case 2 = (1 / log2(3 + 1)) / 1 = 0.5
    assert m["ndcg@3"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg@1"] == 0.5
    assert (m["n_cases"], m["n_scored"], m["n_without_relevant"]) == (2, 2, 0)
    strict_json(m)


def test_retrieval_graded_ndcg() -> None:
    # gains: a = 2^2 - 1 = 3, b = 2^1 - 1 = 1; retrieved in the wrong order
    s = retrieval_case({"a": 2, "b": 1}, ["b", "a"], ks=(1, 2))
    assert s is not None
    dcg = 1 / math.log2(2) + 3 / math.log2(3)
    ideal = 3 / math.log2(2) + 1 / math.log2(3)
    assert s["ndcg@2"] == pytest.approx(dcg / ideal)
    assert s["ndcg@1"] == pytest.approx(1 / 3)  # b's gain 1 against a's gain 3 at rank 1
    assert retrieval_case({"a": 2, "b": 1}, ["a", "b"], ks=(2,)) == pytest.approx(
        {"recall@2": 1.0, "hit_rate@2": 1.0, "precision@2": 1.0, "ndcg@2": 1.0, "mrr": 1.0})


def test_retrieval_repeated_ids_count_once_at_first_position() -> None:
    # two passages of p1 take ranks 1 and 2; p2 only comes at rank 3
    s = retrieval_case({"p1": 1, "p2": 1}, ["p1", "p1", "p2"], ks=(2, 3))
    assert s is not None
    assert s["recall@2"] == 0.5 and s["recall@3"] == 1.0
    assert s["precision@3"] == pytest.approx(2 / 3)  # distinct relevant ids / k
    assert s["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert s["mrr"] == 1.0


def test_retrieval_without_relevant_and_empty() -> None:
    m = retrieval_metrics([{}, {"a": 0}, {"b": 1}], [["a"], ["a"], []], ks=(1,))
    # grade 0 is not relevant: only the third case is scored, and it retrieved nothing
    assert (m["n_scored"], m["n_without_relevant"]) == (1, 2)
    assert m["recall@1"] == 0.0 and m["mrr"] == 0.0 and m["ndcg@1"] == 0.0
    none_scored = retrieval_metrics([{}, {}], [["a"], []])
    assert none_scored["n_scored"] == 0 and none_scored["mrr"] is None and none_scored["ndcg@10"] is None
    strict_json(none_scored)
    assert retrieval_metrics([], [])["n_cases"] == 0
    with pytest.raises(ValueError):
        retrieval_metrics([{}], [])
    with pytest.raises(ValueError):
        retrieval_metrics([{"a": 1}], [["a"]], ks=(0,))


IDS = st.sampled_from(list("abcdefgh"))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(IDS, st.integers(min_value=0, max_value=3), max_size=6),
    st.lists(IDS, max_size=15),
)
def test_retrieval_invariants(relevant: dict[str, int], retrieved: list[str]) -> None:
    ks = (1, 2, 3, 5, 10, 20)
    s = retrieval_case(relevant, retrieved, ks)
    if not any(g > 0 for g in relevant.values()):
        assert s is None
        return
    assert s is not None
    for value in s.values():
        assert 0.0 <= value <= 1.0
    for small, large in itertools.pairwise(ks):
        assert s[f"recall@{small}"] <= s[f"recall@{large}"]
        assert s[f"hit_rate@{small}"] <= s[f"hit_rate@{large}"]
    strict_json(retrieval_metrics([relevant], [retrieved], ks))


# ---------------------------------------------------------------- drafting


def test_rouge_l_hand_computed() -> None:
    # LCS "the cat on the mat" = 5 of 6 tokens each side: P = R = F = 5/6
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "a c" = 2: P = 2/4, R = 2/2, F = 2 * 0.5 * 1 / 1.5 = 2/3
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("Hello, World!", "hello world") == 1.0  # lowercased word tokens, punctuation ignored
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("...", "...") == 0.0  # no word tokens at all
    assert rouge_l("x y", "z w") == 0.0


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ab c.", max_size=30), st.text(alphabet="ab c.", max_size=30))
def test_rouge_l_properties(a: str, b: str) -> None:
    score = rouge_l(a, b)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(rouge_l(b, a))
    if any(ch.isalpha() for ch in a):
        assert rouge_l(a, a) == 1.0


def test_drafting_hand_computed() -> None:
    m = drafting_metrics(
        valid=[True, True, False],
        cited=[["p1", "p2", "p1"], [], []],
        retrieved=[["p1", "p3"], ["p2"], []],
        relevant=[{"p1": 1}, {}, {"p9": 2}],
        replies=["Your order ships today", "Thanks", None],
        references=["your order ships tomorrow", None, "we will refund you"],
        embed_sim=[0.9, None, None],
    )
    assert m["n"] == 3
    assert m["valid_share"] == pytest.approx(2 / 3)
    # only case 1 cites; p1 is cited twice but counts once: p1 retrieved, p2 not -> 1/2
    assert (m["n_citing"], m["grounded_in_retrieved"]) == (1, 0.5)
    assert (m["n_citing_with_relevant"], m["grounded_in_relevant"]) == (1, 0.5)  # p1 relevant, p2 not
    # case 1: LCS "your order ships" = 3 of 4 tokens each -> 0.75; case 3 has a reference but no reply -> 0
    assert m["n_with_reference"] == 2
    assert m["rouge_l"] == pytest.approx((0.75 + 0.0) / 2)
    assert m["n_embed_sim"] == 2 and m["embed_sim"] == pytest.approx((0.9 + 0.0) / 2)
    # lengths 4 and 1 words: mean 2.5, p50 2.5, p95 = 1 + 0.95 * 3 = 3.85 (linear interpolation)
    assert m["n_replies"] == 2
    assert (m["length_mean"], m["length_p50"]) == (2.5, 2.5)
    assert m["length_p95"] == pytest.approx(3.85)
    strict_json(m)


def test_drafting_maps_passages_to_products() -> None:
    mapping = {"p1#0": "p1", "p1#1": "p1", "p2#0": "p2"}
    case = drafting_case(
        cited=["p1", "p2"],
        retrieved=["p2#0"],  # passage ids: mapped to p2
        relevant={"p1#0": 1, "p1#1": 0, "p2#0": 0},  # p1's best grade is 1; p2's is 0 -> not relevant
        reply="ok",
        reference=None,
        relevant_products=mapping,
    )
    assert case == {"grounded_in_retrieved": 0.5, "grounded_in_relevant": 0.5, "rouge_l": None, "length": 1.0}


def test_drafting_empty_and_all_invalid() -> None:
    empty = drafting_metrics([], [], [], [], [], [])
    assert empty["n"] == 0 and empty["valid_share"] is None and empty["length_p95"] is None
    strict_json(empty)
    invalid = drafting_metrics([False, False], [[], []], [[], []], [{}, {}], [None, None], [None, "ref"])
    assert invalid["valid_share"] == 0.0 and invalid["grounded_in_retrieved"] is None
    assert invalid["rouge_l"] == 0.0 and invalid["embed_sim"] is None and invalid["length_mean"] is None
    strict_json(invalid)
    with pytest.raises(ValueError, match="replies"):
        drafting_metrics([True], [[]], [[]], [{}], [], [None])


# ---------------------------------------------------------------- statistics


def test_percentiles() -> None:
    # linear interpolation on 1..4: p50 = 2.5, p90 = 1 + 0.9 * 3 = 3.7
    assert percentiles([4, 1, 3, 2], (50, 90)) == pytest.approx({"p50": 2.5, "p90": 3.7})
    assert percentiles([]) == {"p50": None, "p90": None, "p95": None, "p99": None}


def test_bootstrap_ci_contains_estimate_narrows_and_is_seeded() -> None:
    rng = np.random.default_rng(7)
    small = rng.integers(0, 2, size=30).astype(float).tolist()
    large = rng.integers(0, 2, size=3000).astype(float).tolist()
    for data in (small, large):
        low, high = bootstrap_ci(data, n=500, seed=1)
        assert low <= float(np.mean(data)) <= high
        assert low < high
    width_small = np.subtract(*bootstrap_ci(small, n=500, seed=1)[::-1])
    width_large = np.subtract(*bootstrap_ci(large, n=500, seed=1)[::-1])
    assert width_large < width_small / 3  # ~ sqrt(100) = 10 times narrower in expectation
    assert bootstrap_ci(small, n=200, seed=3) == bootstrap_ci(small, n=200, seed=3)
    assert bootstrap_ci([0.4] * 5) == pytest.approx((0.4, 0.4))
    with pytest.raises(ValueError):
        bootstrap_ci([])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=30))
def test_bootstrap_ci_always_contains_the_mean(values: list[float]) -> None:
    low, high = bootstrap_ci(values, n=100, seed=0)
    assert low <= float(np.mean(values)) <= high


def test_bootstrap_metric_resamples_cases_jointly() -> None:
    rng = np.random.default_rng(3)
    gold = rng.choice(["orders", "billing", "out_of_scope"], size=200).tolist()
    pred = [g if rng.random() < 0.7 else "orders" for g in gold]
    point = accuracy(gold, pred, LABELS)
    assert point is not None
    low, high = bootstrap_metric(lambda g, p: accuracy(g, p, LABELS), gold, pred, n=300, seed=0)
    assert low <= point <= high and high - low < 0.25
    f1 = macro_f1(gold, pred, LABELS)
    assert f1 is not None
    f1_low, f1_high = bootstrap_metric(lambda g, p: macro_f1(g, p, LABELS), gold, pred, n=200, seed=0)
    assert f1_low <= f1 <= f1_high
    # jointly: a metric that is 1.0 exactly when the columns are still aligned stays 1.0 on every replicate
    assert bootstrap_metric(lambda a, b: float(a == b), gold, list(gold), n=50) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_metric(lambda a, b: 0.0, [1, 2], [1])
    with pytest.raises(ValueError):
        bootstrap_metric(lambda a: None, [1, 2])


def test_paired_bootstrap_detects_real_difference_and_not_null() -> None:
    rng = np.random.default_rng(11)
    base = rng.normal(0.5, 0.2, size=200)
    better = base + 0.05 + rng.normal(0, 0.05, size=200)
    real = paired_bootstrap(base.tolist(), better.tolist(), n=1000, seed=0)
    assert real["delta"] == pytest.approx(float(np.mean(better - base)))
    assert real["ci_low"] > 0 and real["p_value"] < 0.01

    noisy = base + rng.normal(0, 0.05, size=200)  # same cases, noise with no true difference
    null = paired_bootstrap(base.tolist(), noisy.tolist(), n=1000, seed=0)
    assert null["delta"] != 0.0
    assert null["ci_low"] < 0 < null["ci_high"] and null["p_value"] > 0.05

    same = paired_bootstrap([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], n=100)
    assert same == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    strict_json(real)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_mcnemar_known_tables() -> None:
    # discordant pairs: a right only once, b right only 3 times -> two-sided binomial
    # p = 2 * (C(4,0) + C(4,1)) / 2^4 = 2 * 5 / 16 = 0.625
    a = [True, False, False, False, True]
    b = [False, True, True, True, True]
    assert mcnemar(a, b) == 0.625
    # 0 vs 10 discordant: p = 2 / 2^10
    assert mcnemar([False] * 10, [True] * 10) == pytest.approx(2 / 1024)
    assert mcnemar([True, False], [True, False]) == 1.0  # no discordant pairs
    # above 1000 discordant pairs (log-space path): close to the chi-square test with continuity correction,
    # chi2 = (|950 - 1050| - 1)^2 / 2000, p = erfc(sqrt(chi2 / 2))
    big = mcnemar([True] * 950 + [False] * 1050, [False] * 950 + [True] * 1050)
    assert big == pytest.approx(math.erfc(math.sqrt(99**2 / 2000 / 2)), abs=2e-3)
    assert mcnemar([True] * 600 + [False] * 600, [False] * 600 + [True] * 600) == 1.0


def test_rouge_l_is_the_published_definition_with_stemming() -> None:
    # rouge-score's rougeL with its Porter stemmer: "ordering" and "orders" both stem to "order"
    assert rouge_l("thanks for ordering", "thanks for your orders") == pytest.approx(2 * 1 * 0.75 / 1.75)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [("We shipped the boots today.", "Your boots were shipped today."), ("a b", "c d")]
    for draft, reference in pairs:
        assert rouge_l(draft, reference) == scorer.score(reference, draft)["rougeL"].fmeasure


def test_mcnemar_matches_scipy_exact_binomial() -> None:
    from scipy.stats import binomtest

    a = [True] * 30 + [False] * 8 + [True] * 50
    b = [False] * 30 + [True] * 8 + [True] * 50
    assert mcnemar(a, b) == pytest.approx(binomtest(8, 38, 0.5).pvalue)
    assert mcnemar([True, False], [True, False]) == 1.0
