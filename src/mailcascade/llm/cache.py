"""A caching wrapper around any LLM: the key is everything that determines the answer."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

from mailcascade.llm.base import LLM
from mailcascade.store import Store
from mailcascade.types import ChatRequest, ChatResponse


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int


def cache_key(request: ChatRequest, model: str, endpoint: str) -> str:
    payload = {
        "endpoint": endpoint,
        "model": model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "schema": request.schema,
        "schema_name": request.schema_name,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CachedLLM:
    """Answers from the store when the same request was answered before; counts hits and misses.

    `endpoint` should name what else determines the answer (base URL and structured-output mode).
    """

    def __init__(self, inner: LLM, store: Store, endpoint: str) -> None:
        self._inner = inner
        self._store = store
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses)

    def _count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def complete(self, request: ChatRequest) -> ChatResponse:
        key = cache_key(request, self.model, self._endpoint)
        found = self._store.cache_get(key)
        self._count(found is not None)
        if found is not None:
            return found
        response = self._inner.complete(request)
        self._store.cache_put(key, response)
        return response

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        key = cache_key(request, self.model, self._endpoint)
        found = self._store.cache_get(key)
        self._count(found is not None)
        if found is not None:
            return found
        response = await self._inner.acomplete(request)
        self._store.cache_put(key, response)
        return response
