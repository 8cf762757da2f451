"""Catalogue loading, passages, embeddings and the FAISS index."""

from mailcascade.catalog.embed import DEFAULT_MODEL_NAME, Embedder, EmbedderLike, default_model_dir
from mailcascade.catalog.index import (
    CatalogIndex,
    build_index,
    index_status,
    load_source,
    open_index,
    read_manifest,
    rebuild_index,
)
from mailcascade.catalog.load import (
    Passage,
    Product,
    catalog_passages,
    load_catalog,
    load_passages,
    product_passages,
)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "CatalogIndex",
    "Embedder",
    "EmbedderLike",
    "Passage",
    "Product",
    "build_index",
    "catalog_passages",
    "default_model_dir",
    "index_status",
    "load_catalog",
    "load_passages",
    "load_source",
    "open_index",
    "product_passages",
    "read_manifest",
    "rebuild_index",
]
