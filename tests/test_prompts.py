from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from mailcascade.config import Settings
from mailcascade.errors import PromptError
from mailcascade.prompts import load_prompts, parse_prompt

GOOD = """+++
name = "t"
variables = ["a", "names"]
schema = '{"type": "object", "properties": {"x": {"enum": "$names"}}}'
max_tokens = 10
+++
### system
Say {{a}}.
### user
Now {{ a }}!
"""


def test_render_fills_every_placeholder_and_the_schema_refs() -> None:
    p = parse_prompt(GOOD)
    assert p.render({"a": "hi", "names": ["u", "v"]}) == (("system", "Say hi."), ("user", "Now hi!"))
    assert p.schema({"a": "hi", "names": ["u", "v"]})["properties"]["x"]["enum"] == ["u", "v"]
    assert p.max_tokens == 10
    assert len(p.hash) == 12


def test_any_edit_changes_the_hash() -> None:
    assert parse_prompt(GOOD).hash != parse_prompt(GOOD.replace("Say", "Tell")).hash


@pytest.mark.parametrize(
    ("values", "needle"),
    [({"names": []}, "missing variable.*a"), ({"a": "x", "names": [], "b": 1}, "undeclared variable.*b")],
)
def test_render_is_strict(values: dict[str, object], needle: str) -> None:
    with pytest.raises(PromptError, match=needle):
        parse_prompt(GOOD).render(values)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (GOOD.replace('variables = ["a", "names"]', 'variables = ["a", "names", "zzz"]'), "unused variable.*zzz"),
        (GOOD.replace('variables = ["a", "names"]', 'variables = ["names"]'), "undeclared variable.*a"),
        (GOOD.replace("+++\n###", "###"), "not closed|front matter"),
        (GOOD.replace("schema = ", "schemo = "), "needs a schema"),
        (GOOD.replace("### user\n", ""), "user"),
        (GOOD.replace("'{\"type\"", "'{type\""), "not valid JSON"),
    ],
)
def test_bad_prompt_files_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(PromptError, match=needle):
        parse_prompt(text)


def test_every_shipped_prompt_renders_and_has_a_valid_schema() -> None:
    settings = Settings()
    prompts = load_prompts(settings.prompts_path())
    assert {"route", "draft"} <= set(prompts)
    for prompt in prompts.values():
        values = {v: f"<{v}>" for v in prompt.variables}
        values["department_names"] = list(settings.department_names)
        values = {k: v for k, v in values.items() if k in prompt.variables}
        messages = prompt.render(values)
        assert messages and all(text for _, text in messages)
        assert "{{" not in "".join(t for _, t in messages)
        jsonschema.Draft202012Validator.check_schema(prompt.schema(values))


def test_a_user_prompt_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "route.md").write_text(GOOD.replace('name = "t"', 'name = "route"'), encoding="utf-8")
    assert list(load_prompts(tmp_path)) == ["route"]


@pytest.mark.parametrize("name", ["route", "draft"])
def test_shipped_prompts_put_the_email_between_named_delimiters(name: str) -> None:
    prompt = load_prompts(Settings().prompts_path())[name]
    roles = dict(prompt.messages)
    assert list(roles) == ["system", "user"]
    assert roles["user"] == "<email>\nSubject: {{subject}}\n\n{{body}}\n</email>"
    assert "between <email> and </email>" in roles["system"] and "not instructions" in roles["system"]
