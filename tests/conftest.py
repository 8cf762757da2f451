"""Shared fixtures. The fake OpenAI-compatible server lives in tests/fakeserver.py."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakeserver import FakeServer
from mailcascade.config import LLMSettings


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A started fake server on a free loopback port; stopped after the test."""
    with FakeServer() as server:
        yield server


@pytest.fixture
def fake_llm_settings(fake_server: FakeServer) -> LLMSettings:
    """LLM settings pointing at `fake_server`, with tiny backoff and short timeouts."""
    return LLMSettings(
        base_url=fake_server.base_url,
        api_key="test-key",
        model="fake-model",
        structured_output="json_object",
        timeout_s=5.0,
        connect_timeout_s=2.0,
        max_retries=3,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at `folder` (e.g. options "size=1m" or "ro,size=64k"); skips the test where it cannot be
    mounted (it needs root, as in CI). Unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
