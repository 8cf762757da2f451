"""`mailcascade router train`: fine-tune the sentence encoder on labelled examples, SetFit-style, and fit a head.

1. Pairs from the labels: for each example and each of `pairs_per_example` rounds, one pair with a random example
   of the same label (target cosine 1) and one with a random example of another label (target 0).
2. The encoder (the configured embedding model, all-MiniLM-L6-v2 by default) is fine-tuned on the pairs with
   sentence-transformers' `CosineSimilarityLoss`, batches built by the model's own `smart_batching_collate`,
   AdamW, a few epochs; torch runs on `threads` threads (set for the training, restored after).
3. A logistic-regression head (`mailcascade.router.logreg`) is fitted on the fine-tuned embeddings.
4. The out-of-scope threshold is chosen by label-held-out cross-validation (`mailcascade.router.calibrate`): every
   fold fine-tunes its own encoder on its training part with the same recipe, so the estimate is honest. Both the
   head's probability and the nearest example's similarity are tried as the score; the better one is kept.

Everything is saved under DIR with a manifest (see `mailcascade.router.model`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mailcascade.catalog import Embedder
from mailcascade.errors import MailcascadeError
from mailcascade.router.calibrate import Calibration, Fold, Scored, label_folds, summarise
from mailcascade.router.model import FORMAT, MANIFEST, Head, examples_hash, scores

Tick = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 1  # 0: no fine-tuning, only the head (and the calibration) on the encoder as it is
    pairs_per_example: int = 2  # rounds of (one positive, one negative) pair per example
    batch_size: int = 16
    learning_rate: float = 2e-5
    max_seq_length: int = 128  # tokens per text the encoder sees while training and routing
    folds: int = 3  # cross-validation folds for the out-of-scope threshold (each fine-tunes an encoder); 0: none
    seed: int = 0
    threads: int = 1  # torch CPU threads during training (1: see README, faster on a busy machine)


def make_pairs(labels: Sequence[str], rounds: int, seed: int) -> list[tuple[int, int, float]]:
    """(i, j, target) pairs: per example and round one same-label partner (1.0) and one other-label partner (0.0).
    A label with a single example gets no positive pair; with a single label there are no negatives."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    everyone = list(range(len(labels)))
    pairs: list[tuple[int, int, float]] = []
    for _ in range(rounds):
        for i, label in enumerate(labels):
            same = by_label[label]
            if len(same) > 1:
                j = i
                while j == i:
                    j = rng.choice(same)
                pairs.append((i, j, 1.0))
            if len(by_label) > 1:
                j = rng.choice(everyone)
                while labels[j] == label:
                    j = rng.choice(everyone)
                pairs.append((i, j, 0.0))
    rng.shuffle(pairs)
    return pairs


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def steps_per_training(labels: Sequence[str], options: TrainOptions) -> int:
    """Optimizer steps of one fine-tuning on examples with these labels (the progress bar's share of it)."""
    pairs = len(make_pairs(labels, options.pairs_per_example, options.seed))
    return options.epochs * -(-pairs // options.batch_size)


def load_encoder(location: str, max_seq_length: int) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from mailcascade.catalog.embed import quiet_loading

    with quiet_loading():
        model = SentenceTransformer(location, device="cpu", local_files_only=True)
    model.max_seq_length = max_seq_length
    return model


def fine_tune(location: str, texts: Sequence[str], labels: Sequence[str], options: TrainOptions,
              tick: Callable[[], None]) -> Any:
    """A fresh copy of the encoder at `location`, fine-tuned on the pairs of these examples."""
    import torch
    from sentence_transformers import InputExample
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    from torch.utils.data import DataLoader

    torch.manual_seed(options.seed)
    model = load_encoder(location, options.max_seq_length)
    if options.epochs == 0:  # head only: the encoder as it is
        model.eval()
        return model
    pairs = make_pairs(labels, options.pairs_per_example, options.seed)
    data = [InputExample(texts=[texts[i], texts[j]], label=target) for i, j, target in pairs]
    loader = DataLoader(data, batch_size=options.batch_size, shuffle=True,  # type: ignore[arg-type,var-annotated]
                        generator=torch.Generator().manual_seed(options.seed),
                        collate_fn=model.smart_batching_collate)
    loss = CosineSimilarityLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=0.01)
    model.train()
    for _ in range(options.epochs):
        for features, targets in loader:
            value = loss(features, targets.float())
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            tick()
    model.eval()
    return model


def encode(model: Any, texts: Sequence[str]) -> np.ndarray:
    if not texts:
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return np.zeros((0, dim()), dtype=np.float32)
    out: np.ndarray = model.encode(list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                                   show_progress_bar=False).astype(np.float32)
    return out


def cross_validate(location: str, texts: Sequence[str], labels: Sequence[str], negatives: Sequence[str],
                   options: TrainOptions, tick: Callable[[], None]) -> Calibration:
    """The out-of-scope calibration from label-held-out folds, each with its own fine-tuned encoder and head."""
    plan = label_folds(labels, options.folds, options.seed)
    kinds = ("probability", "similarity")
    items: dict[str, list[Scored]] = {k: [] for k in kinds}
    for fold in plan:
        _score_fold(fold, location, texts, labels, negatives, options, tick, items)
    results = [summarise(items[k], folds=len(plan), negatives=len(negatives), score=k) for k in kinds]
    return max(results, key=lambda c: (c.cv_accuracy or 0.0, c.score == "similarity"))


@dataclass(frozen=True)
class FoldEncoding:
    """One calibration fold's router, fitted on the fold's training part, and its test items encoded by it."""

    head: Head
    train_vectors: np.ndarray
    tests: list[int]  # example positions: the in-scope test examples, then the held-out labels' examples
    held: set[int]  # the positions that play out of scope
    vectors: np.ndarray  # the tests' vectors, in that order
    model: Any  # the fold's fine-tuned encoder


def encode_fold(fold: Fold, location: str, texts: Sequence[str], labels: Sequence[str], options: TrainOptions,
                tick: Callable[[], None]) -> FoldEncoding:
    """Fine-tune an encoder on `fold.train` (the `router train` recipe), fit its head and encode the fold's tests."""
    train = list(fold.train)
    model = fine_tune(location, [texts[i] for i in train], [labels[i] for i in train], options, tick)
    train_vectors = encode(model, [texts[i] for i in train])
    head = Head.fit(train_vectors, [labels[i] for i in train])
    tests = [*fold.test, *fold.held_out]
    return FoldEncoding(head, train_vectors, tests, set(fold.held_out), encode(model, [texts[i] for i in tests]),
                        model)


def _score_fold(fold: Fold, location: str, texts: Sequence[str], labels: Sequence[str], negatives: Sequence[str],
                options: TrainOptions, tick: Callable[[], None], items: dict[str, list[Scored]]) -> None:
    enc = encode_fold(fold, location, texts, labels, options, tick)
    negative_vectors = encode(enc.model, negatives)
    for kind in items:
        proba, score = scores(enc.head, enc.vectors, enc.train_vectors, kind)
        for i, row, s in zip(enc.tests, proba, score, strict=True):
            right = enc.head.classes[int(row.argmax())] == labels[i] and i not in enc.held
            items[kind].append(Scored(float(s), right, i in enc.held))
        if len(negatives):
            _, neg = scores(enc.head, negative_vectors, enc.train_vectors, kind)
            items[kind].extend(Scored(float(s), False, True) for s in neg)


def train(
    texts: Sequence[str], labels: Sequence[str], out: str | Path, embedder: Embedder, *,
    negatives: Sequence[str] = (), options: TrainOptions = TrainOptions(), progress: Tick | None = None,
) -> dict[str, Any]:
    """Train and save a router under `out` (replaced if it holds an earlier router); returns the manifest."""
    if len(texts) != len(labels) or not texts:
        raise MailcascadeError("router train needs at least one example with a department")
    if len(set(labels)) < 2:
        raise MailcascadeError("router train needs examples of at least two departments")
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()) and not (folder / MANIFEST).is_file():
        raise MailcascadeError(f"--out {folder} is a folder that holds something other than a trained router; "
                               "choose an empty or new folder")
    location = embedder.model_location()
    per_run = steps_per_training(labels, options)
    plan = label_folds(labels, options.folds, options.seed) if options.folds else []
    n_folds = len(plan)
    total = per_run + sum(steps_per_training([labels[i] for i in f.train], options) for f in plan)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    started = time.perf_counter()
    with torch_threads(options.threads):
        calibration = (cross_validate(location, texts, labels, negatives, options, tick) if n_folds
                       else Calibration(threshold=None, source="off"))
        model = fine_tune(location, texts, labels, options, tick)
        vectors = encode(model, texts)
    head = Head.fit(vectors, labels)
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "encoder").exists():
        shutil.rmtree(folder / "encoder")
    model.save(str(folder / "encoder"))
    head.save(folder / "head.npz")
    np.savez(folder / "examples.npz", texts=np.array(list(texts)), labels=np.array(list(labels)), vectors=vectors)
    manifest = {
        "format": FORMAT,
        "base_model": embedder.name,
        "examples_sha256": examples_hash(texts, labels),
        "n_examples": len(texts),
        "n_negatives": len(negatives),
        "labels": sorted(set(labels)),
        "training": {**asdict(options), "steps": per_run,
                     "seconds": round(seconds, 1)},
        "calibration": calibration.to_dict(),
        "cv": {"accuracy": calibration.cv_accuracy, "in_scope_accuracy": calibration.cv_in_scope_accuracy,
               "out_of_scope_recall": calibration.cv_out_of_scope_recall, "folds": calibration.folds,
               "what": "label-level accuracy on held-out examples and held-out labels (pseudo out of scope); "
                       "the threshold was chosen on the same folds, so it is slightly optimistic"},
        "created": time.time(),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
