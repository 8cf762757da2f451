"""What to do about a verdict: a table from failure code to action, overridable per stage."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

from mailcascade.errors import ConfigError
from mailcascade.types import Verdict
from mailcascade.validate.codes import CODES

PolicyAction = Literal["repair", "reask", "fail", "more_tokens"]
DecisionAction = Literal["accept", "reask", "more_tokens", "fail"]
POLICY_ACTIONS: tuple[str, ...] = get_args(PolicyAction)

_DEFAULTS: dict[str, PolicyAction] = {
    "refusal": "fail",
    "truncated": "more_tokens",
    "empty_output": "reask",
    "no_json": "reask",
    "malformed_json": "reask",
    "non_finite_number": "reask",
    "schema_echo": "reask",
    "placeholder_value": "reask",
    "prompt_leak": "reask",
}
_PRIORITY: dict[DecisionAction, int] = {"fail": 3, "more_tokens": 2, "reask": 1, "accept": 0}


@dataclass(frozen=True)
class Decision:
    """The action for one verdict and the codes that drove it."""

    action: DecisionAction
    codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """A table code -> action. Actions:

    - ``repair``: keep what the validator repaired (safe or lossy); when it could not repair, re-ask.
    - ``reask``: re-ask whenever the code is seen, even if it was repaired.
    - ``fail``: stop at once; do not call the model again.
    - ``more_tokens``: call again with a larger ``max_tokens``.

    Default table (``default_policy()``): ``refusal`` -> fail (refusals are not retried blindly);
    ``truncated`` -> more_tokens; ``empty_output``, ``no_json``, ``malformed_json``, ``non_finite_number``,
    ``schema_echo``, ``placeholder_value``, ``prompt_leak`` -> reask; every other code -> repair (so
    fences, chatter, quotes, commas, wrapping, coercions, a chosen one of ``multiple_json``, a mapped enum or
    department near miss, dropped extra fields and unknown product ids are accepted; what could not be fixed is
    re-asked).

    ``decide``: each finding's code maps to an action (``repair`` maps to accept, or to reask when the verdict
    failed); the strongest wins, fail > more_tokens > reask > accept. A clean verdict is accepted.
    """

    rules: tuple[tuple[str, PolicyAction], ...]

    @property
    def table(self) -> Mapping[str, PolicyAction]:
        return MappingProxyType(dict(self.rules))

    def action_for(self, code: str) -> PolicyAction:
        return self._lookup.get(code, "repair")

    def with_overrides(self, overrides: Mapping[str, str]) -> Policy:
        """A copy with some codes mapped to other actions. Raises ConfigError on an unknown code or action."""
        table = dict(self.rules)
        for code, action in overrides.items():
            if code not in CODES:
                raise ConfigError(f"unknown failure code {code!r} in the validation policy; known: "
                                  f"{', '.join(sorted(CODES))}", key=f"validation.policy.{code}")
            if action not in POLICY_ACTIONS:
                raise ConfigError(f"unknown policy action {action!r} for {code!r}; use one of "
                                  f"{', '.join(POLICY_ACTIONS)}", key=f"validation.policy.{code}")
            table[code] = action  # type: ignore[assignment]
        return Policy(tuple(sorted(table.items())))

    def decide(self, verdict: Verdict) -> Decision:
        failed = verdict.status == "failed"
        by_action: dict[DecisionAction, dict[str, None]] = {}
        for finding in verdict.findings:
            act = self._lookup.get(finding.code, "repair")
            action: DecisionAction = act if act != "repair" else (
                "reask" if failed and finding.action == "rejected" else "accept")
            by_action.setdefault(action, {})[finding.code] = None
        chosen: DecisionAction = max(by_action, key=_PRIORITY.__getitem__, default="accept")
        if failed and chosen == "accept":  # a failed verdict is never accepted
            return Decision("reask", tuple(dict.fromkeys(f.code for f in verdict.findings if f.action == "rejected")))
        return Decision(chosen, tuple(by_action.get(chosen, {})))

    @functools.cached_property
    def _lookup(self) -> dict[str, PolicyAction]:
        return dict(self.rules)


def default_policy() -> Policy:
    """The default table; see `Policy` for what each action means."""
    return Policy(tuple(sorted({code: _DEFAULTS.get(code, "repair") for code in CODES}.items())))
