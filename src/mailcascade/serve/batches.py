"""Batches: queued durably in the store, processed by one worker, each email claimed and completed in a transaction.

An email is claimed (queued -> running) when the worker takes it and completed (running -> done, with its result)
when it finishes. A server killed mid-batch leaves its claimed emails `running`; the next start puts them back in
the queue (`Store.requeue_claimed`), so every email ends with exactly one result. The worker claims only as many
emails as it has free slots: on shutdown it stops claiming, finishes what it holds, and leaves the rest queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from mailcascade.email_parse import parse_json_object
from mailcascade.pipeline import Pipeline, failure
from mailcascade.record import record_line
from mailcascade.store import Store, StoreError
from mailcascade.types import Email, Result

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.5  # how often an idle worker looks for work it was not told about


class BatchWorker:
    def __init__(self, pipeline: Pipeline, store: Store, concurrency: int,
                 on_result: Callable[[Email, Result], object]) -> None:
        self._pipeline = pipeline
        self._store = store
        self._concurrency = concurrency
        self._on_result = on_result
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(self) -> None:
        requeued = self._store.requeue_claimed()
        if requeued:
            log.warning("%d batch emails were claimed by a server that stopped before finishing them: queued again",
                        requeued)
        self._main = asyncio.create_task(self._loop(), name="batch-worker")

    def wake(self) -> None:
        self._wake.set()

    def drain(self) -> None:
        """Claim nothing more (safe to call from a signal handler); `stop` then waits for what is claimed."""
        self._stopping = True

    async def stop(self) -> None:
        """Stop claiming; wait for the emails already claimed to finish (the rest stay queued for the next start)."""
        self._stopping = True
        self._wake.set()
        if self._main is not None:
            await self._main

    async def _loop(self) -> None:
        while not self._stopping:
            free = self._concurrency - len(self._tasks)
            rows: list[dict[str, Any]] = []
            if free > 0:
                try:
                    rows = await asyncio.to_thread(self._store.claim_batch_emails, free)
                except Exception as exc:  # a locked or damaged store: try again later, never die
                    log.warning("cannot claim batch emails from the store (trying again): %s", exc)
            for row in rows:
                task = asyncio.create_task(self._one(row))
                self._tasks.add(task)
                task.add_done_callback(self._finished)
            if len(self._tasks) >= self._concurrency:
                await self._wait(None)  # until an email finishes (or stop)
            elif not rows:
                await self._wait(IDLE_POLL_S)  # until a batch arrives (or stop)
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _wait(self, timeout: float | None) -> None:
        """The loop recomputes its state after every wake-up, so clearing after waking loses nothing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _one(self, row: dict[str, Any]) -> None:
        batch_id, position = str(row["batch_id"]), int(row["position"])
        source = f"batch:{batch_id}:{position}"
        try:
            email = parse_json_object(json.loads(row["email"]), source)
            stages = tuple(s for s in str(row["stages"]).split(",") if s)
            result = await self._pipeline.arun(email, stages=stages)
        except Exception as exc:  # an email that cannot be read still ends with a record
            email = Email(id=str(row["email_id"]), subject="", body="", source=source)
            result = failure(email.id, source, exc)
        keep = self._pipeline.settings.store.store_email_bodies
        try:
            await asyncio.to_thread(self._store.complete_batch_email, batch_id, position, str(row["claim"]),
                                    record_line(result), keep_email=keep)
        except (StoreError, OSError, RuntimeError) as exc:
            log.warning("batch %s email %d: result not stored (it runs again after a restart): %s",
                        batch_id, position, exc)
            return
        self._on_result(email, result)  # counts it and queues it for the store: no wait
