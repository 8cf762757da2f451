"""[embedding] backend = "onnx": the shipped model exported once (int8) into the cache directory, the same
embeddings as torch up to quantisation, and a second load that reuses the export."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mailcascade.catalog import Embedder, onnx_backend
from mailcascade.config import EmbeddingSettings
from mailcascade.errors import CatalogError

HAS_ONNX = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed (pip install -e '.[onnx]')")
TEXTS = ["Where is my order #1234? It was due on Monday.", "The kettle arrived with a cracked lid.",
         "Do these hiking boots come in size 44?", "I was charged twice for one jacket.", ""]


def test_the_onnx_backend_is_another_model_name() -> None:
    """An index built from torch vectors is stale for onnx ones (and the retrieval cache keys differ)."""
    torch_name = Embedder(EmbeddingSettings()).name
    onnx_name = Embedder(EmbeddingSettings(backend="onnx")).name
    assert onnx_name != torch_name and onnx_name.startswith(torch_name)


def test_a_model_the_backend_cannot_run_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text(json.dumps([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    with pytest.raises(CatalogError, match="Transformer -> Pooling -> Dense"):
        onnx_backend.ensure_export(tmp_path / "cache", "x", tmp_path)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.mark.slow
@needs_onnx
def test_onnx_embeddings_match_torch(cache_dir: Path) -> None:
    onnx = Embedder(EmbeddingSettings(backend="onnx", cache_dir=str(cache_dir))).encode(TEXTS)
    torch = Embedder(EmbeddingSettings()).encode(TEXTS)
    assert onnx.shape == torch.shape == (len(TEXTS), 384) and onnx.dtype == np.float32
    assert np.allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)
    cosine = (onnx * torch).sum(axis=1)
    assert cosine.min() > 0.97, cosine  # int8 weights: close, not equal
    # the nearest text is the same text: quantisation keeps the ranking
    assert ((onnx @ torch.T).argmax(axis=1) == np.arange(len(TEXTS))).all()
    single = np.vstack([Embedder(EmbeddingSettings(backend="onnx", cache_dir=str(cache_dir))).encode([t])
                        for t in TEXTS[:2]])
    # every text runs alone (dynamic quantisation would otherwise scale it with its batch-mates): one vector a text
    assert np.array_equal(single, onnx[:2])


@pytest.mark.slow
@needs_onnx
def test_the_export_is_cached(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Embedder(EmbeddingSettings(backend="onnx", cache_dir=str(cache_dir)))
    first.encode(["warm"])
    exports = [p for p in cache_dir.iterdir() if p.name.startswith("onnx-")]
    assert len(exports) == 1 and (exports[0] / onnx_backend.MODEL_FILE).is_file()
    before = (exports[0] / onnx_backend.MODEL_FILE).stat().st_mtime_ns

    def no_export(source: Path, out: Path) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_backend, "_export", no_export)
    again = Embedder(EmbeddingSettings(backend="onnx", cache_dir=str(cache_dir))).encode(TEXTS[:2])
    assert again.shape == (2, 384)
    assert (exports[0] / onnx_backend.MODEL_FILE).stat().st_mtime_ns == before
    assert [p.name for p in cache_dir.iterdir() if not p.name.startswith(".")] == [exports[0].name]
