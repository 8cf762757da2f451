"""Eval sets: a cases file, or an eval definition (TOML) naming an adapter, its data and its mapping.

Path rules in a definition file:
- `path`, `train_path`: relative to the data directory, unless they start with "./" or "../" (then relative
  to the definition file) or are absolute.
- `mapping`, `catalog`, `config`: relative to the definition file (or absolute).
The data directory is the `data_dir` argument, else $MAILCASCADE_DATA_DIR, else ../shared/data (relative to
the current directory).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailcascade.catalog import Passage
from mailcascade.config import Settings, load_settings, read_toml
from mailcascade.errors import EvalError
from mailcascade.eval import adapters
from mailcascade.eval.cases import EvalCase, load_cases

DATA_DIR_ENV = "MAILCASCADE_DATA_DIR"
DEFAULT_DATA_DIR = Path("..") / "shared" / "data"
ADAPTERS = ("bitext", "hint3", "epqa", "jsonl")
_KEYS = {"name", "description", "adapter", "path", "train_path", "mapping", "level", "catalog", "config", "tuned_on"}
#: what a definition may say its settings were tuned on: "train"/"dev" are fine, "eval"/"test" raise an alarm
TUNED_ON = ("train", "dev", "eval", "test")


@dataclass(frozen=True)
class EvalSet:
    """Everything a run needs to know about one eval set."""

    name: str
    cases: list[EvalCase]  # the cases to score
    train: list[EvalCase] = field(default_factory=list)  # cases a learner may use (router examples)
    passages: list[Passage] | None = None  # a catalogue given by the eval set itself (ePQA)
    catalog: Path | None = None  # a catalogue file instead
    config: Path | None = None  # pipeline config TOML
    mapping: Path | None = None  # label -> department mapping file
    definition: Path | None = None  # the definition file, None for a bare .jsonl
    level: str = "department"  # "label" for label-level routing (HINT3)
    adapter: str = "jsonl"
    source: Path | None = None  # the data file the cases came from
    tuned_on: str = ""  # the definition's `tuned_on`: what the settings were chosen on ("eval": on these cases)

    def departments(self) -> list[str]:
        """Expected departments seen in the cases, sorted."""
        return sorted({c.expected.department for c in self.cases if c.expected.department is not None})


def resolve_data_dir(data_dir: str | Path | None = None, env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """The data directory and where that choice came from (for error messages)."""
    env = os.environ if env is None else env
    if data_dir is not None:
        return Path(data_dir), "--data-dir"
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]), f"${DATA_DIR_ENV}"
    return DEFAULT_DATA_DIR, "the default, relative to the current directory"


def load_eval_set(path: str | Path, *, data_dir: str | Path | None = None) -> EvalSet:
    """Load a .jsonl cases file (no train split) or a .toml eval definition."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return EvalSet(name=p.stem, cases=load_cases(p), source=p)
    if suffix != ".toml":
        raise EvalError(f"{p}: expected a .jsonl cases file or a .toml eval definition")
    raw = read_toml(p, EvalError, "eval definition")
    return _from_definition(p, raw, resolve_data_dir(data_dir))


def check_departments(eval_set: EvalSet, departments: Collection[str]) -> None:
    """Every expected department (cases and train) must be a configured one."""
    seen = {c.expected.department for c in (*eval_set.cases, *eval_set.train) if c.expected.department is not None}
    unknown = sorted(d for d in seen if d not in departments)
    if unknown:
        hint = f"check {eval_set.mapping}" if eval_set.mapping else "check the expected departments"
        raise EvalError(f"eval set {eval_set.name}: expected department(s) {', '.join(unknown)} are not configured "
                        f"({', '.join(departments)}); {hint} or name a config whose departments include them")


def _from_definition(defn: Path, raw: dict[str, Any], data: tuple[Path, str]) -> EvalSet:
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise EvalError(f"{defn}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise EvalError(f"{defn}: {key} must be a string, got {value!r}")
    tuned_on = raw.get("tuned_on", "")
    if tuned_on and tuned_on not in TUNED_ON:
        raise EvalError(f"{defn}: tuned_on must be one of {', '.join(TUNED_ON)}, got {tuned_on!r}")
    adapter = raw.get("adapter", "")
    if adapter not in ADAPTERS:
        raise EvalError(f"{defn}: adapter must be one of {', '.join(ADAPTERS)}, got {adapter!r}")
    level = raw.get("level") or "department"
    if level not in ("department", "label") or (level == "label" and adapter != "hint3"):
        raise EvalError(f"{defn}: level {level!r} is not supported by adapter {adapter} "
                        "(only hint3 takes level = \"label\")")
    if not raw.get("path"):
        raise EvalError(f"{defn}: path is required (the data file for adapter {adapter})")
    data_path = _data_file(defn, "path", raw["path"], data)
    train_path = _data_file(defn, "train_path", raw["train_path"], data) if raw.get("train_path") else None
    mapping = _local_file(defn, "mapping", raw.get("mapping", ""))
    catalog = _local_file(defn, "catalog", raw.get("catalog", ""))
    config = _local_file(defn, "config", raw.get("config", ""))
    if mapping is None and (adapter == "bitext" or (adapter == "hint3" and level == "department")):
        raise EvalError(f"{defn}: adapter {adapter} needs mapping = \"mappings/....toml\" (label -> department)")
    if mapping is not None and adapter in ("epqa", "jsonl"):
        raise EvalError(f"{defn}: adapter {adapter} takes no mapping; remove mapping = {raw['mapping']!r}")
    if catalog is not None and adapter == "epqa":
        raise EvalError(f"{defn}: adapter epqa brings its own catalogue (the candidate passages); remove catalog")

    passages: list[Passage] | None = None
    train: list[EvalCase] = []
    if adapter == "bitext":
        assert mapping is not None
        cases = adapters.bitext(data_path, mapping, split="test")
        train = adapters.bitext(train_path, mapping, split="train") if train_path else []
    elif adapter == "hint3":
        hint3_level: adapters.Level = "label" if level == "label" else "department"
        cases = adapters.hint3(data_path, mapping, hint3_level, split="test")
        train = adapters.hint3(train_path, mapping, hint3_level, split="train") if train_path else []
    elif adapter == "epqa":
        cases, passages = adapters.epqa(data_path)
        if train_path:
            raise EvalError(f"{defn}: adapter epqa has no train split; remove train_path")
    else:
        cases = adapters.jsonl(data_path)
        train = adapters.jsonl(train_path) if train_path else []
    clash = sorted({c.id for c in cases} & {c.id for c in train})
    if clash:
        raise EvalError(f"{defn}: case id(s) in both the cases and the train split: {', '.join(clash[:5])}")
    eval_set = EvalSet(name=raw.get("name") or defn.stem, cases=cases, train=train, passages=passages,
                       catalog=catalog, config=config, mapping=mapping, definition=defn, level=level,
                       adapter=adapter, source=data_path, tuned_on=tuned_on)
    check_departments(eval_set, _settings(config).department_names)
    return eval_set


def _settings(config: Path | None) -> Settings:
    if config is None:
        return Settings()
    env = {k: v for k, v in os.environ.items() if k != DATA_DIR_ENV}
    return load_settings(config, env=env)


def _data_file(defn: Path, key: str, value: str, data: tuple[Path, str]) -> Path:
    data_dir, origin = data
    if Path(value).is_absolute():
        resolved, rule = Path(value), "an absolute path"
    elif value.startswith(("./", "../")):
        resolved, rule = defn.parent / value, "relative to the definition file, as it starts with ./ or ../"
    else:
        resolved = data_dir / value
        rule = (f"relative to the data directory {data_dir}, from {origin}; point at the data with "
                f"--data-dir DIR or {DATA_DIR_ENV}=DIR, DIR being the folder that holds {value}")
    if not resolved.is_file():
        raise EvalError(f"{defn}: {key} = {value!r}: file not found: {resolved} ({rule})")
    return resolved


def _local_file(defn: Path, key: str, value: str) -> Path | None:
    if not value:
        return None
    resolved = Path(value) if Path(value).is_absolute() else defn.parent / value
    if not resolved.is_file():
        raise EvalError(f"{defn}: {key} = {value!r}: file not found: {resolved} (relative to the definition file)")
    return resolved


def training_examples(
    path: str | Path, config: str | Path | None, *, data_dir: str | Path | None = None,
) -> tuple[Settings, list[str], list[str]]:
    """The settings and the (texts, departments) a router learns from: a JSONL of {"text", "department"} checked
    against the configured departments, or an eval definition's train split (with the definition's own config
    unless `config` is given)."""
    from mailcascade.stages.embed_route import email_text, load_examples

    p = Path(path)
    if p.suffix.lower() == ".toml":
        eval_set = load_eval_set(p, data_dir=data_dir)
        settings = load_settings(config) if config else load_settings(eval_set.config)
        check_departments(eval_set, settings.department_names)
        train = [c for c in eval_set.train if c.expected.department is not None]
        if not train:
            raise EvalError(f"{p}: this eval definition has no train split (train_path) to learn from")
        return settings, [email_text(c.email) for c in train], [str(c.expected.department) for c in train]
    settings = load_settings(config)
    pairs = load_examples(p, settings.department_names)
    return settings, [t for t, _ in pairs], [label for _, label in pairs]
