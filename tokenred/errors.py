"""Error types and exit codes.

Every user-caused problem is a :class:`TokenredError`. The CLI prints its message as
one line, without a traceback, and exits with the error's ``exit_code``. Messages say
what was wrong, where (a key path, a file, a plugin and its distribution), the valid
choices and how to fix it; build them before ``raise``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``tokenred`` command."""

    OK = 0
    RUN_FAILED = 1
    USAGE_ERROR = 2
    INTERNAL_ERROR = 3


class TokenredError(Exception):
    """Base class of every error a user can cause and fix."""

    exit_code: ExitCode = ExitCode.USAGE_ERROR


class UsageError(TokenredError):
    """Bad command-line input or configuration value."""


class ConfigError(UsageError):
    """A configuration key or value is invalid."""


class UnknownNameError(UsageError):
    """A registry lookup failed; the message suggests close matches."""

    def __init__(self, kind: str, name: str, available: Iterable[str]) -> None:
        """Build the lm-eval style one-line message.

        Args:
            kind: What was looked up, e.g. ``"reducer"``.
            name: The name that was not found.
            available: Every registered name of that kind.
        """
        names = sorted(available)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        listing = ", ".join(names) if names else "(none registered)"
        super().__init__(f"Unknown {kind} '{name}'.{hint} Available: {listing}")
        self.kind = kind
        self.name = name
        self.available = names


class CompatibilityError(UsageError):
    """A reducer, adapter and insertion point cannot be combined."""


class ContractError(TokenredError):
    """A reducer broke the TokenReducer contract (or lacks a declared need)."""

    exit_code = ExitCode.RUN_FAILED


class DataError(TokenredError):
    """A dataset file or video is missing, corrupt or malformed."""


class ModelLoadError(UsageError):
    """A model checkpoint directory is missing or incomplete."""


class PluginError(TokenredError):
    """A plugin failed to import or register."""
