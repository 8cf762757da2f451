"""`--engine ray`: the cascade in a Ray Data actor pool, one Pipeline per actor.

The emails become a Ray Dataset; `map_batches` runs them through `CascadeActor`s (each builds its Pipeline once:
index, embedding model and store connection are loaded once per actor, then every batch reuses them) and the driver
receives each email's `Result` as batches finish, in completion order, exactly as the local engine's `on_result`
does. Callers write records the same way for both engines, so the records, the run directory and the metrics are
the same.

Exactly once: Ray retries the batch of a worker that died (the actor is restarted, the batch runs again and only a
finished batch's output is delivered); the driver also drops a position it has seen before. A driver killed
mid-way leaves the records it wrote; `--resume` skips those ids.

Needs the `ray` extra (`pip install 'mailcascade[ray]'`). With no address, a local Ray is started for the command
with the machine's CPUs and stopped at its end.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pickle
import threading
from collections.abc import Callable, Sequence
from typing import Any

from mailcascade.config import Settings
from mailcascade.errors import MailcascadeError
from mailcascade.pipeline import STAGES, Given, Item, Pipeline, parse_failure
from mailcascade.stages.embed_route import EmbeddingRouter
from mailcascade.types import Email, Result

log = logging.getLogger("mailcascade.engines.ray")
PipelineFactory = Callable[[], Pipeline]


class RayEngineError(MailcascadeError):
    """Ray is not installed, or the cluster cannot be reached."""


def check_settings(settings: Settings) -> None:
    """The embedded model is one llama.cpp slot on one machine: Ray workers need a server they can all reach."""
    if settings.uses_local_server:
        raise RayEngineError("--engine ray needs a model server every worker can reach (vLLM or any "
                             "OpenAI-compatible one): set llm.base_url or OPENAI_BASE_URL; the embedded model runs "
                             "one request at a time on this machine")


class CascadeActor:
    """One Pipeline per actor; `__call__` runs a batch (a dict of columns) through it on the actor's event loop."""

    def __init__(self, make_pipeline: PipelineFactory, stages: Sequence[str], concurrency: int | None) -> None:
        self.pipeline = make_pipeline()
        if "retrieve" in stages:
            _ = self.pipeline.index  # the index and embedding model, loaded once per actor
        self.stages = tuple(stages)
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()  # one loop for the actor's life: the model client's pool lives on it
        threading.Thread(target=self.loop.run_forever, name="mailcascade-actor-loop", daemon=True).start()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        items: list[tuple[Email, Given | None]] = [pickle.loads(blob) for blob in batch["item"]]
        givens = {id(email): given for email, given in items}
        emails = [email for email, _ in items]
        run = self.pipeline.arun_many(emails, self.concurrency, stages=self.stages,
                                      given=(lambda e: givens[id(e)]) if any(givens.values()) else None)
        results = asyncio.run_coroutine_threadsafe(run, self.loop).result()
        if self.pipeline.store is not None:
            self.pipeline.store.flush()  # the batch's log and cache rows are committed before it counts as done
        blobs = np.empty(len(results), dtype=object)
        blobs[:] = [pickle.dumps(r) for r in results]
        return {"pos": np.asarray(batch["pos"]), "result": blobs}


def run_on_ray(
    settings: Settings,
    items: Sequence[Item],
    on_result: Callable[[int, Result], None] | None = None,
    *,
    run_id: str = "",
    router: EmbeddingRouter | None = None,
    few_shot_pool: Sequence[tuple[str, str]] | None = None,
    address: str | None = None,
    concurrency: int | None = None,
    stages: Sequence[str] = STAGES,
    given: Callable[[Email], Given | None] | None = None,
    batch_size: int | None = None,
    actors: int | None = None,
) -> list[Result]:
    """`Pipeline.arun_many` on Ray: one Result per item, in input order (parse errors become failures here);
    `on_result(position, result)` on the calling thread as each one finishes. `concurrency`: emails in flight per
    actor (default the settings'); `actors`: the pool size (default the cluster's CPUs). Each actor builds its
    Pipeline with `Pipeline.from_config(settings=settings, run_id=run_id, router=router, few_shot_pool=...)`."""
    check_settings(settings)
    make_pipeline = functools.partial(Pipeline.from_config, settings=settings, run_id=run_id or None, router=router,
                                      few_shot_pool=few_shot_pool)
    results: list[Result | None] = [None] * len(items)

    def done(position: int, result: Result) -> None:
        results[position] = result
        if on_result is not None:
            on_result(position, result)

    emails = [(n, item) for n, item in enumerate(items) if isinstance(item, Email)]
    for n, item in enumerate(items):
        if not isinstance(item, Email):
            done(n, parse_failure(item))
    if emails:
        _run_emails(make_pipeline, emails, done, address=address, concurrency=concurrency, stages=stages,
                    given=given, batch_size=batch_size, actors=actors)
    return [r for r in results if r is not None]


def _run_emails(
    make_pipeline: PipelineFactory, emails: Sequence[tuple[int, Email]], done: Callable[[int, Result], None], *,
    address: str | None, concurrency: int | None, stages: Sequence[str],
    given: Callable[[Email], Given | None] | None, batch_size: int | None, actors: int | None,
) -> None:
    ray = _ray()
    started = _connect(ray, address)
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        size = batch_size or max(8, 4 * (concurrency or 4))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        pool = max(1, min(actors or cpus, -(-len(emails) // size)))
        log.info("ray: %d emails in batches of %d on %d actors", len(emails), size, pool)
        rows = [{"pos": n, "item": pickle.dumps((email, given(email) if given else None))} for n, email in emails]
        out = ray.data.from_items(rows).map_batches(
            CascadeActor, fn_constructor_kwargs={"make_pipeline": make_pipeline, "stages": tuple(stages),
                                                 "concurrency": concurrency},
            batch_size=size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=1,
        )  # Ray Data's actor defaults (max_restarts=-1, max_task_retries=-1): a dead worker's batch runs again
        seen: set[int] = set()
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            for pos, blob in zip(batch["pos"], batch["result"], strict=True):
                position = int(pos)
                if position not in seen:  # a batch delivered twice counts once
                    seen.add(position)
                    done(position, pickle.loads(blob))
        missing = len(emails) - len(seen)
        if missing:
            raise RayEngineError(f"the Ray job ended with {missing} emails unanswered; run again with --resume")
    finally:
        if started:
            ray.shutdown()


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayEngineError("--engine ray needs Ray: pip install 'mailcascade[ray]'") from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at `address`, or start a local one; True when this call started it."""
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=True, configure_logging=False)
            return True
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)
        return True
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise RayEngineError(f"cannot start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc}: "
                             "check --ray-address (e.g. ray://HOST:10001 or HOST:6379)") from None
