"""Retrieval results cached in the store, keyed by the index's identity and the query."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mailcascade.catalog.index import CatalogIndex
from mailcascade.store import Store
from mailcascade.types import Hit


class CachedSearcher:
    """Searches `index`, answering a query seen before (same catalogue, model, kind, k) from the store."""

    def __init__(self, index: CatalogIndex, store: Store) -> None:
        self.index = index
        self._store = store
        m = index.manifest
        self._identity = [m.get("catalog_sha256"), m.get("embedding_model"), m.get("dim"), index.kind]

    @property
    def name(self) -> str:
        return self.index.name

    @property
    def passages(self) -> Any:
        return self.index.passages

    def search(self, query: str, k: int) -> list[Hit]:
        key = hashlib.sha256(json.dumps([*self._identity, query, k], ensure_ascii=False).encode()).hexdigest()
        found = self._store.search_get(key)
        if found is not None:
            return found
        hits = self.index.search(query, k)
        self._store.search_put(key, hits)
        return hits
