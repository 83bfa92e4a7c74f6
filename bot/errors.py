"""The few errors a user can see. Each message says what went wrong and what to do next.

Only the CLI and the UI turn these into friendly output; library code just raises them.
"""


class SupportbotError(Exception):
    """Base class: `str(err)` is the problem, `err.hint` what to do about it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  -> {self.hint}" if self.hint else text


class ConfigError(SupportbotError):
    """A setting is missing, malformed or contradicts another one."""


class KnowledgeBaseError(SupportbotError):
    """The knowledge-base folder or its index cannot be used as asked."""


class ModelError(SupportbotError):
    """A model (embedding or generator) cannot be loaded."""


class RequestError(SupportbotError):
    """A chat message cannot be answered as sent (empty, too long, unknown adapter)."""
