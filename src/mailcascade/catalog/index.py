"""FAISS index over catalogue passages: build, search, save/load with a manifest, staleness checks."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any

import faiss
import numpy as np

from mailcascade.catalog.embed import Embedder, EmbedderLike, normalise
from mailcascade.catalog.load import (
    Passage,
    Product,
    catalog_passages,
    file_sha256,
    is_passages_file,
    load_catalog,
    load_passages,
    passages_sha256,
)
from mailcascade.config import HnswSettings, Settings
from mailcascade.errors import CatalogError
from mailcascade.types import Hit

INDEX_FILE = "index.faiss"
PASSAGES_FILE = "passages.jsonl"
PRODUCTS_FILE = "products.jsonl"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
KINDS = ("flat", "hnsw")
ENCODE_CHUNK = 512
CHECKED_FIELDS = ("catalog_sha256", "embedding_model", "dim", "index_kind")
DEFAULT_HNSW = HnswSettings()
HNSW_FIELD = "hnsw"  # {"M", "ef_construction"} of an HNSW index: checked for staleness when present
Progress = Callable[[int, int], None]


def _version() -> str:
    try:
        return metadata.version("mailcascade")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _new_faiss_index(kind: str, dim: int, hnsw: HnswSettings) -> Any:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = hnsw.ef_construction
        index.hnsw.efSearch = hnsw.ef_search
        return index
    raise CatalogError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")


class CatalogIndex:
    """Passages, their vectors in a FAISS index, and the embedder that made them. Read-only, thread-safe search."""

    def __init__(self, index: Any, passages: Sequence[Passage], embedder: EmbedderLike, *, kind: str,
                 products: Mapping[str, Product] | None = None, manifest: Mapping[str, Any] | None = None) -> None:
        if index.ntotal != len(passages):
            raise CatalogError(f"index holds {index.ntotal} vectors but there are {len(passages)} passages")
        self._index = index
        self._passages = tuple(passages)
        self._embedder = embedder
        self._kind = kind
        self._products: Mapping[str, Product] = MappingProxyType(dict(products or {}))
        self._manifest = dict(manifest or {})

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def passages(self) -> tuple[Passage, ...]:
        return self._passages

    @property
    def products(self) -> Mapping[str, Product]:
        """id -> Product when built from a catalogue; empty when built from passages only."""
        return self._products

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._manifest)

    @property
    def name(self) -> str:
        """Identifies the index in traces: embedding model, kind and the first digits of the catalogue hash."""
        return f"{self._embedder.name}:{self.kind}:{str(self._manifest.get('catalog_sha256', ''))[:12]}"

    @property
    def embedder(self) -> EmbedderLike:
        return self._embedder

    def __len__(self) -> int:
        return len(self._passages)

    def search(self, query: str, k: int) -> list[Hit]:
        """The k passages nearest to the query, best first."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """One hit list per query (queries are embedded in one batch)."""
        if not queries:
            return []
        if k <= 0:
            return [[] for _ in queries]
        return self.search_vectors(self._embedder.encode(list(queries)), k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Search with query vectors (one row per query; normalised here). k above the index size returns all."""
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise CatalogError(f"query vectors have shape {q.shape}; the index expects rows of {self.dim}")
        if k <= 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        scores, ids = self._index.search(normalise(q), min(k, len(self._passages)))
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            found = sorted(((float(s), int(i)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0),
                           key=lambda pair: (-pair[0], pair[1]))
            results.append([self._hit(i, s) for s, i in found])
        return results

    def _hit(self, i: int, score: float) -> Hit:
        p = self._passages[i]
        return Hit(product_id=p.product_id, passage_id=p.passage_id, score=score, text=p.text)

    def save(self, directory: str | Path) -> Path:
        """Write index.faiss, passages.jsonl, products.jsonl (if any) and manifest.json, atomically."""
        target = Path(directory)
        if target.exists() and not _replaceable(target):
            raise CatalogError(f"{target}: exists and is not an index directory; refusing to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            faiss.write_index(self._index, str(tmp / INDEX_FILE))
            _write_jsonl(tmp / PASSAGES_FILE, (dataclasses.asdict(p) for p in self._passages))
            if self._products:
                _write_jsonl(tmp / PRODUCTS_FILE, (_product_dict(p) for p in self._products.values()))
            _write_json(tmp / MANIFEST_FILE, self._manifest)
            _swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def set_ef_search(self, ef_search: int) -> None:
        """HNSW only: how many candidates a search visits (higher: better recall, slower)."""
        if self._kind == "hnsw":
            hnsw: Any = faiss.downcast_index(self._index)
            hnsw.hnsw.efSearch = ef_search

    @classmethod
    def load(cls, directory: str | Path, embedder: EmbedderLike, *, check: bool = True,
             ef_search: int = HnswSettings.ef_search) -> CatalogIndex:
        """Load a saved index. With check, the embedder must match the manifest's model and dimension."""
        root = Path(directory)
        manifest = read_manifest(root)
        try:
            index = faiss.read_index(str(root / INDEX_FILE))
        except RuntimeError as exc:
            raise CatalogError(f"{root / INDEX_FILE}: cannot read the FAISS index ({str(exc).strip()[:200]})") from None
        passages = load_passages(root / PASSAGES_FILE)
        products = _read_products(root / PRODUCTS_FILE)
        kind = str(manifest.get("index_kind", ""))
        if kind not in KINDS:
            raise CatalogError(f"{root / MANIFEST_FILE}: unknown index_kind {kind!r}")
        if index.d != manifest.get("dim") or index.ntotal != manifest.get("passage_count"):
            raise CatalogError(f"{root}: manifest does not match the index files "
                               f"(dim {index.d}, {index.ntotal} vectors)")
        if check:
            differences = _differences(manifest, {"embedding_model": embedder.name, "dim": embedder.dim})
            if differences:
                raise CatalogError(f"{root}: index does not match the embedder: {'; '.join(differences.values())}")
        loaded = cls(index, passages, embedder, kind=kind, products=products, manifest=manifest)
        loaded.set_ef_search(ef_search)
        return loaded


def build_index(passages: Sequence[Passage], embedder: EmbedderLike, *, kind: str = "flat",
                products: Iterable[Product] | Mapping[str, Product] | None = None,
                source_hash: str | None = None, source: str = "",
                progress: Progress | None = None, hnsw: HnswSettings = DEFAULT_HNSW) -> CatalogIndex:
    """Embed passages in chunks and build a FAISS index. source_hash defaults to a hash of the passages."""
    passages = list(passages)
    if not passages:
        raise CatalogError("nothing to index: no passages")
    ids = [p.passage_id for p in passages]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise CatalogError(f"duplicate passage ids: {', '.join(dupes)}")
    dim = embedder.dim
    index = _new_faiss_index(kind, dim, hnsw)
    for start in range(0, len(passages), ENCODE_CHUNK):
        chunk = [p.text for p in passages[start:start + ENCODE_CHUNK]]
        vectors = np.asarray(embedder.encode(chunk), dtype=np.float32)
        if vectors.shape != (len(chunk), dim):
            raise CatalogError(f"embedder {embedder.name!r} returned shape {vectors.shape}, "
                               f"expected ({len(chunk)}, {dim})")
        index.add(normalise(vectors))
        if progress is not None:
            progress(start + len(chunk), len(passages))
    by_id = dict(products) if isinstance(products, Mapping) else {p.id: p for p in products or ()}
    manifest = {
        "format": FORMAT_VERSION,
        "embedding_model": embedder.name,
        "dim": dim,
        "index_kind": kind,
        "catalog_sha256": source_hash or passages_sha256(passages),
        "catalog_source": source,
        "passage_count": len(passages),
        "product_count": len(by_id) or len({p.product_id for p in passages}),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mailcascade_version": _version(),
        **({HNSW_FIELD: _hnsw_build(hnsw)} if kind == "hnsw" else {}),
    }
    return CatalogIndex(index, passages, embedder, kind=kind, products=by_id, manifest=manifest)


def load_source(path: str | Path) -> tuple[list[Passage], list[Product]]:
    """Passages (and products) from a catalogue file, or from a passages JSONL (then no products)."""
    if is_passages_file(path):
        return load_passages(path), []
    products = load_catalog(path)
    return catalog_passages(products), products


def rebuild_index(settings: Settings, embedder: EmbedderLike, *, catalog: str | Path | None = None,
                  progress: Progress | None = None) -> CatalogIndex:
    """Build the index for a catalogue (default: the configured one) and save it to settings.catalog.index_dir."""
    path = Path(catalog) if catalog is not None else settings.catalog_path()
    if not path.is_file():
        raise CatalogError(f"catalogue not found: {path}")
    digest = file_sha256(path)
    passages, products = load_source(path)
    index = build_index(passages, embedder, kind=settings.catalog.index_kind, products=products,
                        source_hash=digest, source=str(path), progress=progress, hnsw=settings.catalog.hnsw)
    index.save(settings.catalog.index_dir)
    return index


def open_index(settings: Settings, embedder: EmbedderLike, *, progress: Progress | None = None) -> CatalogIndex:
    """Load the saved index if it matches the catalogue, model and kind; else rebuild or refuse (settings)."""
    path = settings.catalog_path()
    if not path.is_file():
        raise CatalogError(f"catalogue not found: {path}")
    directory = Path(settings.catalog.index_dir)
    if not (directory / MANIFEST_FILE).exists():  # no index yet
        return rebuild_index(settings, embedder, progress=progress)
    expected = {"catalog_sha256": file_sha256(path), "embedding_model": embedder.name, "dim": embedder.dim,
                **_expected_kind(settings)}
    try:
        differences = _differences(read_manifest(directory), expected)
        if not differences:
            return CatalogIndex.load(directory, embedder, ef_search=settings.catalog.hnsw.ef_search)
    except CatalogError as exc:
        differences = {"files": f"the saved index cannot be read ({exc})"}
    if settings.catalog.on_stale == "rebuild":
        return rebuild_index(settings, embedder, progress=progress)
    raise CatalogError(f"index at {directory} is stale for catalogue {path}: {'; '.join(differences.values())}. "
                       f"Rebuild it with: mailcascade index build {path} "
                       "(or set [catalog] on_stale = \"rebuild\")")


def index_status(settings: Settings, embedder: EmbedderLike | None = None) -> dict[str, Any]:
    """What the CLI shows: whether the index exists, which fields are stale, and its counts.

    Without an embedder the model is not loaded; the dimension is read from the model files when possible.
    """
    path = settings.catalog_path()
    directory = Path(settings.catalog.index_dir)
    status: dict[str, Any] = {"catalog": str(path), "catalog_exists": path.is_file(), "index_dir": str(directory),
                              "exists": (directory / MANIFEST_FILE).is_file(), "fresh": False, "stale": [],
                              "details": {}, "passages": None, "products": None, "kind": None,
                              "embedding_model": None, "dim": None, "created": None}
    if not status["exists"]:
        return status
    try:
        manifest = read_manifest(directory)
    except CatalogError as exc:
        status.update(stale=["files"], details={"files": str(exc)})
        return status
    status.update(passages=manifest.get("passage_count"), products=manifest.get("product_count"),
                  kind=manifest.get("index_kind"), embedding_model=manifest.get("embedding_model"),
                  dim=manifest.get("dim"), created=manifest.get("created"))
    expected: dict[str, Any] = _expected_kind(settings)
    if path.is_file():
        expected["catalog_sha256"] = file_sha256(path)
    else:
        status["details"]["catalog_sha256"] = f"catalogue {path} not found"
    if embedder is None:
        real = Embedder(settings.embedding)
        expected["embedding_model"] = real.name
        hint = real.dim_hint()
        if hint is not None:
            expected["dim"] = hint
    else:
        expected.update(embedding_model=embedder.name, dim=embedder.dim)
    differences = _differences(manifest, expected)
    status["stale"] = list(differences)
    status["details"].update(differences)
    status["fresh"] = not differences and path.is_file()
    return status


# ---------------------------------------------------------------- helpers


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a saved index, checked for the fields staleness depends on."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"{path}: not found (no index saved in {directory})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CatalogError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or any(f not in manifest for f in (*CHECKED_FIELDS, "passage_count")):
        raise CatalogError(f"{path}: manifest lacks required fields ({', '.join(CHECKED_FIELDS)}, passage_count)")
    if manifest.get("format") != FORMAT_VERSION:
        raise CatalogError(f"{path}: index format {manifest.get('format')!r}, this version reads {FORMAT_VERSION}")
    return manifest


def _hnsw_build(hnsw: HnswSettings) -> dict[str, int]:
    return {"M": hnsw.m, "ef_construction": hnsw.ef_construction}


def _expected_kind(settings: Settings) -> dict[str, Any]:
    kind = settings.catalog.index_kind
    return {"index_kind": kind, **({HNSW_FIELD: _hnsw_build(settings.catalog.hnsw)} if kind == "hnsw" else {})}


def _differences(manifest: Mapping[str, Any], expected: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in (*CHECKED_FIELDS, HNSW_FIELD):
        if key == HNSW_FIELD and "index_kind" in out:
            continue  # another kind of index: its HNSW parameters say nothing more
        if key in expected and manifest.get(key) != expected[key]:
            was, now = manifest.get(key), expected[key]
            if key == "catalog_sha256":
                was, now = str(was)[:12], str(now)[:12]
            out[key] = f"{key} differs (index: {was!r}, now: {now!r})"
    return out


def _replaceable(target: Path) -> bool:
    return target.is_dir() and (not any(target.iterdir()) or (target / MANIFEST_FILE).exists()
                                or (target / INDEX_FILE).exists())


def _swap_in(tmp: Path, target: Path) -> None:
    """Move a finished temp directory into place; the old index (if any) is removed only after."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def _product_dict(p: Product) -> dict[str, Any]:
    return {"id": p.id, "title": p.title, "description": p.description, "category": p.category,
            "attributes": dict(p.attributes), "price": p.price, "variants": [dict(v) for v in p.variants]}


def _read_products(path: Path) -> dict[str, Product]:
    if not path.is_file():
        return {}
    products: dict[str, Product] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            product = Product(id=d["id"], title=d["title"], description=d["description"], category=d["category"],
                              attributes=d["attributes"], price=d["price"], variants=tuple(d["variants"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CatalogError(f"{path}: line {n}: bad saved product ({exc})") from None
        products[product.id] = product
    return products
