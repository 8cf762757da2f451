"""Baselines: majority class and the embedding nearest-neighbour router (fake encoders, and one real MiniLM test)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fakes import HashEmbedder
from mailcascade.catalog import EmbedderLike
from mailcascade.config import RouteSettings, Settings
from mailcascade.errors import ConfigError
from mailcascade.eval.baselines import embedding_baseline, majority_class, majority_label
from mailcascade.stages.embed_route import EmbeddingRouter, email_text, embed_route
from mailcascade.types import Email


def HashEncoder() -> HashEmbedder:
    return HashEmbedder(dim=256, name="fake-word-hash")


class TableEncoder:
    """Hand-set vectors, so similarities (and the vote) can be computed by hand."""

    name = "fake-table"
    dim = 2

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([self.table[t] for t in texts], dtype=np.float32)


EXAMPLES = [
    ("where is my order, it has not arrived", "orders"),
    ("cancel my order please", "orders"),
    ("I was charged twice on my credit card", "billing"),
    ("my invoice shows the wrong amount", "billing"),
    ("I forgot my password and cannot log in", "account"),
    ("how do I change the email on my account profile", "account"),
]


def test_fakes_satisfy_the_protocol() -> None:
    encoders: list[EmbedderLike] = [HashEncoder(), TableEncoder({})]
    assert [e.dim for e in encoders] == [256, 2]


def test_majority_class() -> None:
    assert majority_class(["a", "b", "b", "c"], 3) == ["b", "b", "b"]
    assert majority_label(["b", "a"]) == "a"  # tie: alphabetically first, whatever the order
    assert majority_label(["a", "b"]) == "a"
    assert majority_class(["a"], 0) == []
    with pytest.raises(ValueError):
        majority_class([], 2)


def test_router_gets_obvious_cases_right() -> None:
    texts, labels = zip(*EXAMPLES, strict=True)
    router = EmbeddingRouter(texts, labels, HashEncoder(), k=1)
    decisions = router.predict(["I forgot my password", "charged twice on my card", "cancel my order"])
    assert [d.department for d in decisions] == ["account", "billing", "orders"]
    assert all(d.confidence == 1.0 for d in decisions)  # k = 1: the single neighbour has the whole vote
    assert decisions[0].reason.startswith("k-NN: nearest example 'I forgot my password and cannot log in' (account")
    assert router.predict([]) == []


def test_weighted_vote_by_hand() -> None:
    # query q = (1, 0). a1 = (1, 0): sim 1.0. b1 = b2 = (0.3, ~0.954): sim 0.3 each.
    # B has 2 of 3 votes, but weights are A = 1.0, B = 0.3 + 0.3 = 0.6: A wins with 1.0 / 1.6 = 0.625.
    table = {"a1": [1.0, 0.0], "b1": [0.3, 0.9539392], "b2": [0.3, 0.9539392], "q": [1.0, 0.0]}
    router = EmbeddingRouter(["a1", "b1", "b2"], ["A", "B", "B"], TableEncoder(table), k=3)
    decision = router.predict(["q"])[0]
    assert decision.department == "A"
    assert decision.confidence == pytest.approx(1.0 / 1.6, abs=1e-5)
    assert "(A, sim 1.00)" in decision.reason
    # with k = 5 > 3 examples, every example votes: same answer
    assert EmbeddingRouter(["a1", "b1", "b2"], ["A", "B", "B"], TableEncoder(table), k=5).predict(["q"]) == [decision]


def test_ties_go_to_the_nearest_neighbour_and_negative_similarity_does_not_vote() -> None:
    table = {"x": [1.0, 0.0], "y": [1.0, 0.0], "far": [-1.0, 0.0], "q": [1.0, 0.0]}
    # x and y are identical: equal similarity, the earlier example wins the tie
    tied = EmbeddingRouter(["x", "y"], ["X", "Y"], TableEncoder(table), k=2).predict(["q"])[0]
    assert (tied.department, tied.confidence) == ("X", 0.5)
    # "far" has similarity -1: weight 0, so X takes the whole vote
    far = EmbeddingRouter(["x", "far"], ["X", "F"], TableEncoder(table), k=2).predict(["q"])[0]
    assert (far.department, far.confidence) == ("X", 1.0)
    # nothing similar at all: plain majority of the neighbours
    only_far = EmbeddingRouter(["far", "far", "x"], ["F", "F", "X"], TableEncoder(table), k=2)
    assert only_far.predict_vectors(np.array([[-1.0, 0.0]]))[0].department == "F"


def test_router_validates_its_input() -> None:
    with pytest.raises(ValueError):
        EmbeddingRouter([], [], HashEncoder())
    with pytest.raises(ValueError):
        EmbeddingRouter(["a"], ["x", "y"], HashEncoder())
    with pytest.raises(ValueError):
        EmbeddingRouter(["a"], ["x"], HashEncoder(), k=0)
    router = EmbeddingRouter(["a"], ["x"], HashEncoder())
    with pytest.raises(ValueError):
        router.predict_vectors(np.zeros((1, 3)))


def test_subset_reuses_embeddings_and_fingerprint_tracks_examples() -> None:
    encoder = HashEncoder()
    texts, labels = zip(*EXAMPLES, strict=True)
    router = EmbeddingRouter(texts, labels, encoder, k=1)
    assert encoder.calls == 1
    small = router.subset([0, 2])
    assert encoder.calls == 1  # no re-embedding
    assert small.labels == ("orders", "billing")
    assert small.predict(["I forgot my password"])[0].department in {"orders", "billing"}
    assert small.fingerprint != router.fingerprint
    assert EmbeddingRouter(texts, labels, encoder, k=1).fingerprint == router.fingerprint
    assert EmbeddingRouter(texts, labels, encoder, k=2).fingerprint != router.fingerprint


def write_examples(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return path


def test_from_jsonl_and_from_settings(tmp_path: Path) -> None:
    path = write_examples(tmp_path / "ex.jsonl", [{"text": t, "department": d} for t, d in EXAMPLES])
    router = EmbeddingRouter.from_jsonl(path, HashEncoder(), k=1)
    assert len(router.texts) == len(EXAMPLES)
    assert router.predict(["cancel my order"])[0].department == "orders"

    settings = Settings(route=RouteSettings(strategy="embedding", examples_path=str(path), neighbours=3))
    configured = EmbeddingRouter.from_settings(settings, HashEncoder())
    assert configured.k == 3
    email = Email(id="e1", subject="Login problem", body="I forgot my password and cannot log in")
    assert email_text(email) == "Login problem\nI forgot my password and cannot log in"
    assert configured.route(email).department == "account"


def test_from_jsonl_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        EmbeddingRouter.from_jsonl(tmp_path / "nope.jsonl", HashEncoder())
    assert missing.value.key == "route.examples_path"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "department": "orders"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=":2: invalid JSON"):
        EmbeddingRouter.from_jsonl(bad, HashEncoder())
    wrong = write_examples(tmp_path / "wrong.jsonl", [{"text": "a", "label": "orders"}])
    with pytest.raises(ConfigError, match="expected"):
        EmbeddingRouter.from_jsonl(wrong, HashEncoder())
    unknown = write_examples(tmp_path / "unknown.jsonl", [{"text": "a", "department": "legal"}])
    with pytest.raises(ConfigError, match="unknown department 'legal'"):
        EmbeddingRouter.from_jsonl(unknown, HashEncoder(), departments=["orders"])
    empty = write_examples(tmp_path / "empty.jsonl", [])
    with pytest.raises(ConfigError, match="no router examples"):
        EmbeddingRouter.from_jsonl(empty, HashEncoder())
    with pytest.raises(ConfigError, match="examples_path"):
        EmbeddingRouter.from_settings(Settings(route=RouteSettings(strategy="embedding")), HashEncoder())


def test_embed_route_stage_record() -> None:
    texts, labels = zip(*EXAMPLES, strict=True)
    router = EmbeddingRouter(texts, labels, HashEncoder(), k=1)
    out = embed_route(Email(id="e", subject="", body="cancel my order"), router)
    assert out.value is not None and out.value.department == "orders"
    assert out.record.stage == "route" and out.record.status == "ok"
    assert out.record.prompt_hash == router.fingerprint and out.record.model == "knn:fake-word-hash:k=1"


def test_embedding_baseline_matches_router() -> None:
    texts, labels = zip(*EXAMPLES, strict=True)
    queries = ["my card was charged twice", "reset my password", "where is my order"]
    baseline = embedding_baseline(texts, labels, queries, HashEncoder(), k=1)
    assert baseline == EmbeddingRouter(texts, labels, HashEncoder(), k=1).predict(queries)
    assert [d.department for d in baseline] == ["billing", "account", "orders"]


@pytest.mark.slow
def test_real_minilm_router(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from mailcascade.catalog import Embedder
    from mailcascade.config import EmbeddingSettings

    embedder = Embedder(EmbeddingSettings())
    texts, labels = zip(*EXAMPLES, strict=True)
    router = EmbeddingRouter(texts, labels, embedder, k=3)
    # paraphrases that share few words with the examples: the hash encoder could not do these
    queries = ["My parcel never showed up, what happened to my purchase?",
               "There are two identical payments on my bank statement",
               "I can't sign in, the site says my credentials are wrong"]
    decisions = router.predict(queries)
    assert [d.department for d in decisions] == ["orders", "billing", "account"]
    assert all(0.0 < d.confidence <= 1.0 for d in decisions)
    assert router.vectors.shape == (len(EXAMPLES), embedder.dim)


def test_router_sends_unlike_emails_out_of_scope_with_a_threshold_set_from_its_examples() -> None:
    texts = ["cancel my order", "cancel the order please", "where is my refund", "refund not received yet",
             "reset my password", "password reset link broken"]
    labels = ["orders", "orders", "returns", "returns", "account", "account"]
    router = EmbeddingRouter(texts, labels, HashEncoder(), k=1, oos_quantile=0.5)
    assert router.min_similarity is not None and 0 < router.min_similarity <= 1
    assert router.predict(["cancel my order"])[0].department == "orders"
    far = router.predict(["zebra saxophone volcano"])[0]
    assert far.department == "out_of_scope" and "threshold" in far.reason
    assert EmbeddingRouter(texts, labels, HashEncoder(), k=1).predict(["zebra saxophone volcano"])[0].department \
        != "out_of_scope"
