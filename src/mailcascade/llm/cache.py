"""A caching wrapper around any LLM: the key is everything that determines the answer."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

from mailcascade.llm.base import LLM
from mailcascade.llm.client import response_format
from mailcascade.store import Store
from mailcascade.types import ChatRequest, ChatResponse


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int


def cache_key(request: ChatRequest, model: str, endpoint: str, structured_output: str) -> str:
    """The hash of what is sent: endpoint, model, messages, generation parameters and the `response_format` that
    `structured_output` mode sends for the request's schema (so an answer given under another schema, or another
    form of the same one, is not served)."""
    payload = (endpoint, model, request.messages, request.max_tokens, request.temperature,
               response_format(request, structured_output))
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


class CachedLLM:
    """Answers from the store when the same request was answered before; counts hits and misses.

    `endpoint` names the server (its base URL); `structured_output` is the client's mode (it decides the
    `response_format` sent).
    """

    def __init__(self, inner: LLM, store: Store, endpoint: str, structured_output: str = "json_object") -> None:
        self._inner = inner
        self._store = store
        self._endpoint = endpoint
        self._structured_output = structured_output
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
        key = cache_key(request, self.model, self._endpoint, self._structured_output)
        found = self._store.cache_get(key)
        self._count(found is not None)
        if found is not None:
            return found
        response = self._inner.complete(request)
        self._store.cache_put(key, response)
        return response

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        key = cache_key(request, self.model, self._endpoint, self._structured_output)
        found = self._store.cache_get(key)
        self._count(found is not None)
        if found is not None:
            return found
        response = await self._inner.acomplete(request)
        self._store.cache_put(key, response)
        return response
