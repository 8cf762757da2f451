"""Error-analysis alarms on synthetic records with PLANTED problems: each must fire and name the planted cases,
and a clean set must raise none."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import pytest

from fakes import HashEmbedder
from mailcascade.eval.diagnose import (
    Alarm,
    diagnose_records,
    format_consistency,
    guess_language,
    implausible_scores,
    label_noise,
    leakage,
    learning_curve,
    normalise,
    router_learning_curve,
    score_jump,
    slice_table,
    tuned_on_eval,
    weak_slices,
    worse_on_easy,
)

DEPTS = ["orders", "returns", "billing", "shipping"]


def WordHashEmbedder(dim: int = 1024) -> HashEmbedder:
    return HashEmbedder(dim=dim, name="fake-word-hash")


def stage(status: str = "ok", *, codes: Sequence[str] = (), prompt_hash: str = "p1", model: str = "m1",
          attempts: int = 1, name: str = "route") -> dict[str, Any]:
    return {"stage": name, "status": status, "prompt_hash": prompt_hash, "model": model, "attempts": attempts,
            "failure_codes": list(codes), "validator_status": "failed" if status == "failed" else "clean",
            "tokens_in": 10, "tokens_out": 5, "latency_ms": 1.0, "input_hash": "x", "attempt_log": []}


def retrieval_scores(hit: bool) -> dict[str, float]:
    value = 1.0 if hit else 0.0
    return {"recall@1": value, "recall@3": value, "recall@5": value, "recall@10": value, "ndcg@5": value * 0.9,
            "precision@1": value, "mrr": value}


def record(case_id: str, gold: str | None, pred: str | None, *, base: str | None = None, chars: int = 100,
           relevant: dict[str, int] | None = None, stages: list[dict[str, Any]] | None = None,
           retrieval: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "id": case_id, "split": "test",
        "expected": {"department": gold, "relevant": relevant or {}, "reference_reply": None},
        "status": "ok", "error": "",
        "route": {"department": pred, "confidence": 0.9, "reason": "r"} if pred is not None else None,
        "retrieved": [], "draft": None, "stages": stages if stages is not None else [stage()],
        "baselines": {"majority": "orders", "embedding_knn": base}, "embed_sim": None, "meta": {},
        "email_chars": chars,
        "scores": {"route_correct": pred == gold if gold is not None else None, "retrieval": retrieval,
                   "draft": None},
    }


CLEAN_WRONG = (0, 15, 25, 30, 45, 50, 65, 75)  # system errors, all on cases the baseline also gets wrong


def clean_records() -> list[dict[str, Any]]:
    """80 cases over 4 balanced departments; the system is right on 72, the baseline on 64; errors differ."""
    out = []
    for i in range(80):
        gold = DEPTS[i % 4]
        base = DEPTS[(i + 2) % 4] if i % 5 == 0 else gold
        pred = DEPTS[(i + 1) % 4] if i in CLEAN_WRONG else gold
        out.append(record(f"c{i:02d}", gold, pred, base=base, chars=40 + (i * 37) % 400,
                          relevant={f"P{i}": 1}, retrieval=retrieval_scores(i % 7 != 3)))
    return out


def clean_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    acc = sum(r["scores"]["route_correct"] for r in records) / len(records)
    return {"n_cases": len(records),
            "routing": {"accuracy": acc, "accuracy_ci": [acc - 0.07, min(1.0, acc + 0.06)], "macro_f1": acc,
                        "baselines": {"majority": {"accuracy": 0.25}}},
            "retrieval": {"ks": [1, 3, 5, 10], "recall@1": 0.8, "recall@3": 0.85, "recall@5": 0.86,
                          "recall@10": 0.86, "ndcg@5": 0.77, "mrr": 0.8}}


def english_texts(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    return {r["id"]: f"Hello, where is my order {r['id']}? I have a question about it." for r in records}


def names(alarms: Sequence[Alarm]) -> list[str]:
    return [a.name for a in alarms]


def one(alarms: Sequence[Alarm], name: str) -> Alarm:
    found = [a for a in alarms if a.name == name]
    assert len(found) == 1, names(alarms)
    return found[0]


# ------------------------------------------------------------------------------------------------ clean set


def test_clean_set_raises_no_alarm() -> None:
    records = clean_records()
    out = diagnose_records(records, clean_metrics(records), DEPTS, texts=english_texts(records),
                           previous=clean_records())
    assert out["alarms"] == []
    json.dumps(out, allow_nan=False)  # JSON-ready
    departments = {row["slice"] for row in out["slices"] if row["slice"].startswith("department=")}
    assert departments == {f"department={d}" for d in DEPTS}
    assert out["formats"][0]["calls"] == 80 and out["formats"][0]["failure_rate"] == 0


# ------------------------------------------------------------------------------------------------ implausible


def test_degenerate_label_set_raises_implausible_alarm() -> None:
    records = [record(f"d{i}", "orders", "orders" if i != 7 else "billing", base="orders") for i in range(40)]
    metrics = clean_metrics(records)
    alarms = implausible_scores(metrics, records, DEPTS)
    degenerate = one(alarms, "degenerate_labels")
    assert degenerate.data["department"] == "orders" and degenerate.data["share"] == 1.0
    assert "one_department" not in names(alarms)  # the gold is like that too: the degenerate alarm covers it


def test_one_department_for_everything_names_the_misrouted_cases() -> None:
    records = clean_records()
    for r in records:
        r["route"]["department"] = "returns"
        r["scores"]["route_correct"] = r["expected"]["department"] == "returns"
    alarm = one(implausible_scores(clean_metrics(records), records, DEPTS), "one_department")
    assert alarm.data["department"] == "returns"
    assert set(alarm.cases) == {r["id"] for r in records if r["expected"]["department"] != "returns"}


def test_below_majority_baseline() -> None:
    records = [record(f"b{i}", "orders" if i < 30 else "billing", "billing" if i < 30 else "orders")
               for i in range(40)]
    metrics = clean_metrics(records)
    metrics["routing"]["baselines"]["majority"]["accuracy"] = 0.75
    alarm = one(implausible_scores(metrics, records, DEPTS), "below_majority")
    assert set(alarm.cases) == {f"b{i}" for i in range(30)}  # majority ("orders") right, system wrong


def test_too_good_against_the_agreement_ceiling() -> None:
    records = [record(f"t{i}", DEPTS[i % 4], DEPTS[i % 4]) for i in range(50)]
    alarms = implausible_scores(clean_metrics(records), records, DEPTS)
    assert one(alarms, "too_good").data["ceiling"] == 0.98
    assert implausible_scores(clean_metrics(records), records, DEPTS, agreement_ceiling=1.0) == []


def test_broken_invariants_and_nan() -> None:
    records = clean_records()
    records[2]["scores"]["retrieval"]["ndcg@5"] = 1.3
    records[5]["scores"]["retrieval"].update({"recall@3": 1.0, "recall@5": 0.5})
    metrics = clean_metrics(records)
    metrics["retrieval"].update({"ndcg@5": 1.2, "recall@5": 0.7})  # recall@5 < recall@3 = 0.85
    metrics["drafting"] = {"rouge_l": float("nan")}
    alarms = implausible_scores(metrics, records, DEPTS)
    broken = one(alarms, "broken_invariants")
    assert set(broken.cases) == {"c02", "c05"}
    where = {(v["where"], v["metric"]) for v in broken.data["violations"]}
    assert {("retrieval", "ndcg@5"), ("retrieval", "recall@5"), ("case c02", "ndcg@5"), ("case c05", "recall@5")} \
        <= where
    assert one(alarms, "nan_in_metrics").data["paths"] == ["drafting.rouge_l"]
    json.dumps([a.to_dict() for a in alarms], allow_nan=False)


# ------------------------------------------------------------------------------------------------ difficulty


def easy_hard_records() -> tuple[list[dict[str, Any]], set[str]]:
    """40 easy cases (the baseline confident), 20 hard ones (it hesitates); system labels shuffled on 15 easy."""
    records = []
    for i in range(40):
        records.append(record(f"e{i:02d}", DEPTS[i % 2], DEPTS[i % 2], base=DEPTS[i % 2], chars=50))
        records[-1]["baseline_confidence"] = {"embedding_knn": 0.9}
    for i in range(20):
        gold = DEPTS[2 + i % 2]
        records.append(record(f"h{i:02d}", gold, gold, base=DEPTS[i % 2], chars=900))
        records[-1]["baseline_confidence"] = {"embedding_knn": 0.4}
    planted = [f"e{i:02d}" for i in range(0, 40, 8)] + [f"e{i:02d}" for i in range(3, 40, 4)]
    planted = sorted(set(planted))[:15]
    by_id = {r["id"]: r for r in records}
    shuffled = [by_id[i]["expected"]["department"] for i in planted]
    random.Random(1).shuffle(shuffled)
    for case_id, label in zip(planted, shuffled, strict=True):
        r = by_id[case_id]
        wrong = label if label != r["expected"]["department"] else DEPTS[3]
        r["route"]["department"] = wrong
        r["scores"]["route_correct"] = False
    return records, set(planted)


def test_worse_on_easy_names_the_shuffled_easy_cases() -> None:
    records, planted = easy_hard_records()
    alarm = one(worse_on_easy(records), "worse_on_easy")
    assert set(alarm.cases) == planted
    assert alarm.data["hard"]["accuracy"] == 1.0 and alarm.data["easy"]["n"] == 40
    assert alarm.data["difference_ci"][0] > 0


def test_worse_on_easy_quiet_when_easy_is_easier() -> None:
    assert worse_on_easy(clean_records()) == []


def test_label_noise_finds_planted_mislabels() -> None:
    records = clean_records()
    planted = {"c03", "c09", "c14", "c33"}
    for r in records:
        if r["id"] in planted:  # the gold label is wrong; system and baseline both answer the true one
            true = r["expected"]["department"]
            r["expected"]["department"] = DEPTS[(DEPTS.index(true) + 1) % 4]
            r["baselines"]["embedding_knn"] = true
            r["route"]["department"] = true
            r["scores"]["route_correct"] = False
    alarm = one(label_noise(records), "label_noise")
    assert set(alarm.cases) == planted
    assert alarm.level == "warn"
    row = next(c for c in alarm.data["cases"] if c["id"] == "c03")
    assert row["system"] == row["baseline"] == "shipping" and row["gold"] == "orders"
    assert label_noise(clean_records()) == []


def test_label_noise_respects_recorded_baseline_confidence() -> None:
    records = clean_records()
    r = records[3]
    r["expected"]["department"], r["scores"]["route_correct"] = "billing", False
    r["baseline_confidence"] = {"embedding_knn": 0.3}
    assert label_noise(records) == []
    r["baseline_confidence"] = {"embedding_knn": 0.9}
    assert one(label_noise(records), "label_noise").cases == ("c03",)


# ------------------------------------------------------------------------------------------------ slices


def test_weak_slices_names_the_weak_department_and_language() -> None:
    records = clean_records()
    texts = english_texts(records)
    weak_ids = set()
    for r in records:
        if r["expected"]["department"] == "billing" and int(r["id"][1:]) % 3 != 0:
            r["route"]["department"], r["scores"]["route_correct"] = "orders", False
            weak_ids.add(r["id"])
    alarm = next(a for a in weak_slices(records, texts) if a.data["slice"] == "department=billing")
    assert weak_ids <= set(alarm.cases)
    assert alarm.data["metric"] == "route_accuracy" and alarm.data["mean"] < 0.5

    records = clean_records()
    texts = english_texts(records)
    hinglish = {f"c{i:02d}" for i in range(1, 80, 8)}
    for case_id in hinglish:
        texts[case_id] = "mera order kab aayega bhai, kya hua?"
        r = next(r for r in records if r["id"] == case_id)
        r["route"]["department"], r["scores"]["route_correct"] = "shipping" if r["route"]["department"] != \
            "shipping" else "orders", False
    alarm = next(a for a in weak_slices(records, texts) if a.data["slice"] == "language=other")
    assert set(alarm.cases) == hinglish


def test_slice_table_order_numbers_products_and_meta_text() -> None:
    records = clean_records()[:6]
    records[0]["meta"] = {"text": "Cancel order #123456 please"}
    records[1]["meta"] = {"subject": "Refund", "body": "I want to return my shoes"}
    records[2]["expected"]["relevant"] = {}
    table = slice_table(records)
    order = next(r for r in table if r["slice"] == "order_number=yes" and r["metric"] == "route_accuracy")
    assert order["n"] == 1
    no_order = next(r for r in table if r["slice"] == "order_number=no" and r["metric"] == "route_accuracy")
    assert no_order["n"] == 1  # the other four have no text at all
    no_product = next(r for r in table if r["slice"] == "product_mentioned=no" and r["metric"] == "route_accuracy")
    assert no_product["n"] == 1
    assert guess_language("Where is my parcel?") == "en"
    assert guess_language("mera order kab aayega") == "other"
    assert guess_language("12345") == "unknown"


# ------------------------------------------------------------------------------------------------ leakage


def random_texts(rng: random.Random, vocab: Sequence[str], n: int, words: int = 25) -> list[str]:
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]


def test_leakage_finds_exact_and_near_copies_by_name() -> None:
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(3000)]
    eval_texts = {f"e{i}": text.capitalize() + "." for i, text in enumerate(random_texts(rng, vocab, 40))}
    router = random_texts(rng, vocab, 300)
    router.insert(17, "  " + eval_texts["e3"].upper().replace(" ", "  ") + "!!")  # exact after normalising
    router.append(eval_texts["e7"])
    words = eval_texts["e11"].split()
    words[4] = "changed"
    router.append(" ".join([*words, "please"]))  # a light paraphrase
    few_shot = random_texts(rng, vocab, 20)
    words = eval_texts["e19"].split()
    words[10] = "different"
    few_shot.append(" ".join(words))
    prompt = "You route emails.\n\nExample:\n" + eval_texts["e23"] + "\nAnswer with JSON."
    sources = {"router_examples": router, "few_shot": few_shot, "prompt_text": [prompt],
               "catalog_passages": random_texts(rng, vocab, 200)}
    alarms = leakage(eval_texts, sources, WordHashEmbedder())
    exact = one(alarms, "exact_duplicates")
    assert set(exact.cases) == {"e3", "e7", "e23"}
    by_case = {m["case"]: m for m in exact.data["matches"]}
    assert by_case["e3"]["source"] == "router_examples" and by_case["e3"]["index"] == 17
    assert by_case["e23"]["source"] == "prompt_text" and by_case["e23"]["kind"] == "contained"
    near = one(alarms, "near_duplicates")
    assert set(near.cases) == {"e11", "e19"}
    near_by_case = {m["case"]: m for m in near.data["matches"]}
    assert near_by_case["e11"]["source"] == "router_examples" and "changed" in near_by_case["e11"]["source_text"]
    assert near_by_case["e19"]["source"] == "few_shot" and near_by_case["e19"]["similarity"] >= 0.92

    clean_sources = {"router_examples": random_texts(rng, vocab, 300), "prompt_text": ["You route emails."]}
    assert leakage(eval_texts, clean_sources, WordHashEmbedder()) == []


def test_normalise() -> None:
    assert normalise("  Hello,   WORLD!\n How's it?") == "hello world hows it"


def test_score_jump_and_tuned_on_eval() -> None:
    history = [
        {"run": "r1", "metrics": {"routing": {"accuracy": 0.70, "accuracy_ci": [0.65, 0.75]}}},
        {"run": "r2", "metrics": {"routing": {"accuracy": 0.72, "accuracy_ci": [0.67, 0.77]}}},
        {"run": "r3", "metrics": {"routing": {"accuracy": 0.95, "accuracy_ci": [0.92, 0.98]}}},
    ]
    alarm = one(score_jump(history, "routing.accuracy"), "score_jump")
    assert (alarm.data["from_run"], alarm.data["to_run"]) == ("r2", "r3")
    assert score_jump(history[:2], "routing.accuracy") == []

    info = {"name": "bitext", "options": {"tuned_on": "eval"}, "eval_set": {"name": "bitext", "source": "/d/x.csv"},
            "settings": {"route": {"examples_path": "/d/x.csv"}},
            "baseline_source": {"majority": "the eval set itself", "embedding_knn": "leave-one-out over the eval set"}}
    assert names(tuned_on_eval(info)) == ["tuned_on_eval", "examples_are_eval", "baseline_on_eval"]
    assert tuned_on_eval({"options": {}, "settings": {"route": {"examples_path": ""}},
                          "baseline_source": {"majority": "train split"}}) == []


# ------------------------------------------------------------------------------------------------ formats


def test_format_failures_and_change_between_runs() -> None:
    previous = clean_records()
    records = clean_records()
    failed = {f"c{i:02d}" for i in range(0, 80, 4)}
    for r in records:
        r["stages"] = [stage("failed" if r["id"] in failed else "ok", prompt_hash="p2",
                             codes=["truncated"] if r["id"] in failed else [])]
    alarms = format_consistency(records, previous)
    assert set(one(alarms, "format_failures").cases) == failed
    changes = [a for a in alarms if a.name == "format_change"]
    assert {a.data["measure"] for a in changes} == {"failed", "flagged"}
    failed_change = next(a for a in changes if a.data["measure"] == "failed")
    assert set(failed_change.cases) == failed and failed_change.level == "warn"
    assert failed_change.data["versions_before"] == [["p1", "m1"]]
    assert failed_change.data["versions_now"] == [["p2", "m1"]]


def test_mixed_prompt_versions_in_one_run() -> None:
    records = clean_records()
    for r in records[40:]:
        r["stages"] = [stage(prompt_hash="p2")]
    alarm = one(format_consistency(records), "mixed_versions")
    assert {v["prompt_hash"] for v in alarm.data["versions"]} == {"p1", "p2"}


# ------------------------------------------------------------------------------------------------ curves


def curve(ys: Sequence[float], half: float = 0.03, xs: Sequence[float] = (10, 25, 50, 100)) -> list[dict[str, Any]]:
    return [{"x": x, "y": y, "ci": [y - half, y + half]} for x, y in zip(xs, ys, strict=True)]


def test_learning_curve_shapes() -> None:
    assert names(learning_curve(curve([0.70, 0.71, 0.70, 0.72]))) == ["curve_flat"]
    assert names(learning_curve(curve([0.70, 0.80, 0.75, 0.60]))) == ["curve_falling"]
    assert names(learning_curve(curve([0.40, 0.50, 0.60, 0.80]))) == ["curve_steep"]
    assert learning_curve(curve([0.40, 0.70, 0.78, 0.80])) == []  # saturating: fine


def test_router_learning_curve_embeds_once() -> None:
    rng = random.Random(3)
    keywords = {d: [f"{d}{j}" for j in range(6)] for d in DEPTS}
    noise = [f"n{i}" for i in range(500)]

    def text(dept: str) -> str:
        return " ".join([*rng.sample(keywords[dept], 2), *rng.sample(noise, 8)])

    train_labels = [DEPTS[i % 4] for i in range(200)]
    test_labels = [DEPTS[i % 4] for i in range(60)]
    train = [text(d) for d in train_labels]
    test = [text(d) for d in test_labels]
    embedder = WordHashEmbedder()
    points = router_learning_curve(train, train_labels, test, test_labels, embedder, k=3)
    assert [p["x"] for p in points] == [20, 50, 100, 200]
    assert embedder.encoded == 260 and embedder.calls == 2
    for p in points:
        assert p["ci"][0] <= p["y"] <= p["ci"][1] and p["n_test"] == 60
    assert points[-1]["y"] > points[0]["y"]
    with pytest.raises(ValueError):
        router_learning_curve(train, train_labels, test, test_labels[:-1], embedder)


def test_below_majority_uses_the_honest_baseline_always_out_of_scope() -> None:
    """A HINT3-like set: 96% of the test is out of scope, the train split has none (train majority: orders)."""
    from mailcascade.eval.records import compute_metrics

    labels = [*DEPTS, "out_of_scope"]
    planted = {f"h{i}" for i in range(0, 96, 9)}  # 11 out-of-scope cases the system sends to a department

    def records(wrong: set[str]) -> list[dict[str, Any]]:
        out = []
        for i in range(100):
            gold = "out_of_scope" if i < 96 else "orders"
            r = record(f"h{i}", gold, "orders" if f"h{i}" in wrong else gold)
            r["baselines"] = {"majority": "orders", "embedding_knn": gold, "always_out_of_scope": "out_of_scope"}
            r["stages"] = [stage()]
            r["stages"][0]["stage"] = "route"
            out.append(r)
        return out

    hurt = records(planted)
    metrics = compute_metrics(hurt, labels=labels, level="product")
    assert metrics["routing"]["majority_baseline"] == {"name": "always_out_of_scope", "accuracy": 0.96}
    assert metrics["routing"]["baselines"]["majority"]["accuracy"] == 0.04  # the train majority alone: silent
    alarm = one(implausible_scores(metrics, hurt, labels), "below_majority")
    assert set(alarm.cases) == planted and "out_of_scope" in alarm.explanation
    clean = records({"h96"})  # one error, on an in-scope case: 0.99 beats the constant
    assert not [a for a in implausible_scores(compute_metrics(clean, labels=labels, level="product"), clean, labels)
                if a.name == "below_majority"]
