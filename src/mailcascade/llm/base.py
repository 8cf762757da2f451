"""The LLM boundary: one small protocol, request in, response out."""

from __future__ import annotations

from typing import Protocol

from mailcascade.types import ChatRequest, ChatResponse


class LLM(Protocol):
    """Anything that answers chat requests. `OpenAIClient` is the real one."""

    @property
    def model(self) -> str: ...

    def complete(self, request: ChatRequest) -> ChatResponse: ...

    async def acomplete(self, request: ChatRequest) -> ChatResponse: ...
