"""[catalog.hnsw] M, efConstruction and efSearch: they reach the FAISS index, the manifest records the graph's shape,
a change of shape makes the saved index stale, and efSearch is applied at search time without a rebuild."""

from __future__ import annotations

from pathlib import Path

import faiss
import pytest

from fakes import HashEmbedder
from mailcascade.catalog import CatalogIndex, build_index, catalog_passages, index_status, load_catalog, open_index
from mailcascade.config import CatalogSettings, HnswSettings, Settings, load_settings
from mailcascade.errors import ConfigError

CATALOG = Path(__file__).resolve().parents[1] / "src" / "mailcascade" / "data" / "catalog.jsonl"


def _settings(tmp_path: Path, **hnsw: int) -> Settings:
    return Settings(catalog=CatalogSettings(path=str(CATALOG), index_dir=str(tmp_path / "idx"), index_kind="hnsw",
                                            hnsw=HnswSettings(**hnsw)))


def _graph(index: CatalogIndex) -> tuple[int, int, int]:
    hnsw = faiss.downcast_index(index._index).hnsw
    return int(hnsw.nb_neighbors(1)), int(hnsw.efConstruction), int(hnsw.efSearch)


def test_the_settings_reach_the_faiss_index_and_the_manifest(tmp_path: Path) -> None:
    built = build_index(catalog_passages(load_catalog(CATALOG)), HashEmbedder(), kind="hnsw",
                        hnsw=HnswSettings(m=12, ef_construction=40, ef_search=24))
    assert _graph(built) == (12, 40, 24)
    assert built.manifest["hnsw"] == {"M": 12, "ef_construction": 40}
    built.save(tmp_path / "idx")
    loaded = CatalogIndex.load(tmp_path / "idx", HashEmbedder(), ef_search=99)
    assert _graph(loaded)[2] == 99


def test_a_new_graph_shape_is_stale_but_a_new_ef_search_is_not(tmp_path: Path) -> None:
    embedder = HashEmbedder()
    open_index(_settings(tmp_path, m=16, ef_construction=64), embedder)
    assert index_status(_settings(tmp_path, m=16, ef_construction=64, ef_search=300), embedder)["stale"] == []
    assert _graph(open_index(_settings(tmp_path, m=16, ef_construction=64, ef_search=300), embedder))[2] == 300
    stale = index_status(_settings(tmp_path, m=24, ef_construction=64), embedder)
    assert stale["stale"] == ["hnsw"] and "M" in stale["details"]["hnsw"]
    rebuilt = open_index(_settings(tmp_path, m=24, ef_construction=64), embedder)
    assert rebuilt.manifest["hnsw"] == {"M": 24, "ef_construction": 64}


def test_the_search_results_are_hits_in_score_order(tmp_path: Path) -> None:
    index = open_index(_settings(tmp_path), HashEmbedder())
    hits = index.search("waterproof hiking boots", 5)
    assert len(hits) == 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_bad_values_are_one_line_config_errors(tmp_path: Path) -> None:
    (tmp_path / "mailcascade.toml").write_text("[catalog.hnsw]\nm = 1\n")
    with pytest.raises(ConfigError, match=r"catalog\.hnsw\.m: must be >= 2"):
        load_settings(tmp_path / "mailcascade.toml", env={})
    settings = load_settings(None, env={"MAILCASCADE_CATALOG__HNSW__EF_SEARCH": "256"})
    assert settings.catalog.hnsw.ef_search == 256
