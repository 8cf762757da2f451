"""mailcascade: build and debug LLM cascades for customer email.

    from mailcascade import Pipeline
    with Pipeline.from_config() as pipeline:      # or from_config("mailcascade.toml")
        result = pipeline.run(email)

The public API is what this module exports; everything else may change. Names are imported on first use, so
`import mailcascade` (and `mailcascade --help`) loads neither torch nor the model SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# light modules (no torch, no model SDK); `validate` must be bound here: it is also the name of a subpackage
from mailcascade.config import Department, Settings, load_settings
from mailcascade.errors import (
    CatalogError,
    ConfigError,
    EmailParseError,
    EvalError,
    LLMError,
    MailcascadeError,
    PromptError,
    StageError,
)
from mailcascade.types import (
    OUT_OF_SCOPE,
    Attempt,
    Draft,
    Email,
    Finding,
    Hit,
    Result,
    RouteDecision,
    StageRecord,
    Verdict,
)
from mailcascade.validate import ValidationContext, validate

if TYPE_CHECKING:  # imported on first use (see __getattr__): the pipeline pulls in torch and the openai SDK
    from mailcascade.email_parse import read_inputs
    from mailcascade.pipeline import Pipeline
    from mailcascade.prompts import Prompt, load_prompt, load_prompts

__version__ = "0.1.0"

_LAZY = {"read_inputs": "email_parse", "Pipeline": "pipeline", "Prompt": "prompts", "load_prompt": "prompts",
         "load_prompts": "prompts"}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mailcascade' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mailcascade.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

__all__ = [
    "OUT_OF_SCOPE",
    "Attempt",
    "CatalogError",
    "ConfigError",
    "Department",
    "Draft",
    "Email",
    "EmailParseError",
    "EvalError",
    "Finding",
    "Hit",
    "LLMError",
    "MailcascadeError",
    "Pipeline",
    "Prompt",
    "PromptError",
    "Result",
    "RouteDecision",
    "Settings",
    "StageError",
    "StageRecord",
    "ValidationContext",
    "Verdict",
    "__version__",
    "load_prompt",
    "load_prompts",
    "load_settings",
    "read_inputs",
    "validate",
]
