"""Exceptions of the engine and the stage contract.

Every message is one line: what failed, where (file, line, field, stage or
node), expected against actual, and what to do next.
"""

from __future__ import annotations

from typing import Any


class PipeError(Exception):
    """Base class of every error `pipe` reports to a user."""

    exit_code = 1


class ConfigError(PipeError):
    """The pipeline file, a command-line option or an override is invalid."""

    exit_code = 2


class StageError(PipeError):
    """A stage could not run: bad input, a model that does not trace, etc.

    Raise it from :meth:`pipeline.contract.Stage.run` with a message that
    names the stage's subject (module, node, data set) and the fix.
    """


class StageFailed(PipeError):
    """A stage ran but its check failed (an accuracy or parity gate).

    ``metrics`` are the numbers that failed the gate; they are reported but
    nothing is stored in the cache.
    """

    def __init__(self, message: str, metrics: dict[str, Any] | None = None) -> None:
        # Both arguments go to ``args`` so the exception survives pickling
        # from a child process with its metrics.
        super().__init__(message, metrics)
        self.message = message
        self.metrics = dict(metrics or {})

    def __str__(self) -> str:
        return self.message


class CacheError(PipeError):
    """The cache folder cannot be used (permissions, a foreign format)."""
