"""The real embedder shared by threads: its vectors are sentence-transformers' own, and many threads encoding at
once (only tokenisation is serialised) get exactly what serial encoding gets."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mailcascade.catalog import Embedder
from mailcascade.config import EmbeddingSettings

pytestmark = pytest.mark.slow

TEXTS = [
    "Where is my order #1234? It was due on Monday.",
    "The kettle arrived with a cracked lid and the box was soaked, I would like a replacement or my money back.",
    "Do these hiking boots come in size 44?",
    "I was charged twice for one jacket.",
    "",
    "Hello",
    "Can I change the delivery address of an order that has already shipped? The courier says it is in transit " * 3,
    "password reset link never arrives",
]
HAS_ONNX = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def run_threads(n: int, work: Callable[[int], None]) -> None:
    """`work(i)` on n threads released together; re-raises the first error a thread hit."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # collected and re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_vectors_equal_sentence_transformers_encode() -> None:
    embedder = Embedder(EmbeddingSettings(batch_size=3))  # several batches, padded differently
    ours = embedder.encode(TEXTS)
    model = embedder._load_model()
    theirs = model.encode(TEXTS, batch_size=3, convert_to_numpy=True, normalize_embeddings=True,
                          show_progress_bar=False)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    assert np.abs(ours - theirs).max() < 1e-6
    assert np.abs(embedder.encode(TEXTS[1:2])[0] - ours[1]).max() < 1e-6  # alone or in a batch: the same text


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnx", marks=pytest.mark.skipif(
    not HAS_ONNX, reason="the onnx extra is not installed (pip install -e '.[onnx]')"))])
def test_threads_encoding_at_once_get_the_serial_vectors(backend: str, tmp_path: Path) -> None:
    settings = EmbeddingSettings(backend=backend, cache_dir=str(tmp_path / "models"))
    batches = [[t] for t in TEXTS] + [TEXTS[:3], TEXTS[3:]]
    serial_embedder = Embedder(settings)
    serial = [serial_embedder.encode(b) for b in batches]
    embedder = Embedder(settings)  # fresh: the threads also race to load the model and make the first calls
    rounds = 4
    got: dict[tuple[int, int], np.ndarray] = {}

    def work(i: int) -> None:
        for r in range(rounds):  # every thread encodes every batch, each starting at another one
            j = (i + r) % len(batches)
            got[(i, j)] = embedder.encode(batches[j])

    n = 2 * len(batches)
    run_threads(n, work)
    assert len(got) == n * rounds
    for (_, j), vectors in got.items():
        assert vectors.shape == serial[j].shape
        assert np.abs(vectors - serial[j]).max() < 1e-6, (backend, j)


def test_a_single_text_embedded_again_is_answered_from_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The k-NN router, the hybrid's shortlist and the retrieval query each embed the same email text."""
    embedder = Embedder(EmbeddingSettings())
    first = embedder.encode([TEXTS[1]])
    calls: list[int] = []
    original = embedder._encode_torch

    def counted(model: object, texts: list[str], batch: int) -> np.ndarray:
        calls.append(len(texts))
        return original(model, texts, batch)

    monkeypatch.setattr(embedder, "_encode_torch", counted)
    again = embedder.encode([TEXTS[1]])
    assert calls == [] and np.array_equal(again, first)
    with pytest.raises(ValueError, match="read-only"):
        again[0, 0] = 1.0  # shared with the next caller: nobody may change it
    batch = embedder.encode(TEXTS[:3])  # in a batch, only the texts not remembered are embedded
    assert calls == [2] and np.array_equal(batch[1], first[0])
    fresh = Embedder(EmbeddingSettings()).encode(TEXTS[:3])
    assert np.allclose(batch, fresh, atol=1e-5)  # the same vectors as embedding the whole batch
    batch[0, 0] = 1.0  # a batch's array is the caller's own
    embedder.encode([TEXTS[2]])
    assert calls == [2, 1]  # batches are not remembered text by text
