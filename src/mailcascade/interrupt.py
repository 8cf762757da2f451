"""Long work that SIGINT and SIGTERM can stop at once.

Python runs signal handlers in the main thread only, between bytecodes: a main thread inside a long C call (a
torch forward pass, a FAISS build) or waiting for worker threads (asyncio's executor at shutdown) cannot be
interrupted until that returns. `run_in_worker` runs the work in a daemon thread and waits for it in short steps,
so the main thread is always ready to take the signal, write what is finished and exit; the command line then
exits without waiting for the abandoned worker (see `mailcascade.cli.entry`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `with` block (the local model server above all) cleans up."""


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def run_in_worker(fn: Callable[[], T]) -> T:
    """fn() in a daemon thread; its result or exception here. KeyboardInterrupt here does not wait for fn."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="mailcascade-work", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def ignore_signals() -> None:
    """After the first interrupt: let the clean-up finish (a second Ctrl-C would leave a half-written file)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
