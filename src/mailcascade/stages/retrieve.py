"""Retrieve: semantic search of the catalogue for the passages the reply needs."""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

from mailcascade.config import RetrievalSettings
from mailcascade.stages.call import StageOutput
from mailcascade.types import Email, Hit, StageRecord


class Searcher(Protocol):
    def search(self, query: str, k: int) -> list[Hit]: ...


def build_query(email: Email, department: str | None, settings: RetrievalSettings, max_chars: int) -> str:
    parts = [email.subject, email.body[:max_chars]]
    if settings.include_route_in_query and department:
        parts.insert(0, department)
    return "\n".join(p for p in parts if p)


def search(index: Searcher, query: str, settings: RetrievalSettings) -> list[Hit]:
    """The top k hits; with one_hit_per_product, the best passage of each of the top k products."""
    if not settings.one_hit_per_product:
        return index.search(query, settings.top_k)
    fetch = settings.top_k * 4
    while True:
        found = index.search(query, fetch)
        best: dict[str, Hit] = {}
        for hit in found:
            best.setdefault(hit.product_id, hit)
        if len(best) >= settings.top_k or len(found) < fetch:
            return list(best.values())[: settings.top_k]
        fetch *= 2


def retrieve(
    email: Email, department: str | None, index: Searcher, settings: RetrievalSettings, max_chars: int = 2000
) -> StageOutput[tuple[Hit, ...]]:
    started = time.perf_counter()
    query = build_query(email, department, settings, max_chars)
    hits = tuple(search(index, query, settings))
    record = StageRecord(
        stage="retrieve",
        status="ok",
        model=str(getattr(index, "name", "")),  # which index answered: embedding model, kind, catalogue hash
        input_hash=hashlib.sha256(query.encode()).hexdigest()[:12],
        latency_ms=(time.perf_counter() - started) * 1000,
    )
    return StageOutput(value=hits, record=record)
