"""Catalogue loading, passages, FAISS index build/search/save/load and staleness handling."""

from __future__ import annotations

import csv
import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fakes import HashEmbedder
from mailcascade.catalog import (
    CatalogIndex,
    Embedder,
    EmbedderLike,
    Passage,
    Product,
    build_index,
    catalog_passages,
    index_status,
    load_catalog,
    load_passages,
    open_index,
    product_passages,
    read_manifest,
)
from mailcascade.catalog import index as index_module
from mailcascade.config import CatalogSettings, EmbeddingSettings, Settings
from mailcascade.errors import CatalogError, MailcascadeError
from mailcascade.types import Hit
from shared import SHARED_DATA

TAU_PRODUCTS = SHARED_DATA / "tau_retail" / "products.json"





PRODUCTS: list[dict[str, Any]] = [
    {"id": "P001", "title": "Trail running shoes", "category": "footwear",
     "description": "Lightweight shoes with a grippy sole for muddy trails.", "price": 89.5,
     "attributes": {"sizes": ["40", "41", "42"], "waterproof": True}},
    {"id": "P002", "title": "Espresso machine", "category": "kitchen",
     "description": "Fifteen bar pump espresso maker with milk frother and steam wand.", "price": "249.00"},
    {"id": "P003", "title": "Wool winter scarf", "category": "apparel",
     "description": "Soft merino wool scarf, warm for cold winter days.", "brand": "Nordwool"},
    {"id": "P004", "title": "USB-C charging cable", "category": "electronics",
     "description": "Braided two metre cable, fast charging for phones and laptops.", "price": 12},
    {"id": "P005", "title": "Cast iron skillet", "category": "kitchen",
     "description": "Pre-seasoned cast iron pan for searing steak and baking cornbread."},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_settings(catalog: Path, index_dir: Path, **catalog_options: Any) -> Settings:
    return Settings(catalog=CatalogSettings(path=str(catalog), index_dir=str(index_dir), **catalog_options))


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "catalog.jsonl", PRODUCTS)


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder()


# ---------------------------------------------------------------- loaders


def test_jsonl_loads_fields_and_normalises_values(catalog_file: Path) -> None:
    products = load_catalog(catalog_file)
    assert [p.id for p in products] == ["P001", "P002", "P003", "P004", "P005"]
    shoes, espresso, scarf = products[0], products[1], products[2]
    assert shoes.title == "Trail running shoes" and shoes.category == "footwear"
    assert shoes.attributes == {"sizes": "40, 41, 42", "waterproof": "yes"}
    assert shoes.price == 89.5 and espresso.price == 249.0 and scarf.price is None
    assert scarf.attributes == {"brand": "Nordwool"}  # unknown scalar fields become attributes
    assert isinstance(shoes, Product)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"title": "No id"}], r"line 1: missing product id"),
        ([{"id": "A", "title": "ok"}, {"id": "B"}], r"line 2: product 'B' has no title"),
        ([{"id": "A", "title": "x"}, {"id": "A", "title": "y"}],
         r"line 2: duplicate product id 'A' \(first at line 1\)"),
        ([{"id": "A", "title": "x", "price": "cheap"}], r"line 1: bad price 'cheap'"),
        ([{"id": "A", "title": "x", "price": -3}], r"line 1: bad price -3"),
        ([{"id": "A", "title": "x", "price": float("nan")}], r"line 1: bad price"),
        ([{"id": "A", "title": "x", "attributes": ["red"]}], r"line 1: 'attributes' must be an object"),
    ],
)
def test_jsonl_bad_rows_name_file_and_line(tmp_path: Path, rows: list[dict[str, Any]], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, MailcascadeError)


def test_jsonl_invalid_json_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "A", "title": "x"}\n\n{"id": "B", "title": \n', encoding="utf-8")
    with pytest.raises(CatalogError, match=r"line 3: invalid JSON"):
        load_catalog(path)
    path.write_text('{"id": "A", "title": "x"}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(CatalogError, match=r"line 3: expected a JSON object"):
        load_catalog(path)


def test_csv_with_json_attributes_and_attr_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "description", "category", "price", "attributes", "attr_colour"])
        w.writerow(["C1", "Rain jacket", "Breathable,\nwaterproof shell", "apparel", "120", '{"fit": "slim"}', "navy"])
        w.writerow(["C2", "Tea kettle", "", "kitchen", "", "", ""])
    products = load_catalog(path)
    assert products[0].attributes == {"fit": "slim", "colour": "navy"}
    assert products[0].description == "Breathable,\nwaterproof shell" and products[0].price == 120.0
    assert products[1].attributes == {} and products[1].price is None and products[1].description == ""


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["", "Untitled", "9"], r"line 3: missing product id"),
        (["B", "", "9"], r"line 3: product 'B' has no title"),
        (["B", "Thing", "12,50"], r"line 3: bad price '12,50'"),
        (["A", "Again", "1"], r"line 3: duplicate product id 'A'"),
    ],
)
def test_csv_bad_rows_name_the_line(tmp_path: Path, row: list[str], message: str) -> None:
    path = tmp_path / "c.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerows([["id", "title", "price"], ["A", "Fine", "1"], row])
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog(path)
    assert str(path) in str(info.value)


def test_json_list_and_keyed_object(tmp_path: Path) -> None:
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(PRODUCTS[:2]), encoding="utf-8")
    assert [p.id for p in load_catalog(listed)] == ["P001", "P002"]
    keyed = tmp_path / "keyed.json"
    keyed.write_text(json.dumps({"K1": {"title": "Lamp"}, "K2": {"id": "K2", "title": "Rug"}}), encoding="utf-8")
    assert [(p.id, p.title) for p in load_catalog(keyed)] == [("K1", "Lamp"), ("K2", "Rug")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "A", "title": "x"}, {"id": "B", "title": "y", "price": "?"}]), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"item 1: bad price"):
        load_catalog(bad)
    mismatch = tmp_path / "mismatch.json"
    mismatch.write_text(json.dumps({"K1": {"id": "K9", "title": "Lamp"}}), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"key 'K1': product id 'K9' differs from its key"):
        load_catalog(mismatch)


def test_json_tau_bench_shape(tmp_path: Path) -> None:
    data = {
        "100": {"name": "T-Shirt", "product_id": "100", "variants": {
            "1": {"item_id": "1", "options": {"color": "blue", "size": "M"}, "available": True, "price": 50.0},
            "2": {"item_id": "2", "options": {"color": "red", "size": "L"}, "available": False, "price": 47.5},
        }},
    }
    path = tmp_path / "products.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    [shirt] = load_catalog(path)
    assert shirt.id == "100" and shirt.title == "T-Shirt" and len(shirt.variants) == 2
    [passage] = product_passages(shirt)
    assert passage.passage_id == "100#0"
    for fragment in ("T-Shirt.", "2 variants", "color: blue, red", "size: M, L", "price 47.50 to 50.00",
                     "1 of 2 available"):
        assert fragment in passage.text


@pytest.mark.skipif(not TAU_PRODUCTS.is_file(), reason="shared tau-bench data not present")
def test_real_tau_bench_catalogue_loads() -> None:
    raw = json.loads(TAU_PRODUCTS.read_text(encoding="utf-8"))
    products = load_catalog(TAU_PRODUCTS)
    assert len(products) == len(raw)
    assert sum(len(p.variants) for p in products) == sum(len(v["variants"]) for v in raw.values())
    assert all(p.title == raw[p.id]["name"] for p in products)


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    odd = tmp_path / "catalog.xml"
    odd.write_text("<products/>", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"catalog\.xml: unknown catalogue format '\.xml'"):
        load_catalog(odd)
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "absent.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="no products"):
        load_catalog(empty)


# ---------------------------------------------------------------- passages


def test_product_passages_overview_and_details() -> None:
    product = Product(id="P9", title="Desk lamp", description="Dimmable LED lamp", category="home",
                      attributes={"colour": "black"}, price=35.0, variants=({"sku": "a", "colour": "black"},))
    passages = product_passages(product)
    assert [p.passage_id for p in passages] == ["P9#0", "P9#1"]
    assert all(p.product_id == "P9" for p in passages)
    assert passages[0].text == "Desk lamp. home. Dimmable LED lamp"
    assert passages[1].text.startswith("Desk lamp. colour: black. Price: 35.00.")
    assert "1 variant" in passages[1].text
    bare = product_passages(Product(id="X", title="Mystery box"))
    assert [(p.passage_id, p.text) for p in bare] == [("X#0", "Mystery box.")]


def test_long_description_is_split_and_each_part_names_the_product() -> None:
    words = " ".join(f"word{i}" for i in range(320))
    passages = product_passages(Product(id="L", title="Long one", description=words), max_words=150)
    assert [p.passage_id for p in passages] == ["L#0", "L#1", "L#2"]
    assert all(p.text.startswith("Long one.") for p in passages)
    assert " ".join(p.text.removeprefix("Long one. ") for p in passages) == words


def test_load_passages_good_and_bad(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "p.jsonl", [{"passage_id": "q1#0", "product_id": "B00X", "text": "Fits model 12."},
                                              {"passage_id": "q1#1", "product_id": "B00X", "text": "Red."}])
    assert load_passages(good) == [Passage("q1#0", "B00X", "Fits model 12."), Passage("q1#1", "B00X", "Red.")]
    missing = write_jsonl(tmp_path / "m.jsonl", [{"passage_id": "a", "product_id": "b"}])
    with pytest.raises(CatalogError, match=r"m\.jsonl: line 1: missing or empty 'text'"):
        load_passages(missing)
    dupe = write_jsonl(tmp_path / "d.jsonl", [{"passage_id": "a", "product_id": "b", "text": "t"}] * 2)
    with pytest.raises(CatalogError, match=r"line 2: duplicate passage_id 'a'"):
        load_passages(dupe)


# ---------------------------------------------------------------- index


def test_fake_embedder_fits_the_protocol(embedder: HashEmbedder) -> None:
    assert isinstance(embedder, EmbedderLike)
    assert isinstance(Embedder(EmbeddingSettings()), EmbedderLike)


def test_search_returns_sorted_hits_and_handles_large_k(catalog_file: Path, embedder: HashEmbedder) -> None:
    products = load_catalog(catalog_file)
    passages = catalog_passages(products)
    index = build_index(passages, embedder, products=products)
    hits = index.search("espresso maker with milk frother", k=3)
    assert len(hits) == 3 and all(isinstance(h, Hit) for h in hits)
    assert hits[0].product_id == "P002"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    everything = index.search("cable", k=1000)
    assert sorted(h.passage_id for h in everything) == sorted(p.passage_id for p in passages)
    assert index.search("cable", k=0) == []
    assert index.products["P004"].title == "USB-C charging cable"
    by_id = {p.passage_id: p.text for p in passages}
    assert all(by_id[h.passage_id] == h.text for h in everything)


def test_flat_and_hnsw_agree_on_the_top_hit(catalog_file: Path, embedder: HashEmbedder) -> None:
    passages = catalog_passages(load_catalog(catalog_file))
    flat = build_index(passages, embedder, kind="flat")
    hnsw = build_index(passages, embedder, kind="hnsw")
    assert flat.kind == "flat" and hnsw.kind == "hnsw"
    queries = ["merino wool scarf for winter", "cast iron pan steak", "fast charging cable for laptop",
               "running shoes for muddy trails", "espresso steam wand"]
    expected = ["P003", "P005", "P004", "P001", "P002"]
    flat_top = [hits[0] for hits in flat.search_many(queries, k=3)]
    hnsw_top = [hits[0] for hits in hnsw.search_many(queries, k=3)]
    assert [h.product_id for h in flat_top] == expected
    assert [h.passage_id for h in hnsw_top] == [h.passage_id for h in flat_top]
    assert [h.score for h in hnsw_top] == pytest.approx([h.score for h in flat_top], abs=1e-5)


def test_search_vectors_checks_dimension(catalog_file: Path, embedder: HashEmbedder) -> None:
    index = build_index(catalog_passages(load_catalog(catalog_file)), embedder)
    vector = embedder.encode(["wool scarf"])[0] * 7.0  # unnormalised: normalised before search
    [hits] = index.search_vectors(vector, k=1)
    assert hits[0].product_id == "P003" and hits[0].score == pytest.approx(index.search("wool scarf", 1)[0].score)
    with pytest.raises(CatalogError, match="expects rows of 128"):
        index.search_vectors(np.zeros((1, 5), dtype=np.float32), k=1)


def test_build_rejects_bad_input(embedder: HashEmbedder) -> None:
    with pytest.raises(CatalogError, match="no passages"):
        build_index([], embedder)
    with pytest.raises(CatalogError, match="duplicate passage ids: a#0"):
        build_index([Passage("a#0", "a", "x"), Passage("a#0", "a", "y")], embedder)
    with pytest.raises(CatalogError, match="unknown index kind 'ivf'"):
        build_index([Passage("a#0", "a", "x")], embedder, kind="ivf")


def test_concurrent_searches_agree(catalog_file: Path, embedder: HashEmbedder) -> None:
    index = build_index(catalog_passages(load_catalog(catalog_file)), embedder, kind="hnsw")
    queries = ["wool scarf", "espresso", "skillet", "trail shoes"] * 5
    expected = index.search_many(queries, k=2)
    results: list[list[list[Hit]]] = []
    threads = [threading.Thread(target=lambda: results.append(index.search_many(queries, k=2))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_round_trip(tmp_path: Path, catalog_file: Path, embedder: HashEmbedder, kind: str) -> None:
    products = load_catalog(catalog_file)
    built = build_index(catalog_passages(products), embedder, kind=kind, products=products)
    built.save(tmp_path / "idx")
    assert sorted(f.name for f in (tmp_path / "idx").iterdir()) == [
        "index.faiss", "manifest.json", "passages.jsonl", "products.jsonl"]
    manifest = read_manifest(tmp_path / "idx")
    assert manifest["embedding_model"] == "fake-hash" and manifest["dim"] == 128 and manifest["index_kind"] == kind
    assert manifest["passage_count"] == len(built) and manifest["product_count"] == len(products)
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["catalog_sha256"]) and manifest["created"]
    loaded = CatalogIndex.load(tmp_path / "idx", embedder)
    assert loaded.kind == kind and loaded.passages == built.passages
    assert dict(loaded.products) == dict(built.products)
    for query in ("wool", "espresso frother", "cast iron"):
        assert loaded.search(query, 4) == built.search(query, 4)
    with pytest.raises(CatalogError, match="embedding_model differs"):
        CatalogIndex.load(tmp_path / "idx", HashEmbedder(name="other-model"))


def test_failed_save_leaves_the_previous_index_intact(tmp_path: Path, catalog_file: Path, embedder: HashEmbedder,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    passages = catalog_passages(load_catalog(catalog_file))
    build_index(passages, embedder).save(tmp_path / "idx")
    before = read_manifest(tmp_path / "idx")

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(index_module, "_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        build_index(passages[:2], embedder).save(tmp_path / "idx")
    assert read_manifest(tmp_path / "idx") == before
    assert len(CatalogIndex.load(tmp_path / "idx", embedder)) == len(passages)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.jsonl", "idx"]  # no temp dirs left behind


def test_save_refuses_to_replace_a_foreign_directory(tmp_path: Path, embedder: HashEmbedder) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(CatalogError, match="not an index directory"):
        build_index([Passage("a#0", "a", "x")], embedder).save(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text(encoding="utf-8") == "mine"


# ---------------------------------------------------------------- open_index and staleness


def test_open_index_builds_then_reuses(tmp_path: Path, catalog_file: Path, embedder: HashEmbedder) -> None:
    settings = make_settings(catalog_file, tmp_path / "idx")
    assert index_status(settings, embedder)["exists"] is False
    first = open_index(settings, embedder)
    built_with = embedder.encoded
    assert built_with == len(first) and (tmp_path / "idx" / "manifest.json").is_file()
    second = open_index(settings, embedder)
    assert embedder.encoded == built_with  # loaded, not re-embedded
    assert second.manifest["created"] == first.manifest["created"]
    assert second.search("scarf", 1) == first.search("scarf", 1)
    status = index_status(settings, embedder)
    assert status["fresh"] is True and status["stale"] == [] and status["passages"] == len(first)


def test_changed_catalogue_is_rebuilt_or_refused(tmp_path: Path, catalog_file: Path, embedder: HashEmbedder) -> None:
    rebuild = make_settings(catalog_file, tmp_path / "idx")
    refuse = make_settings(catalog_file, tmp_path / "idx", on_stale="refuse")
    open_index(rebuild, embedder)
    write_jsonl(catalog_file, [*PRODUCTS, {"id": "P006", "title": "Yoga mat", "description": "Non-slip mat"}])
    assert index_status(refuse, embedder)["stale"] == ["catalog_sha256"]
    with pytest.raises(CatalogError) as info:
        open_index(refuse, embedder)
    message = str(info.value)
    assert "catalog_sha256 differs" in message and f"mailcascade index build {catalog_file}" in message
    assert "embedding_model" not in message
    assert "P006" not in {p.product_id for p in CatalogIndex.load(tmp_path / "idx", embedder).passages}
    rebuilt = open_index(rebuild, embedder)
    assert rebuilt.search("yoga mat", 1)[0].product_id == "P006"
    assert index_status(refuse, embedder)["fresh"] is True


def test_changed_model_or_kind_is_detected(tmp_path: Path, catalog_file: Path, embedder: HashEmbedder) -> None:
    settings = make_settings(catalog_file, tmp_path / "idx", on_stale="refuse")
    open_index(settings, embedder)
    other = HashEmbedder(dim=64, name="fake-hash-v2")
    with pytest.raises(CatalogError, match=r"embedding_model differs \(index: 'fake-hash', now: 'fake-hash-v2'\); "
                                           r"dim differs \(index: 128, now: 64\)"):
        open_index(settings, other)
    hnsw = make_settings(catalog_file, tmp_path / "idx", on_stale="refuse", index_kind="hnsw")
    assert index_status(hnsw, embedder)["stale"] == ["index_kind"]
    with pytest.raises(CatalogError, match="index_kind differs"):
        open_index(hnsw, embedder)
    rebuilt = open_index(make_settings(catalog_file, tmp_path / "idx", index_kind="hnsw"), other)
    assert rebuilt.kind == "hnsw" and rebuilt.dim == 64
    assert read_manifest(tmp_path / "idx")["embedding_model"] == "fake-hash-v2"


def test_corrupt_index_is_rebuilt_or_refused(tmp_path: Path, catalog_file: Path, embedder: HashEmbedder) -> None:
    settings = make_settings(catalog_file, tmp_path / "idx")
    open_index(settings, embedder)
    (tmp_path / "idx" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(CatalogError, match="cannot read the FAISS index"):
        open_index(make_settings(catalog_file, tmp_path / "idx", on_stale="refuse"), embedder)
    assert len(open_index(settings, embedder).search("scarf", 2)) == 2


def test_passages_file_as_catalogue(tmp_path: Path, embedder: HashEmbedder) -> None:
    path = write_jsonl(tmp_path / "passages.jsonl", [
        {"passage_id": "q1-0", "product_id": "B001", "text": "The drawer fits most Frigidaire fridges."},
        {"passage_id": "q1-1", "product_id": "B001", "text": "Colour is clear plastic."},
        {"passage_id": "q2-0", "product_id": "B002", "text": "Battery lasts ten hours of playback."},
    ])
    index = open_index(make_settings(path, tmp_path / "idx"), embedder)
    assert dict(index.products) == {} and len(index) == 3
    assert index.search("how long does the battery last", 1)[0].passage_id == "q2-0"
    assert read_manifest(tmp_path / "idx")["product_count"] == 2


def test_missing_catalogue_is_a_clear_error(tmp_path: Path, embedder: HashEmbedder) -> None:
    settings = make_settings(tmp_path / "nope.jsonl", tmp_path / "idx")
    with pytest.raises(CatalogError, match=r"catalogue not found: .*nope\.jsonl"):
        open_index(settings, embedder)
    assert index_status(settings, embedder)["catalog_exists"] is False


def test_embedder_dimension_is_known_without_loading_the_model() -> None:
    embedder = Embedder(EmbeddingSettings())
    assert embedder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.dim_hint() == 384
    assert Embedder(EmbeddingSettings(model=str(Path("/nonexistent/model")))).dim_hint() is None


# ---------------------------------------------------------------- real embeddings (slow)


@pytest.mark.slow
def test_real_minilm_ranks_the_matching_product_first(tmp_path: Path) -> None:
    rows = [
        {"id": "E1", "title": "Over-ear wireless headphones", "category": "electronics",
         "description": "Bluetooth headphones with active noise cancellation and 30 hour battery."},
        {"id": "E2", "title": "Stainless steel water bottle", "category": "outdoor",
         "description": "Keeps drinks cold for 24 hours."},
        {"id": "E3", "title": "Linen bed sheets", "category": "home", "description": "Breathable queen size set."},
        {"id": "E4", "title": "Wired earbuds", "category": "electronics",
         "description": "Budget in-ear buds with a mic."},
        {"id": "E5", "title": "Espresso machine", "category": "kitchen", "description": "Fifteen bar pump."},
    ]
    settings = make_settings(write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "idx")
    embedder = Embedder(settings.embedding)
    vectors = embedder.encode(["a", "b c"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    index = open_index(settings, embedder)
    hits = index.search("wireless headphones noise cancelling", k=3)
    assert hits[0].product_id == "E1"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    reopened = open_index(settings, Embedder(settings.embedding))
    assert reopened.search("wireless headphones noise cancelling", 1)[0].passage_id == hits[0].passage_id


@pytest.mark.slow
def test_missing_model_names_the_install_hint() -> None:
    embedder = Embedder(EmbeddingSettings(model="/nonexistent/model-dir"))
    with pytest.raises(CatalogError, match=r"cannot load embedding model '/nonexistent/model-dir'.*pip install"):
        embedder.encode(["hello"])
