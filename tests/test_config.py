from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from mailcascade.config import (
    LOCAL_BASE_URL,
    POLICY_STAGES,
    LLMSettings,
    Settings,
    is_secret_key,
    load_settings,
    mask_url,
    settings_from_dict,
)
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
        ("[retrieval]\ntop_k = -1", r"retrieval.top_k: must be >= 1, got -1"),
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
    assert loaded.embedding.cache_dir == str(example.parent / ".mailcascade" / "models")
    assert loaded.local_server.cache_dir == str(example.parent / ".mailcascade" / "models")
    assert loaded.catalog.hnsw == defaults.catalog.hnsw
    embedding = dataclasses.replace(loaded.embedding, cache_dir=defaults.embedding.cache_dir)
    local_server = dataclasses.replace(loaded.local_server, cache_dir=defaults.local_server.cache_dir)
    loaded = loaded.replace(catalog=defaults.catalog, store=defaults.store, embedding=embedding,
                            local_server=local_server, source="")
    assert loaded == defaults.replace(source="")


def _load_toml(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> Settings:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml, encoding="utf-8")
    return load_settings(cfg, env=env or {})


def _config_error(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load_toml(tmp_path, toml, env)
    message = str(info.value)
    assert "\n" not in message, message  # one line
    return info.value


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[llm]\nmax_retries = 1.7", "llm.max_retries: expected a whole number, got 1.7 (write e.g. max_retries = 4)"),
        ("[llm]\nmax_retries = 2.0", "llm.max_retries: expected a whole number, got 2.0 (write e.g. max_retries = 4)"),
        ("[llm]\nmax_retries = true", "llm.max_retries: expected a whole number, got true (write e.g. max_retries"),
        ("[llm]\nmax_retries = '4'", 'llm.max_retries: expected a whole number, got "4" (write e.g. max_retries = 4)'),
        ("concurrency = [4]", "concurrency: expected a whole number, got a list of 1 (write e.g. concurrency = 0)"),
        ("[llm]\ntimeout_s = true", "llm.timeout_s: expected a finite number, got true (write e.g. timeout_s = 60.0)"),
        ("[llm]\ntimeout_s = inf", "llm.timeout_s: expected a finite number, got Infinity"),
        ("[llm]\ntimeout_s = nan", "llm.timeout_s: expected a finite number, got NaN"),
        ("[store]\ncache = 1", "store.cache: expected true or false, got 1"),
        ("[llm]\nmodel = 5", 'llm.model: expected a string, got 5 (write e.g. model = "smollm2-135m-instruct")'),
    ],
)
def test_values_of_the_wrong_type_are_refused(tmp_path: Path, toml: str, message: str) -> None:
    assert str(_config_error(tmp_path, toml)).startswith(message)


def test_numbers_keep_their_types(tmp_path: Path) -> None:
    s = _load_toml(tmp_path, "concurrency = 8\n[llm]\ntimeout_s = 30\nmax_retry_after_s = 5\n[route]\noos_quantile = 0")
    assert s.concurrency == 8 and type(s.concurrency) is int
    assert s.llm.timeout_s == 30.0 and type(s.llm.timeout_s) is float  # a float setting takes an int
    assert type(s.llm.max_retry_after_s) is float and type(s.route.oos_quantile) is float


@pytest.mark.parametrize(
    ("key", "bad", "allowed"),
    [
        ("llm.timeout_s", 0, "> 0"), ("llm.connect_timeout_s", -1.5, "> 0"), ("llm.max_retry_after_s", 0, "> 0"),
        ("local_server.startup_timeout_s", 0, "> 0"),
        ("concurrency", -1, ">= 0"), ("validation.max_attempts", 0, ">= 1"), ("retrieval.top_k", 0, ">= 1"),
        ("route.neighbours", 0, ">= 1"), ("input.max_email_bytes", 0, ">= 1"), ("input.max_prompt_chars", 0, ">= 1"),
        ("local_server.n_ctx", 0, ">= 1"), ("local_server.n_threads", -1, ">= 0"), ("embedding.batch_size", 0, ">= 1"),
        ("llm.max_consecutive_failures", 0, ">= 1"),
        ("llm.max_retries", -1, ">= 0"), ("llm.backoff_initial_s", -0.1, ">= 0"), ("llm.backoff_max_s", -1, ">= 0"),
        ("llm.usd_per_mtok_in", -1, ">= 0"), ("llm.usd_per_mtok_out", -0.5, ">= 0"),
        ("validation.max_reask_tokens", -1, ">= 0"), ("route.few_shot", -1, ">= 0"),
        ("validation.max_tokens_growth", 0.5, ">= 1"),
        ("route.oos_quantile", 1, "in [0, 1)"), ("route.oos_quantile", -0.1, "in [0, 1)"),
    ],
)
def test_out_of_range_values_name_the_key_the_value_and_the_range(key: str, bad: float, allowed: str) -> None:
    env = {"MAILCASCADE_" + key.upper().replace(".", "__"): json.dumps(bad)}
    with pytest.raises(ConfigError) as info:
        load_settings(None, env=env)
    assert str(info.value) == f"{key}: must be {allowed}, got {json.dumps(bad)}"
    assert info.value.key == key


def _numeric_keys() -> list[str]:
    keys = []
    for f in dataclasses.fields(Settings):
        hint = get_type_hints(Settings)[f.name]
        if hint in (int, float):
            keys.append(f.name)
        elif dataclasses.is_dataclass(hint):
            keys += [f"{f.name}.{n}" for n, h in get_type_hints(hint).items() if h in (int, float)]
    return keys


@pytest.mark.parametrize("key", _numeric_keys())
def test_every_numeric_setting_has_a_range(key: str) -> None:
    section, _, name = key.rpartition(".")
    raw: dict[str, Any] = {section: {name: -1}} if section else {name: -1}
    with pytest.raises(ConfigError, match=rf"^{key}: must be "):
        settings_from_dict(raw)


def test_boundary_values_load(tmp_path: Path) -> None:
    s = _load_toml(tmp_path, """
concurrency = 1
[llm]
max_retries = 0
backoff_initial_s = 0
timeout_s = 0.01
max_consecutive_failures = 1
max_retry_after_s = 0.5
[route]
oos_quantile = 0.99
few_shot = 0
[validation]
max_tokens_growth = 1
max_reask_tokens = 0
""")
    assert (s.concurrency, s.llm.max_retries, s.llm.timeout_s, s.route.oos_quantile) == (1, 0, 0.01, 0.99)
    assert (s.llm.max_consecutive_failures, s.llm.max_retry_after_s) == (1, 0.5)
    assert s.validation.max_tokens_growth == 1.0


def test_new_llm_settings_have_their_defaults_and_env_overrides() -> None:
    assert (LLMSettings().max_consecutive_failures, LLMSettings().max_retry_after_s) == (20, 120.0)
    s = load_settings(None, env={"MAILCASCADE_LLM__MAX_CONSECUTIVE_FAILURES": "3",
                                 "MAILCASCADE_LLM__MAX_RETRY_AFTER_S": "7.5"})
    assert (s.llm.max_consecutive_failures, s.llm.max_retry_after_s) == (3, 7.5)


@pytest.mark.parametrize(
    ("env", "check"),
    [
        ({"MAILCASCADE_RETRIEVAL__TOP_K": "8"}, lambda s: s.retrieval.top_k == 8),
        ({"MAILCASCADE_CONCURRENCY": "2"}, lambda s: s.concurrency == 2),
        ({"MAILCASCADE_LLM__TIMEOUT_S": "12"}, lambda s: s.llm.timeout_s == 12.0),
        ({"MAILCASCADE_STORE__CACHE": "false"}, lambda s: s.store.cache is False),
        ({"MAILCASCADE_STORE__CACHE": "0"}, lambda s: s.store.cache is False),
        ({"MAILCASCADE_STORE__STORE_EMAIL_BODIES": "True"}, lambda s: s.store.store_email_bodies is True),
        ({"MAILCASCADE_LLM__API_KEY": "123456789"}, lambda s: s.llm.api_key == "123456789"),  # text, not a number
        ({"MAILCASCADE_LLM__MODEL": "null"}, lambda s: s.llm.model == "null"),
        ({"MAILCASCADE_VALIDATION__POLICY": '{"draft": {"truncated": "fail"}}'},
         lambda s: s.validation.policy == {"draft": {"truncated": "fail"}}),
    ],
)
def test_env_overrides_still_work(env: dict[str, str], check: Any) -> None:
    assert check(load_settings(None, env=env))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAILCASCADE_RETRIEVAL__TOP_K": "8.5"}, "retrieval.top_k: expected a whole number, got 8.5"),
        ({"MAILCASCADE_RETRIEVAL__TOP_K": "true"}, "retrieval.top_k: expected a whole number, got true"),
        ({"MAILCASCADE_RETRIEVAL__TOP_K": "many"}, 'retrieval.top_k: expected a whole number, got "many"'),
        ({"MAILCASCADE_STORE__CACHE": "yes"}, 'store.cache: expected true or false, got "yes"'),
    ],
)
def test_bad_env_values_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env=env)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("toml", "env", "needle", "key"),
    [
        ("llm = 5", {}, "llm: expected a table, got 5", "llm"),
        ("llm = 5", {"OPENAI_BASE_URL": "http://x.invalid/v1"}, "llm is 5, not a table", "llm.base_url"),
        ("llm = 'abc'", {"OPENAI_API_KEY": "sk-secret-1"}, 'llm is "abc", not a table', "llm.api_key"),
        ("llm = 5", {"MAILCASCADE_LLM__MODEL": "m"}, "MAILCASCADE_LLM__MODEL: cannot set llm.model", "llm.model"),
        ("[[llm]]\nmodel = 'x'", {}, "llm: expected a table, got a list of 1", "llm"),
        ("concurrency = 4", {"MAILCASCADE_CONCURRENCY__X": "1"}, "concurrency is 4, not a table", "concurrency.x"),
        ("", {"MAILCASCADE_LLM": "5"}, "llm: expected a table, got 5", "llm"),
        ("catalog = 5", {}, "catalog: expected a table, got 5", "catalog"),
        ("embedding = 'models/x'\nprompts_dir = 3", {}, "", ""),  # _resolve_paths must not trip over either
        ("store = []", {}, "store: expected a table, got a list of 0", "store"),
        ("validation = { policy = 5 }", {}, "validation.policy: expected a table of stage", "validation.policy"),
        ("departments = 5", {}, "departments: expected a non-empty list of { name, description }, got 5",
         "departments"),
        ("departments = 'orders'", {}, 'departments: expected a non-empty list', "departments"),
        ("departments = [5]", {}, "departments[0]: expected a table { name, description }, got 5", "departments"),
        ("departments = [{ name = 5 }]", {}, "departments[0]: needs a non-empty name, got 5", "departments"),
        ("departments = [{ name = 'a', description = 5 }]", {}, "departments[0]: description must be a string",
         "departments"),
        ("departments = [{ name = 'a', descr = 'x' }]", {}, "departments[0]: unknown field(s) descr", "departments"),
        ("[departments]\norders = 5", {}, "departments[0]: description must be a string, got 5", "departments"),
    ],
)
def test_values_of_the_wrong_shape_are_one_line_config_errors(
    tmp_path: Path, toml: str, env: dict[str, str], needle: str, key: str
) -> None:
    error = _config_error(tmp_path, toml, env)
    assert needle in str(error)
    assert error.key == key or not key
    assert "sk-secret-1" not in str(error)


def test_departments_as_a_table_still_load(tmp_path: Path) -> None:
    s = _load_toml(tmp_path, "[departments]\nsales = 'Buying things'\nhelp = 'Anything else'")
    assert s.department_names == ("sales", "help", OUT_OF_SCOPE)
    assert s.departments[0].description == "Buying things"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[validation.policy]\nrout = { truncated = 'reask' }",
         "validation.policy.rout: unknown stage 'rout'; known: route, draft"),
        ("[validation.policy]\nretrieve = { truncated = 'reask' }",
         "validation.policy.retrieve: unknown stage 'retrieve'; known: route, draft"),
        ("[validation.policy]\nroute = 'reask'", 'validation.policy.route: expected a table of failure code = action, '
         'got "reask"'),
        ("[validation.policy]\nroute = { truncatd = 'reask' }",
         "validation.policy.route: unknown failure code 'truncatd'; known: "),
        ("[validation.policy]\ndraft = { truncated = 'retry' }",
         'validation.policy.draft.truncated: unknown action "retry"; use one of repair, reask, fail, more_tokens'),
        ("[validation.policy]\ndraft = { unquoted_key = 3 }",  # a code with "key" in it is not a secret
         "validation.policy.draft.unquoted_key: unknown action 3; use one of"),
    ],
)
def test_bad_policy_tables_are_refused_at_load_time(tmp_path: Path, toml: str, message: str) -> None:
    assert str(_config_error(tmp_path, toml)).startswith(message)


def test_good_policy_tables_load(tmp_path: Path) -> None:
    s = _load_toml(tmp_path, "[validation.policy]\nroute = { truncated = 'reask' }\ndraft = { no_json = 'fail' }")
    assert s.validation.policy == {"route": {"truncated": "reask"}, "draft": {"no_json": "fail"}}
    assert POLICY_STAGES == ("route", "draft")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[llm]\napi_key = 12345678", "llm.api_key: expected a string, got a number (value hidden)"),
        ("[llm]\napi_key = true", "llm.api_key: expected a string, got true or false (value hidden)"),
        ("[llm]\napi_key = ['sk-secret-1']", "llm.api_key: expected a string, got a list of 1"),
    ],
)
def test_errors_about_secrets_never_echo_the_value(tmp_path: Path, toml: str, message: str) -> None:
    error = _config_error(tmp_path, toml)
    assert str(error) == message
    assert "12345678" not in str(error) and "sk-secret-1" not in str(error)


@pytest.mark.parametrize(
    ("name", "secret"),
    [("llm.api_key", True), ("access_token", True), ("db_password", True), ("client_secret", True),
     ("max_reask_tokens", False), ("validation.max_tokens_growth", False), ("llm.model", False), ("top_k", False)],
)
def test_is_secret_key(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://user:hunter2@example.com/v1", "https://user:***@example.com/v1"),
        ("http://u:p%40ss:w@host:8080/v1?x=1", "http://u:***@host:8080/v1?x=1"),
        ("http://u:p@ss@host/v1", "http://u:***@host/v1"),  # an unencoded @ in the password: up to the last @
        ("https://:token@example.com", "https://:***@example.com"),
        ("https://user@example.com/v1", "https://user@example.com/v1"),  # no password
        ("https://user:@example.com/v1", "https://user:@example.com/v1"),  # an empty one
        ("http://127.0.0.1:8765/v1", "http://127.0.0.1:8765/v1"),
        ("http://host:8080/a@b", "http://host:8080/a@b"),  # an @ in the path is not userinfo
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_to_dict_masks_url_passwords_and_keeps_the_api_key_redaction() -> None:
    env = {"OPENAI_BASE_URL": "https://bob:hunter2@proxy.invalid/v1", "OPENAI_API_KEY": "sk-very-secret"}
    s = load_settings(None, env=env)
    assert s.llm.base_url == env["OPENAI_BASE_URL"]  # the setting itself keeps the password
    shown = s.to_dict()
    assert shown["llm"]["base_url"] == "https://bob:***@proxy.invalid/v1"
    assert shown["llm"]["api_key"] == "***redacted***"
    text = s.to_json()
    assert "hunter2" not in text and "sk-very-secret" not in text
    assert "hunter2" not in repr(s.to_dict()) and "sk-very-secret" not in repr(s)
    assert s.to_dict(redact=False)["llm"]["base_url"] == env["OPENAI_BASE_URL"]
    assert s.to_dict(redact=False)["llm"]["api_key"] == "sk-very-secret"


def test_to_dict_round_trips_through_settings_from_dict() -> None:
    s = load_settings(None, env={"MAILCASCADE_VALIDATION__POLICY": '{"route": {"unquoted_key": "reask"}}'})
    data = json.loads(json.dumps(s.to_dict()))
    assert data["validation"]["policy"] == {"route": {"unquoted_key": "reask"}}  # a code is not a secret setting
    assert settings_from_dict(data) == s.replace(source="")


def test_environment_names_that_are_not_settings_are_ignored() -> None:
    s = load_settings(None, env={"MAILCASCADE_DEBUG": "1", "MAILCASCADE_DATA_DIR": "/data"})
    assert s == load_settings(None, env={})


def test_auto_strategy_routes_the_embedded_model_by_examples_and_any_other_model_by_the_llm() -> None:
    import dataclasses

    from mailcascade.config import DEFAULT_DEPARTMENTS, SHIPPED_ROUTER_EXAMPLES, Department, RouteSettings

    def strategy(s: Settings, **kw: bool) -> tuple[str, str, str]:
        r = s.resolved(**kw).route
        return r.strategy, r.examples_path, r.oos_calibration

    local = Settings()
    assert local.route.strategy == "auto" and local.uses_local_server
    assert strategy(local) == ("embedding", str(SHIPPED_ROUTER_EXAMPLES), "off")  # the shipped examples
    assert SHIPPED_ROUTER_EXAMPLES.is_file()
    assert strategy(local, train_split=True) == ("embedding", "", "cv")  # an eval set's train split
    own = local.replace(route=RouteSettings(examples_path="mine.jsonl"))
    assert strategy(own) == ("embedding", "mine.jsonl", "cv")
    other = local.replace(departments=(*DEFAULT_DEPARTMENTS[:2], Department("travel", "trips")))
    assert strategy(other) == ("llm", "", "cv")  # nothing to learn from for these departments
    remote = load_settings(None, env={"OPENAI_BASE_URL": "https://models.example/v1"})
    assert strategy(remote) == ("llm", "", "cv") and strategy(remote, train_split=True)[0] == "llm"
    trained = remote.replace(route=RouteSettings(model_dir="runs/router"))
    assert strategy(trained)[0] == "trained"
    fixed = local.replace(route=dataclasses.replace(local.route, strategy="llm"))
    assert fixed.resolved() is fixed  # a strategy other than auto is kept as it is
