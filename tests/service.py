"""`mailcascade serve` as a real process on a free loopback port, for tests and benchmarks. Stopped by its pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from fakes import sensible
from fakeserver import Step

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_emails.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample_emails(n: int, prefix: str = "m") -> list[dict[str, Any]]:
    """n emails in the API's input shape, made from the project's own sample emails, with new ids."""
    sample = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    out = []
    for i in range(n):
        case = sample[i % len(sample)]
        out.append({"id": f"{prefix}{i:04d}", **case["email"], "_expected": case.get("expected", {})})
    return out


def api_email(email: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in email.items() if not k.startswith("_")}


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAILCASCADE_"))}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra or {})})
    return env


def mc(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One `mailcascade` command as a user runs it."""
    return subprocess.run([sys.executable, "-m", "mailcascade.cli", *args], cwd=cwd, env=clean_env(env),
                          capture_output=True, text=True, timeout=600, check=False)


class Gate:
    """A fake-model responder that answers the first `open_first` requests at once and holds the rest until
    `release()` (then answers like `sensible`)."""

    def __init__(self, open_first: int = 0, then: Callable[[dict[str, Any]], Step] = sensible) -> None:
        self.open_first = open_first
        self.then = then
        self.arrived = 0
        self._lock = threading.Lock()
        self._open = threading.Event()

    def __call__(self, body: dict[str, Any]) -> Step:
        with self._lock:
            self.arrived += 1
            held = self.arrived > self.open_first
        if held:
            self._open.wait(120)  # never forever: a test that failed must not hang the fake server
        return self.then(body)

    def release(self) -> None:
        self._open.set()

    def wait_arrived(self, n: int) -> None:
        while self.arrived < n:
            time.sleep(0.01)


class Service:
    """`mailcascade serve --port P` in `cwd` with `env` (on top of a clean environment)."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.cwd = cwd
        self.env = env
        self.args = args
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"

    @property
    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8") if self.log.is_file() else ""

    def start(self) -> Service:
        env = clean_env(self.env)
        with self.log.open("a", encoding="utf-8") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "mailcascade.cli", "serve", "--port",
                                          str(self.port), *self.args], cwd=self.cwd, env=env,
                                         stdout=subprocess.DEVNULL, stderr=log, text=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mailcascade serve exited {self.proc.returncode}: {self.stderr}")
            try:
                if httpx.get(self.base + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=120.0)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait(self) -> tuple[int, str]:
        """Wait for the process to end; (exit code, stderr)."""
        assert self.proc is not None
        self.proc.wait(timeout=300)
        return self.proc.returncode, self.stderr

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
