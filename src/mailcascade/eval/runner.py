"""Run the cascade over an eval set and write a run directory.

    RUN/run.json       what ran: eval set, options, settings, prompt hashes and texts, selected case ids
    RUN/cases.jsonl    one record per case, appended (and fsynced) as each finishes; resumable
    RUN/metrics.json   compute_metrics(cases.jsonl)
    RUN/report.html    self-contained report

Re-runs are cheap: model answers come from the persistent LLM cache (keyed by model, parameters and rendered
messages), so after editing only the draft prompt, routing is answered from the cache and only drafts are
re-called; embeddings of eval texts are cached on disk too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mailcascade.catalog import Embedder, EmbedderLike, Passage
from mailcascade.config import Settings, load_settings
from mailcascade.errors import EvalError, MailcascadeError
from mailcascade.eval.baselines import Baselines, baseline_predictions
from mailcascade.eval.cases import EvalCase
from mailcascade.eval.evalset import EvalSet, check_departments
from mailcascade.eval.records import case_record, compute_metrics
from mailcascade.eval.report import write_report
from mailcascade.jsonl import JsonlContents, cut_torn_line, read_jsonl_records
from mailcascade.llm.base import LLM
from mailcascade.llm.cache import CachedLLM
from mailcascade.pipeline import STAGES, Given, Pipeline
from mailcascade.progress import PhaseBar, Progress
from mailcascade.prompts import Prompt
from mailcascade.stages.embed_route import EmbeddingRouter, email_text
from mailcascade.types import Hit

ENCODE_CHUNK = 512  # texts per encode call, so a long embedding phase shows progress


@dataclass(frozen=True)
class EvalOptions:
    stages: tuple[str, ...] = STAGES
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    concurrency: int | None = None
    resume: bool = False
    retry_errors: bool = False  # with resume: run again the cases that got no answer from the model (status error)
    tuned_on: str = ""  # what the settings were tuned on, if not the train split ("eval": chosen on this eval set)
    progress: bool = True
    gold: tuple[str, ...] = ()  # upstream outputs to take from the labels: "department", "hits" (ceiling runs)
    data_dir: str | None = None  # where the eval set's data was read from (recorded so diagnose can reload it)
    engine: str = "local"  # "ray": the cases run in a Ray Data actor pool (engines/ray_engine.py), same records
    ray_address: str | None = None  # with engine "ray": an existing cluster; None starts a local one


def select_cases(cases: Sequence[EvalCase], options: EvalOptions) -> list[EvalCase]:
    """--sample N --seed S picks N cases at random (stable for a seed), then --limit keeps the first N."""
    chosen = list(cases)
    if options.sample is not None and options.sample < len(chosen):
        picked = sorted(random.Random(options.seed).sample(range(len(chosen)), options.sample))
        chosen = [chosen[i] for i in picked]
    if options.limit is not None:
        chosen = chosen[: options.limit]
    return chosen


def eval_settings(eval_set: EvalSet, settings: Settings | None, cache_dir: Path) -> Settings:
    """The settings for this eval set: its own config (unless given), and its own catalogue if it has one."""
    if settings is None:
        settings = load_settings(eval_set.config) if eval_set.config else load_settings(None)
    if eval_set.passages is not None:
        folder = cache_dir / "evalsets" / _slug(eval_set.name)
        path = folder / "passages.jsonl"
        text = "".join(json.dumps(dataclasses.asdict(p), ensure_ascii=False) + "\n" for p in eval_set.passages)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        catalog = dataclasses.replace(settings.catalog, path=str(path), index_dir=str(folder / "index"))
        settings = settings.replace(catalog=catalog)
    elif eval_set.catalog is not None:
        folder = cache_dir / "evalsets" / _slug(eval_set.name)
        catalog = dataclasses.replace(settings.catalog, path=str(eval_set.catalog), index_dir=str(folder / "index"))
        settings = settings.replace(catalog=catalog)
    return settings


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "evalset"


class EmbeddingCache:
    """Embeddings of eval texts, cached on disk by model and text, so re-runs do not re-embed."""

    def __init__(self, embedder: EmbedderLike, folder: Path) -> None:
        self.embedder = embedder
        self.folder = folder

    @property
    def name(self) -> str:
        return self.embedder.name

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        key = hashlib.sha256(json.dumps([self.embedder.name, list(texts)]).encode()).hexdigest()[:24]
        path = self.folder / f"{key}.npy"
        if path.is_file():
            cached: np.ndarray = np.load(path)
            return cached
        with PhaseBar("embedding eval texts") as bar:
            parts = []
            for start in range(0, len(texts), ENCODE_CHUNK):
                parts.append(self.embedder.encode(texts[start:start + ENCODE_CHUNK]))
                bar(min(start + ENCODE_CHUNK, len(texts)), len(texts))
        vectors = np.vstack(parts) if parts else self.embedder.encode(texts)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        os.replace(tmp, path)
        return vectors


def train_router(eval_set: EvalSet, settings: Settings, vectors: EmbeddingCache) -> EmbeddingRouter | None:
    """With `[route] strategy = "embedding"` (or "hybrid" without a model_dir) and no examples_path, the k-NN router
    learns from the train split, its out-of-scope threshold calibrated on the train split only."""
    route = settings.route
    knn = route.strategy == "embedding" or (route.strategy == "hybrid" and not route.model_dir)
    if not knn or route.examples_path:
        return None
    train = [c for c in eval_set.train if c.expected.department is not None]
    if not train:
        raise EvalError(f"{eval_set.name}: the embedding router needs [route] examples_path or a train split")
    texts = [email_text(c.email) for c in train]
    return EmbeddingRouter.calibrated(texts, [str(c.expected.department) for c in train], vectors.embedder,
                                      settings, vectors=vectors.encode(texts))


def gold_hits(case: EvalCase, passages: Sequence[Passage], level: str) -> tuple[Hit, ...]:
    """The relevant passages as hits, best grade first (for ceiling runs that feed gold retrieval to drafting)."""
    by_passage = {p.passage_id: p for p in passages}
    first_of_product: dict[str, Passage] = {}
    for passage in passages:
        first_of_product.setdefault(passage.product_id, passage)
    hits = []
    for ident, grade in sorted(case.expected.relevant.items(), key=lambda kv: -kv[1]):
        p = by_passage.get(ident) if level == "passage" else first_of_product.get(ident)
        if p is not None:
            hits.append(Hit(product_id=p.product_id, passage_id=p.passage_id, score=float(grade), text=p.text))
    return tuple(hits)


def read_records(path: Path) -> JsonlContents:
    """The complete records of a cases.jsonl (nothing on disk changes); a damaged line is an EvalError."""
    try:
        return read_jsonl_records(path, fix="delete that line to re-run its case with --resume, or use another --out")
    except MailcascadeError as exc:
        raise EvalError(str(exc)) from None


def run_eval(
    eval_set: EvalSet, out_dir: str | Path, options: EvalOptions = EvalOptions(), *,
    settings: Settings | None = None, llm: LLM | None = None, embedder: EmbedderLike | None = None,
    cache_dir: str | Path = ".mailcascade",
) -> Path:
    """Run (or resume) an eval and write the run directory; returns its path."""
    out = Path(out_dir)
    cache = Path(cache_dir)
    # "auto" on the embedded model: the k-NN router learns from the train split when there is one
    settings = eval_settings(eval_set, settings, cache).resolved(train_split=bool(eval_set.train))
    labels = list(settings.department_names)
    check_departments(eval_set, labels)
    level = "passage" if eval_set.passages is not None else "product"
    cases = select_cases(eval_set.cases, options)
    if not cases:
        raise EvalError(f"{eval_set.name}: no cases selected")
    records_path = out / "cases.jsonl"
    found = read_records(records_path)
    done = {r["id"]: r for r in found.records}
    if options.retry_errors and not options.resume:
        raise EvalError("--retry-errors needs --resume --out RUN (the run whose infrastructure errors to re-run)")
    errored = {i for i, r in done.items() if options.retry_errors and _infrastructure_error(r)}
    if (done or found.torn) and not options.resume:
        raise EvalError(f"{out} already holds {len(done)} case records; use --resume to continue it, "
                        "or another --out")
    out.mkdir(parents=True, exist_ok=True)
    embedder = embedder or Embedder(settings.embedding)
    vectors = EmbeddingCache(embedder, cache / "embeddings")
    router = train_router(eval_set, settings, vectors)
    pool = None
    if settings.route.few_shot and not settings.route.examples_path:
        pool = [(email_text(c.email), str(c.expected.department)) for c in eval_set.train
                if c.expected.department is not None]
    pipeline = Pipeline.from_config(settings=settings, llm=llm, embedder=embedder, router=router, few_shot_pool=pool,
                                    run_id=f"eval:{out.name}:{int(time.time())}")
    run_info = _run_info(eval_set, options, settings, pipeline.prompts, cases, labels, level, out, resume=bool(done))
    cut_torn_line(records_path, found)  # only now that the run goes on
    if errored:
        _write_jsonl(records_path, [r for i, r in done.items() if i not in errored])
        done = {i: r for i, r in done.items() if i not in errored}
    todo = [c for c in cases if c.id not in done]
    passages = pipeline.index.passages if "hits" in options.gold else ()  # type: ignore[attr-defined]
    by_id = {c.id: c for c in todo}
    passage_products = {p.passage_id: p.product_id for p in eval_set.passages or ()}
    started = time.time()
    with records_path.open("a", encoding="utf-8") as sink, contextlib.closing(pipeline), \
            Progress(len(todo), "cases", enabled=options.progress) as progress:

        def given(email: Any) -> Given:
            case = by_id[email.id]
            return Given(department=case.expected.department if "department" in options.gold else None,
                         hits=gold_hits(case, passages, level) if "hits" in options.gold else None)

        def done_one(position: int, result: Any) -> None:
            case = todo[position]
            record = case_record(case, result, level=level, labels=labels, passage_products=passage_products)
            # the user's own labelled data: kept in the run so the report can show each case's email
            record["email"] = {"subject": case.email.subject, "body": case.email.body, "from": case.email.sender}
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()  # in the OS's hands: a killed process loses nothing that was flushed
            progress.advance(failed=result.status == "failed")

        emails, gold = [c.email for c in todo], given if options.gold else None
        if options.engine == "ray":
            from mailcascade.engines.ray_engine import run_on_ray

            if llm is not None:
                raise EvalError("engine ray builds each worker's model client from the settings: pass no llm")
            if "retrieve" in options.stages:
                _ = pipeline.index  # built here once if missing or stale, not by each worker at the same time
            run_on_ray(settings, emails, done_one, run_id=pipeline.run_id, router=router, few_shot_pool=pool,
                       address=options.ray_address, concurrency=options.concurrency, stages=options.stages,
                       given=gold)
        else:
            pipeline.run_many(emails, options.concurrency, done_one, stages=options.stages, given=gold)
    # after the run, written into the records (as the embedding similarities are): the emails' vectors are then
    # the retrieval queries' own, remembered by the embedder, not embedded again
    baselines = baseline_predictions(eval_set, cases, vectors, settings.route.neighbours)
    records = read_records(records_path).records
    if _fill_baselines(records, baselines) | _fill_embed_sim(records, cases, vectors):
        _write_jsonl(records_path, records)
    order = {c.id: i for i, c in enumerate(cases)}
    records.sort(key=lambda r: order.get(r["id"], len(order)))
    metrics = compute_metrics(records, labels=labels, level=level, seed=options.seed,
                              prices=(settings.llm.usd_per_mtok_in, settings.llm.usd_per_mtok_out))
    stats = pipeline.llm.stats if isinstance(pipeline.llm, CachedLLM) else None
    run_info.update({
        "status": "done", "finished": time.time(), "seconds": round(time.time() - started, 3),
        "baseline_source": baselines.source,
        "router": pipeline.router.describe() if pipeline.router is not None else None,
        "cache": {"hits": stats.hits, "misses": stats.misses} if stats else None,
    })
    if run_info["router"] is not None:
        metrics["router"] = run_info["router"]  # its out-of-scope calibration, for the summary and the report
    _write_json(out / "run.json", run_info)
    _write_json(out / "metrics.json", metrics)
    pipeline.finish_run({"eval": str(out), "cases": len(records), "cache": run_info["cache"]})
    write_report(out)
    return out


def _fill_baselines(records: list[dict[str, Any]], baselines: Baselines) -> bool:
    """Set each record's baseline labels and confidences where they are missing; True if any was."""
    changed = False
    for record in records:
        if not record.get("baselines") and baselines.labels.get(record["id"]):
            record["baselines"] = baselines.labels[record["id"]]
            record["baseline_confidence"] = baselines.confidence[record["id"]]
            changed = True
    return changed


def _fill_embed_sim(records: list[dict[str, Any]], cases: Sequence[EvalCase], vectors: EmbeddingCache) -> bool:
    """Set each record's embedding similarity of draft and reference reply where it is missing; True if any was.

    Done once after the model calls, not per case on the event loop (CPU work there stalls every request in
    flight): the drafts are encoded in one batch, the reference replies of the whole selection in another that is
    cached on disk, so a re-run does not embed them again.
    """
    todo = [r for r in records if r.get("embed_sim") is None and (r.get("draft") or {}).get("reply")
            and (r.get("expected") or {}).get("reference_reply")]
    if not todo:
        return False
    references = sorted({c.expected.reference_reply for c in cases if c.expected.reference_reply})
    reference_rows = dict(zip(references, vectors.encode(references), strict=True))
    drafts = vectors.embedder.encode([r["draft"]["reply"] for r in todo])
    for record, draft in zip(todo, drafts, strict=True):
        reference = reference_rows.get(record["expected"]["reference_reply"])
        if reference is None:  # a record from another selection of cases
            reference = vectors.embedder.encode([record["expected"]["reference_reply"]])[0]
        record["embed_sim"] = round(float(np.dot(draft, reference)), 6)
    return True


def _run_info(
    eval_set: EvalSet, options: EvalOptions, settings: Settings, prompts: Mapping[str, Prompt],
    cases: Sequence[EvalCase], labels: Sequence[str], level: str, out: Path, *, resume: bool,
) -> dict[str, Any]:
    path = out / "run.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if resume and path.is_file() else None
    ids = [c.id for c in cases]
    if previous is not None and previous.get("case_ids") != ids:
        raise EvalError(f"{out}: --resume with another selection of cases than the run started with "
                        "(same --limit/--sample/--seed needed)")
    info: dict[str, Any] = {
        "name": eval_set.name,
        "eval_set": {"name": eval_set.name, "definition": str(eval_set.definition or ""),
                     "source": str(eval_set.source or ""), "adapter": eval_set.adapter,
                     "level": eval_set.level, "n_cases": len(eval_set.cases), "n_train": len(eval_set.train),
                     "tuned_on": eval_set.tuned_on},
        "created": previous["created"] if previous else time.time(),
        "resumed": (previous.get("resumed", 0) + 1) if previous else 0,
        "status": "running",
        "options": dataclasses.asdict(options),
        "settings": settings.to_dict(),
        "prompts": {name: {"hash": p.hash, "version": p.version, "path": p.path, "text": p.text}
                    for name, p in prompts.items()},
        "labels": list(labels),
        "relevance_level": level,
        "case_ids": ids,
    }
    _write_json(path, info)
    return info


def _infrastructure_error(record: Mapping[str, Any]) -> bool:
    return any(s.get("status") == "error" for s in record.get("stages") or [])


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
