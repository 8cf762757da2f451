"""The trained router, the out-of-scope calibration (training data only) and the hybrid's deferral."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from fakes import HashEmbedder
from fakeserver import FakeServer, Reply
from mailcascade.catalog import Embedder
from mailcascade.cli import main
from mailcascade.config import EmbeddingSettings, LLMSettings, RouteSettings, Settings, StoreSettings
from mailcascade.errors import ConfigError
from mailcascade.eval.evalset import load_eval_set
from mailcascade.eval.runner import EvalOptions, run_eval
from mailcascade.llm import OpenAIClient
from mailcascade.pipeline import Pipeline
from mailcascade.prompts import load_prompts
from mailcascade.record import record_dict
from mailcascade.router.calibrate import Scored, best_threshold, label_folds
from mailcascade.router.model import FORMAT, TrainedRouter
from mailcascade.router.train import TrainOptions, make_pairs, train
from mailcascade.stages.embed_route import EmbeddingRouter, knn_calibration
from mailcascade.types import OUT_OF_SCOPE, Email

WORDS = {
    "orders": ["order", "parcel", "dispatch", "cancel", "status", "confirmation"],
    "billing": ["invoice", "charged", "payment", "card", "receipt", "refund"],
    "account": ["password", "login", "profile", "email", "locked", "newsletter"],
    "products": ["size", "colour", "battery", "fabric", "warranty", "stock"],
}


def examples(per_label: int = 6) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for label, words in WORDS.items():
        for i in range(per_label):
            texts.append(f"question about my {words[i % len(words)]} and {words[(i + 1) % len(words)]}")
            labels.append(label)
    return texts, labels


# calibration -----------------------------------------------------------------------------------------------------

def test_label_folds_hold_out_whole_labels_and_never_test_on_training_rows() -> None:
    _, labels = examples()
    folds = label_folds(labels, folds=3, seed=0)
    assert len(folds) == 3
    held_labels = [{labels[i] for i in f.held_out} for f in folds]
    assert set().union(*held_labels) == set(labels)  # every label is out of scope once
    for fold, held in zip(folds, held_labels, strict=True):
        assert not ({labels[i] for i in (*fold.train, *fold.test)} & held)  # a held-out label is never trained on
        assert not set(fold.train) & set(fold.test)
        assert {labels[i] for i in fold.test} <= {labels[i] for i in fold.train}


def test_best_threshold_separates_out_of_scope_scores_from_right_answers() -> None:
    items = [Scored(0.9, True, False), Scored(0.8, True, False), Scored(0.7, False, False),
             Scored(0.3, False, True), Scored(0.2, False, True)]
    threshold, accuracy = best_threshold(items)
    assert threshold is not None and 0.3 < threshold < 0.8  # the wrong in-scope 0.7 is wrong either way
    assert accuracy == pytest.approx(4 / 5)
    # nothing out of scope: never say out_of_scope
    assert best_threshold([Scored(0.5, True, False), Scored(0.4, True, False)])[0] is None


def test_knn_calibration_is_computed_from_the_examples_only() -> None:
    texts, labels = examples()
    embedder = HashEmbedder()
    vectors = embedder.encode(texts)
    cal = knn_calibration(vectors, labels, 3, None)
    assert cal.source == "cv" and cal.folds >= 2 and cal.threshold is not None
    assert cal.n_pseudo_out_of_scope == len(texts)  # each example was held out (as an unseen label) once
    again = knn_calibration(vectors.copy(), list(labels), 3, None)
    assert again == cal  # deterministic
    negatives = embedder.encode(["the weather tomorrow", "a job application for the warehouse"])
    with_neg = knn_calibration(vectors, labels, 3, negatives)
    assert with_neg.n_negatives == 2 and with_neg.n_test == cal.n_test + 2 * cal.folds


def write_jsonl_cases(path: Path, rows: list[tuple[str, str, str]]) -> None:
    path.write_text("".join(json.dumps({"id": i, "email": {"subject": "", "body": t}, "expected": {"department": d}})
                            + "\n" for i, t, d in rows), encoding="utf-8")


def test_the_eval_set_does_not_change_the_threshold(tmp_path: Path) -> None:
    texts, labels = examples()
    write_jsonl_cases(tmp_path / "train.jsonl", [(f"t{i}", t, d) for i, (t, d) in
                                                 enumerate(zip(texts, labels, strict=True))])
    write_jsonl_cases(tmp_path / "a.jsonl", [("a1", "my order status please", "orders"),
                                             ("a2", "weather on saturday", OUT_OF_SCOPE)])
    write_jsonl_cases(tmp_path / "b.jsonl", [("b1", "charged twice on my card", "billing"),
                                             ("b2", "lunch with kate", OUT_OF_SCOPE),
                                             ("b3", "battery warranty", "products")])
    settings = Settings(route=RouteSettings(strategy="embedding", neighbours=3),
                        store=StoreSettings(path=str(tmp_path / "log.db"), cache=False))
    thresholds = []
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(
            f'adapter = "jsonl"\npath = "./{name}.jsonl"\ntrain_path = "./train.jsonl"\n', encoding="utf-8")
        eval_set = load_eval_set(tmp_path / f"{name}.toml")
        run = run_eval(eval_set, tmp_path / f"run-{name}", EvalOptions(stages=("route",), progress=False),
                       settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path / "cache")
        info = json.loads((run / "run.json").read_text(encoding="utf-8"))
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        assert info["router"]["calibration"] == metrics["router"]["calibration"]
        thresholds.append(info["router"]["calibration"])
    assert thresholds[0] == thresholds[1] and thresholds[0]["source"] == "cv"
    direct = EmbeddingRouter.calibrated(texts, labels, HashEmbedder(), settings)
    assert direct.calibration.to_dict() == thresholds[0]


def test_a_hand_set_threshold_is_used_and_marked() -> None:
    texts, labels = examples()
    route = RouteSettings(strategy="embedding", neighbours=3, oos_threshold=0.55)
    router = EmbeddingRouter.calibrated(texts, labels, HashEmbedder(), Settings(route=route))
    assert router.calibration.source == "hand-set" and router.min_similarity == 0.55
    off = EmbeddingRouter.calibrated(texts, labels, HashEmbedder(),
                                     Settings(route=dataclasses.replace(route, oos_threshold=0.0,
                                                                        oos_calibration="off")))
    assert off.calibration.source == "off" and off.min_similarity is None


# the trained router ----------------------------------------------------------------------------------------------

def test_pairs_have_same_label_positives_and_other_label_negatives() -> None:
    _, labels = examples(per_label=3)
    pairs = make_pairs(labels, rounds=2, seed=1)
    assert len(pairs) == 2 * 2 * len(labels)
    for i, j, target in pairs:
        assert i != j and (labels[i] == labels[j]) == (target == 1.0)
    assert make_pairs(labels, rounds=2, seed=1) == pairs


def fake_model_dir(folder: Path, labels: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"format": FORMAT, "labels": labels}), encoding="utf-8")
    return folder


def test_a_manifest_for_other_departments_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    folder = fake_model_dir(tmp_path / "model", ["billing", "orders", "travel"])
    settings = Settings()
    with pytest.raises(ConfigError) as err:
        TrainedRouter.load(folder, settings)
    message = str(err.value)
    assert "\n" not in message and "not trained: account" in message and "not configured: travel" in message
    assert "router train" in message
    with pytest.raises(ConfigError, match=r"manifest\.json missing"):
        TrainedRouter.load(tmp_path / "nothing", settings)
    (tmp_path / "mailcascade.toml").write_text(f'[route]\nstrategy = "trained"\nmodel_dir = "{folder}"\n'
                                               f'[store]\npath = "{tmp_path / "log.db"}"\n', encoding="utf-8")
    (tmp_path / "mail.txt").write_text("Subject: hi\n\nwhere is my order", encoding="utf-8")
    code = main(["run", str(tmp_path / "mail.txt"), "--out", str(tmp_path / "out.jsonl"),
                 "--config", str(tmp_path / "mailcascade.toml"), "--no-progress"])
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mailcascade: error")]
    assert code == 1 and len(err_lines) == 1 and "do not match the configured ones" in err_lines[0]


@pytest.mark.slow
def test_training_on_a_small_set_saves_a_router_that_loads_and_routes(tmp_path: Path) -> None:
    texts, labels = examples(per_label=5)
    seen: list[tuple[int, int]] = []
    manifest = train(texts, labels, tmp_path / "router", Embedder(EmbeddingSettings()),
                     negatives=["what is the weather tomorrow"],
                     options=TrainOptions(epochs=1, pairs_per_example=1, folds=2, batch_size=8),
                     progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1]  # the bar reaches its end
    assert manifest["labels"] == sorted(WORDS) and manifest["n_examples"] == len(texts)
    assert len(manifest["examples_sha256"]) == 64 and manifest["base_model"].endswith("all-MiniLM-L6-v2")
    cal = manifest["calibration"]
    assert cal["source"] == "cv" and cal["folds"] == 2 and cal["n_negatives"] == 1
    assert cal["score"] in ("probability", "similarity") and 0 <= cal["cv_accuracy"] <= 1
    settings = Settings(departments=tuple(d for d in Settings().departments if d.name in WORDS))
    router = TrainedRouter.load(tmp_path / "router", settings)
    decisions = router.predict([texts[0], texts[-1]])
    assert [d.department for d in decisions] == [labels[0], labels[-1]]
    assert all(d.decided_by == "router" and 0 <= d.confidence <= 1 for d in decisions)
    assert router.describe()["calibration"] == cal
    top = router.shortlist([texts[0]], 2)[0]
    assert len(top) == 2 and top[0].department == labels[0] and top[0].examples


# the hybrid ------------------------------------------------------------------------------------------------------

HYBRID_EXAMPLES = [("where is my order", "orders")] * 3 + [("refund my money", "returns")] * 3


def hybrid_pipeline(server: FakeServer, tmp_path: Path, defer_below: float) -> Pipeline:
    route = RouteSettings(strategy="hybrid", neighbours=6, oos_calibration="off", defer_below=defer_below,
                          shortlist=2)
    settings = Settings(route=route, llm=LLMSettings(base_url=server.base_url, model="fake", max_retries=0),
                        store=StoreSettings(path=str(tmp_path / "log.db"), cache=False))
    router = EmbeddingRouter([t for t, _ in HYBRID_EXAMPLES], [d for _, d in HYBRID_EXAMPLES], HashEmbedder(), 6)
    return Pipeline(settings, OpenAIClient(settings.llm), load_prompts(settings.prompts_path()), router=router)


def test_hybrid_asks_the_llm_only_when_the_router_is_unsure(tmp_path: Path) -> None:
    sure = Email("sure", "", "where is my order")  # the vote of all 6 examples: 0.78 orders
    unsure = Email("unsure", "", "my order refund")  # 0.54 returns: a split vote
    with FakeServer() as server:
        server.push(Reply(json.dumps({"department": "returns", "confidence": 0.7, "reason": "refund"})))
        pipeline = hybrid_pipeline(server, tmp_path, defer_below=0.7)
        confident = pipeline.run(sure, stages=("route",))
        deferred = pipeline.run(unsure, stages=("route",))
        bodies = server.bodies
    assert confident.route is not None and confident.route.decided_by == "router"
    assert confident.department == "orders" and confident.stages[0].model.startswith("knn:")
    assert deferred.route is not None and deferred.route.decided_by == "llm" and deferred.department == "returns"
    assert len(bodies) == 1  # only the unsure email reached the model
    system = bodies[0]["messages"][0]["content"]
    assert "- orders:" in system and "- returns:" in system and 'e.g. "refund my money"' in system
    assert "- billing" not in system  # only the shortlist (2 candidates) and out_of_scope are offered
    enum = bodies[0]["response_format"]["schema"]["properties"]["department"]["enum"]
    assert sorted(enum) == ["orders", "out_of_scope", "returns"]
    assert record_dict(confident)["decided_by"] == "router" and record_dict(deferred)["decided_by"] == "llm"


def test_hybrid_with_defer_below_zero_never_calls_the_llm_and_keeps_the_router_on_llm_failure(tmp_path: Path) -> None:
    emails = [Email(str(i), "", text) for i, text in enumerate(["where is my order", "my order refund"])]
    with FakeServer() as server:
        never = hybrid_pipeline(server, tmp_path, defer_below=0.0)
        results = [never.run(e, stages=("route",)) for e in emails]
        assert server.bodies == []
        assert all(r.route is not None and r.route.decided_by == "router" for r in results)
        server.push(*[Reply("I cannot decide, sorry.")] * 3)
        fallback = hybrid_pipeline(server, tmp_path, defer_below=0.99).run(emails[1], stages=("route",))
        assert len(server.bodies) >= 1
    assert fallback.route is not None and fallback.route.decided_by == "router"
    assert "the LLM gave no valid answer" in fallback.route.reason
    assert fallback.stages[0].status == "failed"  # the trace keeps the LLM's failure


def test_eval_reports_the_share_deferred_and_accuracy_on_each_share(tmp_path: Path) -> None:
    from mailcascade.eval.records import decided_by_shares

    def record(gold: str, pred: str, who: str) -> dict[str, object]:
        return {"expected": {"department": gold}, "route": {"department": pred, "decided_by": who}}

    shares = decided_by_shares([record("orders", "orders", "router"), record("returns", "orders", "router"),
                                record("returns", "returns", "llm")], ["orders", "returns"])
    assert shares == {"llm": {"n": 1, "share": pytest.approx(1 / 3), "accuracy": 1.0},
                      "router": {"n": 2, "share": pytest.approx(2 / 3), "accuracy": 0.5}}
    assert decided_by_shares([{"expected": {"department": "a"}, "route": {"department": "a"}}], ["a"]) is None
    assert np.isclose(sum(s["share"] for s in shares.values()), 1.0)
