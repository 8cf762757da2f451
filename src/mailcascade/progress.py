"""A progress bar with ETA on stderr (tqdm), silent when disabled or not on a terminal."""

from __future__ import annotations

import sys
import threading

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
