"""The output validator: extract, repair and check LLM output; name every failure mode; decide what to do.

`validate` is pure (text in, Verdict out). `Policy` maps failure codes to actions; `reask_message` writes the
corrective message for a re-ask.
"""

from mailcascade.validate.codes import CODES
from mailcascade.validate.context import ValidationContext
from mailcascade.validate.core import validate
from mailcascade.validate.placeholder import is_placeholder
from mailcascade.validate.policy import Decision, Policy, PolicyAction, default_policy
from mailcascade.validate.reask import reask_message

__all__ = [
    "CODES",
    "Decision",
    "Policy",
    "PolicyAction",
    "ValidationContext",
    "default_policy",
    "is_placeholder",
    "reask_message",
    "validate",
]
