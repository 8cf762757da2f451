"""Prompt files: TOML front matter (variables, schema, model parameters) and a Jinja2 body that owns the layout.

A prompt file looks like::

    +++
    name = "route"
    version = "3"
    variables = ["departments", "department_names", "examples", "email"]
    max_tokens = 96
    temperature = 0.0
    schema = '''{ "type": "object", ... "enum": "$department_names" ... }'''
    +++
    ### system
    You route customer emails ...
    {% for d in departments %}
    - {{ d.name }}{% if d.description %}: {{ d.description }}{% endif +%}
    {% endfor %}
    ### user
    Subject: {{ email.subject }}

    {{ email.body }}

The body is split at the `### system` / `### user` / `### assistant` headings BEFORE anything is rendered, so no
variable value can add a message. Each message is then a Jinja2 template, rendered in a sandbox
(`ImmutableSandboxedEnvironment`: no `__class__`-style access, no mutating the values) with `StrictUndefined`
(a missing attribute is an error, not an empty string), no autoescaping, `trim_blocks` and `lstrip_blocks` (a line
holding only a `{% ... %}` tag leaves nothing behind; `+%}` keeps the newline after a tag), and the rendered
message stripped of surrounding space. Values are structured (lists of mappings, see the stages) and the template
decides how they are laid out, so a layout change (a numbered list, a table) is a prompt edit, not a code change.
Values are already made safe by the stages (email and catalogue text neutralised, see `mailcascade.untrusted`).

Checked when the file is loaded: a template syntax error (with its line in the file), a declared variable that no
template or schema uses, a used variable that is not declared (`email.subject` uses `email`). When rendering: the
given values must be exactly the declared ones; a missing attribute or a refused access is a `PromptError` naming
the file and the line. A schema string value of the form "$name" is replaced by the value of the variable `name`
(for enums that come from configuration). The content hash covers the whole file, so any edit changes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailcascade.errors import PromptError
from mailcascade.memo import Memo

_ROLE_HEADING = re.compile(r"^###\s*(system|user|assistant)\s*$", re.MULTILINE)
_TEMPLATE_FILE = "<template>"  # the file name Jinja gives the frames of a template made from a string

ENVIRONMENT = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
)


PROMPT_MEMO_SIZE = 64  # rendered texts and filled schemas kept per message and prompt


def _values_key(values: Mapping[str, Any], names: tuple[str, ...]) -> str:
    """The values of `names` as text that tells apart whatever renders differently (list vs tuple, key order)."""
    return repr([values[n] for n in names])


@dataclass(frozen=True)
class Message:
    role: str
    source: str  # the template text, stripped
    line: int  # the line of the file the template starts on
    refs: frozenset[str]  # the variables it reads from its context (not its own loop or `{% set %}` names)
    template: Template = field(compare=False, repr=False)
    # rendered texts by the values of `refs`, so a message that does not change per email (the system message) is
    # rendered once; None for a template that is not a function of its values (the `random` filter)
    renders: Memo | None = field(default=None, compare=False, repr=False)

    def render(self, values: Mapping[str, Any]) -> str:
        if self.renders is None:
            return str(self.template.render(values)).strip()
        key = _values_key(values, self._names)
        text: str | None = self.renders.get(key)
        if text is None:
            text = str(self.template.render(values)).strip()
            self.renders.put(key, text)
        return text

    @functools.cached_property
    def _names(self) -> tuple[str, ...]:
        return tuple(sorted(self.refs))


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    variables: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]  # (role, template source)
    schema_template: Mapping[str, Any]
    max_tokens: int
    temperature: float
    hash: str  # sha256 of the file content, first 12 hex digits
    path: str
    text: str  # the whole file, as hashed
    compiled: tuple[Message, ...] = field(default=(), compare=False, repr=False)
    _schemas: Memo = field(default_factory=lambda: Memo(PROMPT_MEMO_SIZE), init=False, compare=False, repr=False)

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
        rendered: list[tuple[str, str]] = []
        for message in self.compiled:
            try:
                text = message.render(values)
            except Exception as exc:  # UndefinedError, SecurityError, TypeError from the template, ...
                raise PromptError(f"{self.path}: {_where(exc, message.line)}{_reason(exc)}", prompt=self.name) from None
            rendered.append((message.role, text))
        return tuple(rendered)

    def schema(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The output schema with "$name" strings replaced by the named variable's value. The same values give the
        same object (made once): treat it as read-only."""
        key = _values_key(values, tuple(n for n in self._schema_names if n in values))
        found: dict[str, Any] | None = self._schemas.get(key)
        if found is None:
            found = self._fill(values)
            self._schemas.put(key, found)
        return found

    @functools.cached_property
    def _schema_names(self) -> tuple[str, ...]:
        return tuple(sorted(_schema_refs(self.schema_template)))

    def _fill(self, values: Mapping[str, Any]) -> dict[str, Any]:
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

    @functools.cached_property
    def instruction_text(self) -> tuple[str, ...]:
        """The fixed text of the prompt (every `{{ ... }}`, `{% ... %}` and `{# ... #}` part removed), in chunks of
        at least 40 characters, for prompt-leak checks."""
        chunks: list[str] = []
        for _, source in self.messages:
            for _, kind, value in ENVIRONMENT.lex(source):
                if kind == "data" and len(value.strip()) >= 40:
                    chunks.append(value.strip())
        return tuple(chunks)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    return text if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {text}"


def _where(exc: BaseException, first_line: int) -> str:
    """'line N: ' for the innermost template frame of a rendering error, as a line of the prompt file."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == _TEMPLATE_FILE]
    return f"line {first_line + lines[-1] - 1}: " if lines and lines[-1] else ""


def parse_prompt(text: str, path: str = "<string>") -> Prompt:
    if not text.startswith("+++"):
        raise PromptError(f"{path}: must start with a +++ TOML front matter block", prompt=path)
    try:
        _, front, body = text.split("+++", 2)
    except ValueError:
        raise PromptError(f"{path}: front matter is not closed with +++", prompt=path) from None
    try:
        meta_ = tomllib.loads(front)
    except tomllib.TOMLDecodeError as exc:
        raise PromptError(f"{path}: invalid front matter: {exc}", prompt=path) from None
    name = str(meta_.get("name") or Path(path).stem)
    variables = meta_.get("variables")
    if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
        raise PromptError(f"{path}: front matter needs variables = [\"...\"]", prompt=name)
    raw_schema = meta_.get("schema")
    if raw_schema is None:
        raise PromptError(f"{path}: front matter needs a schema (JSON string or table)", prompt=name)
    try:
        schema = json.loads(raw_schema) if isinstance(raw_schema, str) else raw_schema
    except json.JSONDecodeError as exc:
        raise PromptError(f"{path}: schema is not valid JSON: {exc}", prompt=name) from None
    body_line = 1 + front.count("\n")  # the line holding the closing +++ (the body starts right after it)
    compiled = _split_messages(body, body_line, path, name)
    used = _schema_refs(schema).union(*(m.refs for m in compiled))
    undeclared = sorted(used - set(variables))
    if undeclared:
        raise PromptError(f"{path}: uses undeclared variable(s) {', '.join(undeclared)}",
                          prompt=name, variable=undeclared[0])
    unused = sorted(set(variables) - used)
    if unused:
        raise PromptError(f"{path}: declares unused variable(s) {', '.join(unused)}", prompt=name, variable=unused[0])
    try:
        max_tokens = int(meta_.get("max_tokens", 256))
        temperature = float(meta_.get("temperature", 0.0))
    except (TypeError, ValueError):
        raise PromptError(f"{path}: max_tokens and temperature must be numbers", prompt=name) from None
    return Prompt(
        name=name,
        version=str(meta_.get("version", "")),
        variables=tuple(variables),
        messages=tuple((m.role, m.source) for m in compiled),
        schema_template=schema,
        max_tokens=max_tokens,
        temperature=temperature,
        hash=hashlib.sha256(text.encode("utf-8")).hexdigest()[:12],
        path=path,
        text=text,
        compiled=compiled,
    )


def _schema_refs(node: Any) -> set[str]:
    if isinstance(node, str) and node.startswith("$") and node[1:].isidentifier():
        return {node[1:]}
    if isinstance(node, Mapping):
        return set().union(*(_schema_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_schema_refs(v) for v in node)) if node else set()
    return set()


def _syntax_error(exc: TemplateSyntaxError, first_line: int, path: str, name: str) -> PromptError:
    line = first_line + (exc.lineno or 1) - 1
    return PromptError(f"{path}: line {line}: {_reason(exc)}", prompt=name)


def _split_messages(body: str, body_line: int, path: str, name: str) -> tuple[Message, ...]:
    """Split at the role headings (before any rendering) and compile each message's template."""
    headings = list(_ROLE_HEADING.finditer(body))
    if body[: headings[0].start() if headings else len(body)].strip():
        raise PromptError(f"{path}: text before the first '### system' or '### user' heading", prompt=name)
    messages: list[Message] = []
    for i, heading in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(body)
        raw = body[heading.end():end]
        source = raw.strip()
        start = heading.end() + len(raw) - len(raw.lstrip())
        line = body_line + body[:start].count("\n")
        try:
            tree = ENVIRONMENT.parse(source)
            refs = frozenset(meta.find_undeclared_variables(tree))
            template = ENVIRONMENT.from_string(tree)  # compiling finds unknown filters and tests
        except TemplateSyntaxError as exc:
            raise _syntax_error(exc, line, path, name) from None
        pure = not any(f.name == "random" for f in tree.find_all(nodes.Filter))
        renders = Memo(PROMPT_MEMO_SIZE) if pure else None
        messages.append(Message(heading.group(1), source, line, refs, template, renders))
    if not messages or not any(m.role == "user" for m in messages):
        raise PromptError(f"{path}: needs at least a '### user' message", prompt=name)
    return tuple(messages)


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
