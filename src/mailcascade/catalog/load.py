"""Catalogue loading (JSONL, CSV, JSON) and products -> text passages."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailcascade.errors import CatalogError

_ID_KEYS = ("id", "product_id")
_TITLE_KEYS = ("title", "name")
_KNOWN = {*_ID_KEYS, *_TITLE_KEYS, "description", "category", "attributes", "price", "variants"}
_VARIANT_META = {"item_id", "id", "sku", "price", "available", "options", "product_id"}
MAX_PASSAGE_WORDS = 150


@dataclass(frozen=True)
class Product:
    """One catalogue product. `variants` are kept as given (options, price, availability...)."""

    id: str
    title: str
    description: str = ""
    category: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    price: float | None = None
    variants: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Passage:
    """One retrievable piece of text about one product."""

    passage_id: str
    product_id: str
    text: str


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def passages_sha256(passages: list[Passage] | tuple[Passage, ...]) -> str:
    """sha256 of the passages in a canonical JSON form (for indexes built without a source file)."""
    digest = hashlib.sha256()
    for p in passages:
        digest.update(json.dumps([p.passage_id, p.product_id, p.text], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------- loading


def load_catalog(path: str | Path) -> list[Product]:
    """Load products from .jsonl/.ndjson, .csv or .json. Bad rows raise CatalogError naming file and row."""
    p = Path(path)
    suffix = p.suffix.lower()
    readers = {".jsonl": _jsonl_records, ".ndjson": _jsonl_records, ".csv": _csv_records, ".json": _json_records}
    if suffix not in readers:
        raise CatalogError(f"{p}: unknown catalogue format {suffix or '(no extension)'!r}; "
                           "use .jsonl, .ndjson, .csv or .json")
    products: list[Product] = []
    seen: dict[str, str] = {}
    for where, record, key_id in readers[suffix](p):
        product = _product(record, f"{p}: {where}", key_id)
        if product.id in seen:
            raise CatalogError(f"{p}: {where}: duplicate product id {product.id!r} (first at {seen[product.id]})")
        seen[product.id] = where
        products.append(product)
    if not products:
        raise CatalogError(f"{p}: the catalogue has no products")
    return products


def load_passages(path: str | Path) -> list[Passage]:
    """Load a JSONL of {passage_id, product_id, text}."""
    p = Path(path)
    out: list[Passage] = []
    seen: set[str] = set()
    for where, record, _ in _jsonl_records(p):
        values = []
        for key in ("passage_id", "product_id", "text"):
            value = record.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str) or not value.strip():
                raise CatalogError(f"{p}: {where}: missing or empty {key!r}")
            values.append(value.strip() if key != "text" else value)
        if values[0] in seen:
            raise CatalogError(f"{p}: {where}: duplicate passage_id {values[0]!r}")
        seen.add(values[0])
        out.append(Passage(*values))
    if not out:
        raise CatalogError(f"{p}: no passages")
    return out


def is_passages_file(path: str | Path) -> bool:
    """True when a .jsonl file holds passages ({passage_id, product_id, text}) rather than products."""
    p = Path(path)
    if p.suffix.lower() not in (".jsonl", ".ndjson"):
        return False
    try:
        with p.open(encoding="utf-8-sig") as fh:
            for line in fh:
                if line.strip():
                    first = json.loads(line)
                    return isinstance(first, dict) and "passage_id" in first and "text" in first
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return False


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CatalogError(f"{p}: catalogue file not found") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise CatalogError(f"{p}: cannot read: {exc.strerror}") from None


RecordIter = Iterator[tuple[str, Mapping[str, Any], str | None]]


def _jsonl_records(p: Path) -> RecordIter:
    for n, line in enumerate(_read_text(p).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CatalogError(f"{p}: line {n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise CatalogError(f"{p}: line {n}: expected a JSON object, got {type(record).__name__}")
        yield f"line {n}", record, None


def _csv_records(p: Path) -> RecordIter:
    reader = csv.DictReader(io.StringIO(_read_text(p), newline=""))
    if not reader.fieldnames:
        raise CatalogError(f"{p}: empty CSV (no header row)")
    for row in reader:
        where = f"line {reader.line_num}"  # physical line where the row ends; the header is line 1
        if None in row:
            raise CatalogError(f"{p}: {where}: more values than header columns")
        record: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        for key, value in row.items():
            key = key.strip()
            value = (value or "").strip()
            if key.startswith("attr_"):
                if value:
                    attributes[key[len("attr_"):]] = value
            elif key in ("attributes", "variants"):
                if value:
                    try:
                        record[key] = json.loads(value)
                    except json.JSONDecodeError as exc:
                        raise CatalogError(f"{p}: {where}: column {key!r} is not valid JSON ({exc.msg})") from None
            elif value:
                record[key] = value
        if attributes:
            base = record.get("attributes", {})
            if not isinstance(base, dict):
                raise CatalogError(f"{p}: {where}: column 'attributes' must be a JSON object")
            record["attributes"] = {**base, **attributes}
        yield where, record, None


def _json_records(p: Path) -> RecordIter:
    try:
        data = json.loads(_read_text(p))
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{p}: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("products"), list):
        data = data["products"]
    if isinstance(data, list):
        for i, record in enumerate(data):
            if not isinstance(record, dict):
                raise CatalogError(f"{p}: item {i}: expected an object, got {type(record).__name__}")
            yield f"item {i}", record, None
    elif isinstance(data, dict):
        for key, record in data.items():
            if not isinstance(record, dict):
                raise CatalogError(f"{p}: key {key!r}: expected an object, got {type(record).__name__}")
            yield f"key {key!r}", record, str(key)
    else:
        raise CatalogError(f"{p}: expected a list of products or an object keyed by product id")


# ---------------------------------------------------------------- one record -> Product


def _text(value: Any, where: str, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise CatalogError(f"{where}: {name!r} must be text, got {type(value).__name__}")
    return str(value).strip()


def _scalar_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_scalar_text(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return "" if value is None else str(value).strip()


def _price(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise CatalogError(f"{where}: bad price {value!r}")
    try:
        price = float(value.strip().lstrip("$€£") if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise CatalogError(f"{where}: bad price {value!r} (expected a number)") from None
    if not math.isfinite(price) or price < 0:
        raise CatalogError(f"{where}: bad price {value!r} (must be a finite number >= 0)")
    return price


def _first(record: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if record.get(key) not in (None, ""):
            return record[key]
    return None


def _variants(value: Any, where: str) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if isinstance(value, dict):  # tau-bench shape: {item_id: {item_id, options, available, price}}
        items = [v if "item_id" in v else {"item_id": k, **v} for k, v in value.items() if isinstance(v, dict)]
        if len(items) != len(value):
            raise CatalogError(f"{where}: 'variants' values must be objects")
    elif isinstance(value, list):
        if not all(isinstance(v, dict) for v in value):
            raise CatalogError(f"{where}: 'variants' must be a list of objects")
        items = list(value)
    else:
        raise CatalogError(f"{where}: 'variants' must be a list or an object, got {type(value).__name__}")
    for i, item in enumerate(items):
        if "price" in item:
            _price(item["price"], f"{where}: variant {i}")
    return tuple(items)


def _product(record: Mapping[str, Any], where: str, key_id: str | None) -> Product:
    raw_id = _first(record, _ID_KEYS)
    pid = _text(raw_id, where, "id") if raw_id is not None else (key_id or "")
    if not pid:
        raise CatalogError(f"{where}: missing product id (field 'id' or 'product_id')")
    if key_id is not None and pid != key_id:
        raise CatalogError(f"{where}: product id {pid!r} differs from its key {key_id!r}")
    title = _text(_first(record, _TITLE_KEYS), where, "title")
    if not title:
        raise CatalogError(f"{where}: product {pid!r} has no title (field 'title' or 'name')")
    attrs_raw = record.get("attributes") or {}
    if not isinstance(attrs_raw, Mapping):
        raise CatalogError(f"{where}: 'attributes' must be an object, got {type(attrs_raw).__name__}")
    attributes = {str(k).strip(): _scalar_text(v) for k, v in attrs_raw.items()}
    for key, value in record.items():  # unknown scalar fields (brand, colour...) become attributes
        if key not in _KNOWN and key not in attributes and not isinstance(value, dict | list) and value is not None:
            attributes[key] = _scalar_text(value)
    return Product(
        id=pid,
        title=title,
        description=_text(record.get("description"), where, "description"),
        category=_text(record.get("category"), where, "category"),
        attributes={k: v for k, v in attributes.items() if k and v},
        price=_price(record.get("price"), where),
        variants=_variants(record.get("variants"), where),
    )


# ---------------------------------------------------------------- Product -> passages


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if not text or text[-1] in ".!?" else text + "."


def _chunks(words: list[str], size: int) -> list[str]:
    return [" ".join(words[i:i + size]) for i in range(0, len(words), size)] or [""]


def _money(value: float) -> str:
    return f"{value:.2f}"


def variant_summary(variants: tuple[Mapping[str, Any], ...]) -> str:
    """A one-line summary: option values, price range and availability of the variants."""
    if not variants:
        return ""
    options: dict[str, list[str]] = {}
    prices: list[float] = []
    available = 0
    has_availability = False
    for v in variants:
        opts = v.get("options")
        if not isinstance(opts, Mapping):
            opts = {k: x for k, x in v.items() if k not in _VARIANT_META and not isinstance(x, dict | list)}
        for k, x in opts.items():
            values = options.setdefault(str(k), [])
            text = _scalar_text(x)
            if text and text not in values:
                values.append(text)
        if isinstance(v.get("price"), int | float) and not isinstance(v.get("price"), bool):
            prices.append(float(v["price"]))
        if isinstance(v.get("available"), bool):
            has_availability = True
            available += v["available"]
    parts = [f"{len(variants)} variant{'s' if len(variants) != 1 else ''}"]
    if options:
        parts.append("; ".join(f"{k}: {', '.join(vals)}" for k, vals in options.items() if vals))
    if prices:
        low, high = min(prices), max(prices)
        parts.append(f"price {_money(low)}" if low == high else f"price {_money(low)} to {_money(high)}")
    if has_availability:
        parts.append(f"{available} of {len(variants)} available")
    return _sentence("Variants: " + " - ".join(p for p in parts if p))


def product_passages(product: Product, max_words: int = MAX_PASSAGE_WORDS) -> list[Passage]:
    """Overview passage(s) "title. category. description" (long descriptions split), then one details passage.

    Passage ids are "<product id>#<n>". A product with only a title and details gets just the details passage.
    """
    head = " ".join(_sentence(x) for x in (product.title, product.category) if x)
    words = product.description.split()
    texts = [f"{head} {chunk}".strip() for chunk in _chunks(words, max_words)]
    details: list[str] = []
    if product.attributes:
        details.append(_sentence("; ".join(f"{k}: {v}" for k, v in product.attributes.items())))
    if product.price is not None:
        details.append(f"Price: {_money(product.price)}.")
    summary = variant_summary(product.variants)
    if summary:
        details.append(summary)
    if details:
        if not words and not product.category:
            texts = []  # the details passage starts with the title; a bare-title passage adds nothing
        texts.append(f"{_sentence(product.title)} {' '.join(details)}")
    return [Passage(f"{product.id}#{i}", product.id, text) for i, text in enumerate(texts)]


def catalog_passages(products: list[Product]) -> list[Passage]:
    """All passages of all products, in catalogue order."""
    return [p for product in products for p in product_passages(product)]
