"""Test doubles that are not servers: a deterministic embedder and a responder that plays a sensible model."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from fakeserver import Reply, Step


class HashEmbedder:
    """Deterministic bag-of-words embedder: each word hashed into one of `dim` buckets. Counts encoded texts."""

    def __init__(self, dim: int = 128, name: str = "fake-hash") -> None:
        self._dim = dim
        self._name = name
        self.encoded = 0  # texts encoded
        self.calls = 0  # encode() calls

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                bucket = int(hashlib.md5(word.encode()).hexdigest(), 16) % self._dim
                out[row, bucket] += 1.0
        self.encoded += len(texts)
        self.calls += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


KEYWORDS = {
    "refund": "returns", "return": "returns", "invoice": "billing", "charged": "billing", "password": "account",
    "tracking": "shipping", "delivery": "shipping", "order": "orders", "cancel": "orders",
}


def stage_of(body: dict[str, Any]) -> str:
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    return "route" if "route customer emails" in system else "draft"


def last_user(body: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def keyword_department(text: str) -> str:
    lowered = text.lower()
    return next((dept for word, dept in KEYWORDS.items() if word in lowered), "products")


def product_ids_in(body: dict[str, Any]) -> list[str]:
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    return re.findall(r"^\[([^\]]+)\]", system, flags=re.MULTILINE)


def sensible(body: dict[str, Any]) -> Step:
    """A well-behaved model: routes by keyword, drafts a reply citing the first retrieved product."""
    if stage_of(body) == "route":
        dept = keyword_department(last_user(body))
        return Reply(json.dumps({"department": dept, "confidence": 0.9, "reason": "keyword"}))
    ids = product_ids_in(body)[:1]
    return Reply(json.dumps({"reply": "Thanks for your email, we are on it.", "product_ids": ids}))


class CountingLLM:
    """An in-process LLM stub (for units that are not about HTTP): answers "answer N" and counts calls."""

    def __init__(self, text: str | None = None) -> None:
        self.calls = 0
        self._text = text

    @property
    def model(self) -> str:
        return "m"

    def complete(self, request: Any) -> Any:
        from mailcascade.types import ChatResponse

        self.calls += 1
        return ChatResponse(text=self._text if self._text is not None else f"answer {self.calls}",
                            finish_reason="stop", model="m", tokens_in=3, tokens_out=2)

    async def acomplete(self, request: Any) -> Any:
        return self.complete(request)


DRAFT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reply": {"type": "string"}, "product_ids": {"type": "array", "items": {"type": "string"}}},
    "required": ["reply", "product_ids"],
    "additionalProperties": False,
}


def route_schema(departments: Sequence[str]) -> dict[str, Any]:
    """The route prompt's output schema for these departments."""
    return {
        "type": "object",
        "properties": {
            "department": {"type": "string", "enum": list(departments)},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "reason": {"type": "string"},
        },
        "required": ["department", "confidence", "reason"],
        "additionalProperties": False,
    }
