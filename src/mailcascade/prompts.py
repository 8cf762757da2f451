"""Prompt files: TOML front matter (variables, schema, model parameters) and a strictly rendered body.

A prompt file looks like::

    +++
    name = "route"
    version = "1"
    variables = ["departments", "subject", "body"]
    max_tokens = 128
    temperature = 0.0
    schema = '''{ "type": "object", ... "enum": "$department_names" ... }'''
    +++
    ### system
    You route customer emails ...
    ### user
    Subject: {{subject}}
    {{body}}

`{{name}}` placeholders are replaced; a missing, undeclared or unused variable is an error that names it.
A schema string value of the form "$name" is replaced by the value of the variable `name` (for enums that come
from configuration). The content hash covers the whole file, so any edit changes it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcascade.errors import PromptError

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ROLE_HEADING = re.compile(r"^###\s*(system|user|assistant)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    variables: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]  # (role, template)
    schema_template: Mapping[str, Any]
    max_tokens: int
    temperature: float
    hash: str  # sha256 of the file content, first 12 hex digits
    path: str
    text: str  # the whole file, as hashed

    def render(self, values: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        """Render every message; every declared variable must be given, nothing else."""
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise PromptError(f"prompt {self.name}: missing variable(s) {', '.join(missing)}",
                              prompt=self.name, variable=missing[0])
        extra = sorted(set(values) - set(self.variables))
        if extra:
            raise PromptError(f"prompt {self.name}: undeclared variable(s) {', '.join(extra)}",
                              prompt=self.name, variable=extra[0])

        def sub(match: re.Match[str]) -> str:
            value = values[match.group(1)]
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

        return tuple((role, _PLACEHOLDER.sub(sub, text)) for role, text in self.messages)

    def schema(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The output schema with "$name" strings replaced by the named variable's value."""

        def fill(node: Any) -> Any:
            if isinstance(node, str) and node.startswith("$") and node[1:] in values:
                return values[node[1:]]
            if isinstance(node, Mapping):
                return {k: fill(v) for k, v in node.items()}
            if isinstance(node, list):
                return [fill(v) for v in node]
            return node

        filled: dict[str, Any] = fill(self.schema_template)
        return filled

    @property
    def instruction_text(self) -> tuple[str, ...]:
        """The fixed text of the prompt (placeholders removed), for prompt-leak checks."""
        chunks: list[str] = []
        for _, text in self.messages:
            chunks.extend(p.strip() for p in _PLACEHOLDER.split(text)[::2] if len(p.strip()) >= 40)
        return tuple(chunks)


def parse_prompt(text: str, path: str = "<string>") -> Prompt:
    if not text.startswith("+++"):
        raise PromptError(f"{path}: must start with a +++ TOML front matter block", prompt=path)
    try:
        _, front, body = text.split("+++", 2)
    except ValueError:
        raise PromptError(f"{path}: front matter is not closed with +++", prompt=path) from None
    try:
        meta = tomllib.loads(front)
    except tomllib.TOMLDecodeError as exc:
        raise PromptError(f"{path}: invalid front matter: {exc}", prompt=path) from None
    name = str(meta.get("name") or Path(path).stem)
    variables = meta.get("variables")
    if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
        raise PromptError(f"{path}: front matter needs variables = [\"...\"]", prompt=name)
    raw_schema = meta.get("schema")
    if raw_schema is None:
        raise PromptError(f"{path}: front matter needs a schema (JSON string or table)", prompt=name)
    try:
        schema = json.loads(raw_schema) if isinstance(raw_schema, str) else raw_schema
    except json.JSONDecodeError as exc:
        raise PromptError(f"{path}: schema is not valid JSON: {exc}", prompt=name) from None
    messages = _split_messages(body, path, name)
    used = {m.group(1) for _, t in messages for m in _PLACEHOLDER.finditer(t)}
    used |= _schema_refs(schema)
    undeclared = sorted(used - set(variables))
    if undeclared:
        raise PromptError(f"{path}: uses undeclared variable(s) {', '.join(undeclared)}",
                          prompt=name, variable=undeclared[0])
    unused = sorted(set(variables) - used)
    if unused:
        raise PromptError(f"{path}: declares unused variable(s) {', '.join(unused)}", prompt=name, variable=unused[0])
    try:
        max_tokens = int(meta.get("max_tokens", 256))
        temperature = float(meta.get("temperature", 0.0))
    except (TypeError, ValueError):
        raise PromptError(f"{path}: max_tokens and temperature must be numbers", prompt=name) from None
    return Prompt(
        name=name,
        version=str(meta.get("version", "")),
        variables=tuple(variables),
        messages=messages,
        schema_template=schema,
        max_tokens=max_tokens,
        temperature=temperature,
        hash=hashlib.sha256(text.encode("utf-8")).hexdigest()[:12],
        path=path,
        text=text,
    )


def _schema_refs(node: Any) -> set[str]:
    if isinstance(node, str) and node.startswith("$") and node[1:].isidentifier():
        return {node[1:]}
    if isinstance(node, Mapping):
        return set().union(*(_schema_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_schema_refs(v) for v in node)) if node else set()
    return set()


def _split_messages(body: str, path: str, name: str) -> tuple[tuple[str, str], ...]:
    parts = _ROLE_HEADING.split(body)
    if parts[0].strip():
        raise PromptError(f"{path}: text before the first '### system' or '### user' heading", prompt=name)
    messages = tuple((parts[i], parts[i + 1].strip()) for i in range(1, len(parts), 2))
    if not messages or not any(role == "user" for role, _ in messages):
        raise PromptError(f"{path}: needs at least a '### user' message", prompt=name)
    return messages


def load_prompt(path: str | Path) -> Prompt:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"prompt file not found: {p}", prompt=p.stem) from None
    return parse_prompt(text, str(p))


def load_prompts(directory: str | Path) -> dict[str, Prompt]:
    """Every *.md prompt in a folder, by name."""
    d = Path(directory)
    if not d.is_dir():
        raise PromptError(f"prompts folder not found: {d}")
    prompts = [load_prompt(p) for p in sorted(d.glob("*.md"))]
    return {p.name: p for p in prompts}
