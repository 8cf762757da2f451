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


def retrieve(
    email: Email, department: str | None, index: Searcher, settings: RetrievalSettings, max_chars: int = 2000
) -> StageOutput[tuple[Hit, ...]]:
    started = time.perf_counter()
    query = build_query(email, department, settings, max_chars)
    hits = tuple(index.search(query, settings.top_k))
    record = StageRecord(
        stage="retrieve",
        status="ok",
        input_hash=hashlib.sha256(query.encode()).hexdigest()[:12],
        latency_ms=(time.perf_counter() - started) * 1000,
    )
    return StageOutput(value=hits, record=record)
