"""Shared fixtures. The fake OpenAI-compatible server lives in tests/fakeserver.py."""

from __future__ import annotations

from collections.abc import Iterator

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
