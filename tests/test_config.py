from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailcascade.config import LOCAL_BASE_URL, load_settings
from mailcascade.errors import ConfigError
from mailcascade.types import OUT_OF_SCOPE


def test_defaults_need_no_file_and_point_at_the_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.llm.base_url == LOCAL_BASE_URL
    assert settings.uses_local_server
    assert settings.source == ""
    assert settings.department_names[-1] == OUT_OF_SCOPE
    assert "orders" in settings.department_names


def test_toml_then_env_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "mailcascade.toml"
    cfg.write_text(
        """
prompts_dir = "my_prompts"
[llm]
model = "from-file"
structured_output = "json_schema"
[retrieval]
top_k = 3
[[departments]]
name = "sales"
description = "Buying things"
[validation.policy.route]
truncated = "reask"
""",
        encoding="utf-8",
    )
    env = {"OPENAI_BASE_URL": "http://example.invalid/v1", "OPENAI_API_KEY": "sk-secret",
           "MAILCASCADE_RETRIEVAL__TOP_K": "7", "MAILCASCADE_LLM__MODEL": "from-env"}
    s = load_settings(cfg, env=env)
    assert s.llm.base_url == "http://example.invalid/v1"
    assert not s.uses_local_server
    assert s.llm.model == "from-env"
    assert s.llm.structured_output == "json_schema"
    assert s.retrieval.top_k == 7
    assert s.department_names == ("sales", OUT_OF_SCOPE)
    assert s.validation.policy["route"]["truncated"] == "reask"
    assert s.prompts_path() == (tmp_path / "my_prompts").resolve()


def test_secrets_are_redacted_in_the_printed_config(tmp_path: Path) -> None:
    s = load_settings(None, env={"OPENAI_API_KEY": "sk-very-secret"})
    text = s.to_json()
    assert "sk-very-secret" not in text
    assert json.loads(text)["llm"]["api_key"] == "***redacted***"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[llm]\nstructured_output = 'xml'", "llm.structured_output"),
        ("[llm]\nmodle = 'x'", "modle"),
        ("[retrieval]\ntop_k = 'many'", "retrieval.top_k"),
        ("[retrieval]\ntop_k = -1", "must not be negative"),
        ("departments = [{name = 'a'}, {name = 'a'}]", "duplicate"),
        ("departments = []", "non-empty"),
        ("[llm", "invalid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, toml: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match=needle):
        load_settings(cfg, env={})


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_the_example_config_lists_the_true_defaults() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "mailcascade.toml"
    loaded = load_settings(example, env={})
    defaults = load_settings(None, env={})
    # relative paths in a file are relative to that file
    assert loaded.catalog.index_dir == str(example.parent / ".mailcascade" / "index")
    assert loaded.store.path == str(example.parent / ".mailcascade" / "mailcascade.db")
    loaded = loaded.replace(catalog=defaults.catalog, store=defaults.store, source="")
    assert loaded == defaults.replace(source="")
