"""Errors that reach users. Each names what went wrong and what to do about it.

The CLI maps them to exit codes (docs/architecture.md): ``UserError`` -> 2 (the input was wrong),
``JobFailed`` -> 1 (the job ran and failed; its summary is still printed).
"""

from __future__ import annotations


class TandemError(Exception):
    """Base class: a message plus an optional ``fix`` telling the user what to do."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


class UserError(TandemError):
    """The user's input (a flag, a file, a setting) is wrong. Nothing was changed."""

    exit_code = 2


class NotFound(UserError):
    """The input names something that does not exist (an answer's trace id, for example)."""


class ConfigError(UserError):
    """A TANDEM_* setting or a config file is invalid."""


class JobFailed(TandemError):
    """A job ran and failed (for example the canary blocked an index)."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None, summary: dict | None = None):
        super().__init__(message, fix)
        self.summary = summary or {}


class ServiceUnavailable(TandemError):
    """A service Tandem needs (Postgres, MLflow, an index, a champion) is not there yet."""

    exit_code = 1
