"""The LLM boundary: the `LLM` protocol, the OpenAI-compatible client and the embedded local server."""

from mailcascade.llm.base import LLM
from mailcascade.llm.client import OpenAIClient
from mailcascade.llm.local_server import LocalServer, find_smollm2_gguf, local_server_if_needed

__all__ = ["LLM", "LocalServer", "OpenAIClient", "find_smollm2_gguf", "local_server_if_needed"]
