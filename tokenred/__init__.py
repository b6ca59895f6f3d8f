"""tokenred: compare visual-token reducers for video LLMs on equal terms.

This module is the stable public API for plugin authors. Importing it loads no
plugin, model or config: that happens when the CLI or the runner asks.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

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
    "stable_scores",
    "validate_reduction",
]
