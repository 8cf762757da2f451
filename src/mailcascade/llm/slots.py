"""A limit on requests in flight to one model server, shared by threads and asyncio tasks (on any loop).

A server that runs one request at a time (the embedded llama.cpp server) queues the rest inside itself, where the
client's timeout keeps running: a queued request times out and is retried while the server still works on it.
`Slots` keeps the queue on the client side instead, so a request is only sent when the server has a free slot, and
the wait is measured (`queue_ms`) apart from the server's own time. Waiters are served first come, first served.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque


class Slots:
    """At most `n` holders at once. `acquire`/`aacquire` return the seconds waited; `release` frees one slot."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"slots must be at least 1, got {n}")
        self.n = n
        self._lock = threading.Lock()
        self._free = n
        self._waiters: deque[threading.Event | tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    def acquire(self) -> float:
        start = time.perf_counter()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return 0.0
            event = threading.Event()
            self._waiters.append(event)
        event.wait()  # release() hands its slot over to us
        return time.perf_counter() - start

    async def aacquire(self) -> float:
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return 0.0
            future: asyncio.Future[None] = loop.create_future()
            waiter = (loop, future)
            self._waiters.append(waiter)
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                queued = waiter in self._waiters
                if queued:
                    self._waiters.remove(waiter)
            if not queued and future.done() and not future.cancelled():
                self.release()  # the slot was handed over just before the cancellation: pass it on
            # (handed over but cancelled before delivery: _deliver passes it on)
            raise
        return time.perf_counter() - start

    def release(self) -> None:
        with self._lock:
            if not self._waiters:
                self._free += 1
                return
            waiter = self._waiters.popleft()
        if isinstance(waiter, threading.Event):
            waiter.set()
        else:
            loop, future = waiter
            try:
                loop.call_soon_threadsafe(self._deliver, future)
            except RuntimeError:  # that loop is closed: its waiter is gone, pass the slot on
                self.release()

    def _deliver(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            self.release()
        else:
            future.set_result(None)

    @property
    def free(self) -> int:
        with self._lock:
            return self._free
