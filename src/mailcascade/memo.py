"""A small bounded map, safe across threads: the least recently used entry goes first when it is full."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class Memo:
    """Values by text key, at most `size` of them; `get` of a missing key is None."""

    def __init__(self, size: int) -> None:
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            found = self._data.get(key)
            if found is not None:
                self._data.move_to_end(key)
            return found

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self._size:
                self._data.popitem(last=False)
