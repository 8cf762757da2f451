"""An LLM that starts the embedded model server on its first call, and stops it on close().

So a pipeline that answers everything from its cache never starts a server, and a library user who forgets
`with Pipeline.from_config() as p:` still gets the embedded default model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from mailcascade.config import Settings
from mailcascade.errors import LLMError
from mailcascade.llm.base import LLM
from mailcascade.llm.client import OpenAIClient
from mailcascade.llm.local_server import local_server_if_needed
from mailcascade.types import ChatRequest, ChatResponse

log = logging.getLogger(__name__)


class ServerOnDemand:
    def __init__(self, inner: LLM, settings: Settings) -> None:
        self._inner = inner
        self._settings = settings
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = None
        self._failed: LLMError | None = None

    @property
    def model(self) -> str:
        return self._inner.model

    def ensure(self) -> None:
        """Start the server if the settings point at the embedded one and nothing answers there (once)."""
        with self._lock:
            if self._failed is not None:
                raise self._failed  # do not try (and wait for) a failed start once per email
            if self._stack is not None:
                return
            stack = contextlib.ExitStack()
            try:
                server = stack.enter_context(local_server_if_needed(self._settings))
            except LLMError as exc:
                log.error("the embedded model server did not start: %s", exc)
                self._failed = exc
                raise
            if server is not None:
                log.info("started the embedded model server at %s", server.base_url)
                stack.callback(log.info, "stopped the embedded model server at %s", server.base_url)
            self._stack = stack

    @property
    def started(self) -> bool:
        """Whether `ensure` ran (and succeeded): a server was started, or one answers already, or none is needed."""
        return self._stack is not None

    async def aensure(self) -> None:
        if self._stack is None:
            await asyncio.to_thread(self.ensure)

    def complete(self, request: ChatRequest) -> ChatResponse:
        self.ensure()
        return self._inner.complete(request)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        await self.aensure()
        return await self._inner.acomplete(request)

    async def release(self) -> None:
        """Close the model client's connections of the running event loop (see `OpenAIClient.release`)."""
        if isinstance(self._inner, OpenAIClient):
            await self._inner.release()

    def close(self) -> None:
        with self._lock:
            if self._stack is not None:
                self._stack.close()
                self._stack = None
