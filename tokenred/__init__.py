"""tokenred: compare visual-token reducers for video LLMs on equal terms.

This module is the stable public API for plugin authors and notebooks
(:func:`run`, :func:`load_results`). Importing it loads no plugin, model or config:
that happens when the CLI, the runner or :func:`run` asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenred.arch import ArchSpec, VisionSpec
from tokenred.determinism import stable_scores
from tokenred.errors import ConfigError, ContractError, TokenredError, UsageError
from tokenred.hookspecs import hookimpl
from tokenred.plugins import get_plugin_manager
from tokenred.reducer import ReducerConfig, TokenReducer
from tokenred.registry import Registries
from tokenred.tokens import (
    Need,
    PositionPolicy,
    ReduceContext,
    Reduction,
    Stage,
    VisualTokens,
    validate_reduction,
)

if TYPE_CHECKING:
    from tokenred.api import Results

__version__ = "0.1.0"


def run(*args: Any, **kwargs: Any) -> Results:
    """Run a study and return one row per run; see :func:`tokenred.api.run`.

    Example: ``tokenred.run(reducer="sttm", budget=0.3, overrides=["data.limit=10"])``
    returns the unreduced run's row and STTM's (accuracy, kept tokens, FLOPs, ...).
    """
    from tokenred.api import run as _run  # lazy: keeps ``import tokenred`` light

    return _run(*args, **kwargs)


def load_results(*args: Any, **kwargs: Any) -> Results:
    """Rows of finished run stores; see :func:`tokenred.api.load_results`."""
    from tokenred.api import load_results as _load

    return _load(*args, **kwargs)


__all__ = [
    "ArchSpec",
    "ConfigError",
    "ContractError",
    "Need",
    "PositionPolicy",
    "ReduceContext",
    "ReducerConfig",
    "Reduction",
    "Registries",
    "Stage",
    "TokenReducer",
    "TokenredError",
    "UsageError",
    "VisionSpec",
    "VisualTokens",
    "__version__",
    "get_plugin_manager",
    "hookimpl",
    "load_results",
    "run",
    "stable_scores",
    "validate_reduction",
]
