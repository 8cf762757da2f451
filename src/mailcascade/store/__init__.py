"""The store: failure log, LLM and retrieval caches, runs. `Store(path)` is SQLite, `Store("postgresql://...")`
PostgreSQL; `open_store(settings.store)` picks from the settings."""

from __future__ import annotations

from mailcascade.config import StoreSettings, mask_url
from mailcascade.store.base import Store, StoreError, is_postgres_url

__all__ = ["Store", "StoreError", "is_postgres_url", "open_store"]


def open_store(settings: StoreSettings) -> Store:
    """The configured store: PostgreSQL when `store.url` is set, else the SQLite file `store.path`."""
    if settings.url and not is_postgres_url(settings.url):
        raise StoreError(f"store.url {mask_url(settings.url)!r} is not a PostgreSQL URL: use "
                         "postgresql://USER:PASSWORD@HOST:PORT/DATABASE, or leave it empty for the SQLite store.path")
    return Store(settings.url or settings.path, timeout_s=settings.busy_timeout_s)
