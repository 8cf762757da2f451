"""The embedded server starts on the first model call, once; a failed start is reported, not retried per email."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from fakes import CountingLLM
from mailcascade.config import Settings
from mailcascade.errors import LLMError
from mailcascade.llm.on_demand import ServerOnDemand
from mailcascade.types import ChatRequest

REQUEST = ChatRequest(messages=(("user", "hi"),))


def test_a_remote_endpoint_never_starts_anything() -> None:
    inner = CountingLLM(text="{}")
    settings = Settings().replace(llm=dataclasses.replace(Settings().llm, base_url="http://127.0.0.1:9/v1"))
    gate = ServerOnDemand(inner, settings)
    assert gate.complete(REQUEST).text == "{}" and inner.calls == 1
    gate.close()


def test_a_failed_start_is_remembered_and_no_call_reaches_the_model(tmp_path: Path) -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8765)) == 0:
            pytest.skip("port 8765 is busy: a server there would be used, not started")
    settings = Settings()
    settings = settings.replace(local_server=dataclasses.replace(settings.local_server,
                                                                 model_path=str(tmp_path / "missing.gguf")))
    inner = CountingLLM(text="{}")
    gate = ServerOnDemand(inner, settings)
    with pytest.raises(LLMError, match=r"missing\.gguf") as first:
        gate.complete(REQUEST)
    with pytest.raises(LLMError) as second:
        gate.complete(REQUEST)
    assert second.value is first.value and inner.calls == 0
