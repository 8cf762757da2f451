"""One root exception; subclasses carry structured fields."""

from __future__ import annotations


class MailcascadeError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(MailcascadeError):
    """The configuration is invalid. `key` names the offending setting."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class EmailParseError(MailcascadeError):
    """An input could not be read as an email. `source` names the input."""

    def __init__(self, message: str, source: str = "") -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.reason = message
        self.source = source


class PromptError(MailcascadeError):
    """A prompt file is malformed or was rendered with wrong variables."""

    def __init__(self, message: str, prompt: str = "", variable: str = "") -> None:
        super().__init__(message)
        self.prompt = prompt
        self.variable = variable


# Why a model call produced no answer: infrastructure, not the model's output. Stage records with one of these have
# status "error" and are kept out of model metrics.
TRANSPORT_CODES = (
    "transport_timeout",  # the request timed out
    "connection_error",  # no connection (refused, reset, DNS)
    "server_error",  # 5xx, or a 200 whose body is not a chat completion
    "rate_limited",  # 429 after every retry, or a Retry-After longer than llm.max_retry_after_s
    "client_error",  # another 4xx: a bad key (401/403), a wrong model or URL (404), a request the server refuses
    "circuit_open",  # not sent: the endpoint failed llm.max_consecutive_failures times in a row
    "deadline_exceeded",  # the email's deadline passed
)


class LLMError(MailcascadeError):
    """A model call failed. `retryable` says whether trying again may help; `code` is one of TRANSPORT_CODES;
    `attempts` counts the HTTP requests that were sent for it."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status_code: int | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
        code: str = "server_error",
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code
        self.retry_after = retry_after
        self.attempts = attempts
        self.code = code


class CatalogError(MailcascadeError):
    """The catalogue or its index cannot be loaded or is stale."""


class StageError(MailcascadeError):
    """A stage could not produce a valid output after its attempts."""

    def __init__(self, message: str, stage: str, codes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.stage = stage
        self.codes = codes


class EvalError(MailcascadeError):
    """An eval set or run directory is invalid."""
