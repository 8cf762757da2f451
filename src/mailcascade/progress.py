"""A progress bar with ETA on stderr (tqdm), silent when disabled or not on a terminal."""

from __future__ import annotations

import sys
import threading
from typing import Any

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, unit: str, *, enabled: bool = True) -> None:
        self._bar = tqdm(total=total, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True,
                         disable=not enabled or not sys.stderr.isatty())
        self._lock = threading.Lock()
        self._failed = 0

    def advance(self, *, failed: bool = False) -> None:
        with self._lock:
            self._failed += int(failed)
            self._bar.set_postfix(failed=self._failed, refresh=False)
            self._bar.update(1)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


class PhaseBar:
    """A `(done, total)` callback that shows one long phase (an index build, embedding texts) as a bar on stderr.

    The bar appears on the first call, so a phase that turns out to have nothing to do shows nothing; like
    `Progress`, it is silent when disabled or when stderr is not a terminal.
    """

    def __init__(self, description: str, unit: str = "texts", *, enabled: bool = True) -> None:
        self._description = description
        self._unit = unit
        self._enabled = enabled and sys.stderr.isatty()
        self._bar: tqdm[Any] | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self._description, unit=f" {self._unit}", file=sys.stderr,
                             dynamic_ncols=True)
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def __enter__(self) -> PhaseBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
