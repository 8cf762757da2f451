"""mailcascade: build and debug LLM cascades for customer email.

    from mailcascade import Pipeline
    with Pipeline.from_config() as pipeline:      # or from_config("mailcascade.toml")
        result = pipeline.run(email)

The public API is what this module exports; everything else may change.
"""

from mailcascade.config import Department, Settings, load_settings
from mailcascade.email_parse import read_inputs
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
from mailcascade.pipeline import Pipeline
from mailcascade.prompts import Prompt, load_prompt, load_prompts
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

__version__ = "0.1.0"

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
