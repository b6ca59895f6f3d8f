"""Fixtures of the adapter tests: tiny random-weight checkpoints of every family.

Each checkpoint is written once per session with ``save_pretrained`` and loaded
through the adapter exactly as ``--model PATH`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _adapter_helpers import FAMILIES, QWEN_PIXELS

from tokenred.adapter import AdapterConfig, create_adapter
from tokenred.adapters._tiny import save_tiny_checkpoint
from tokenred.plugins import get_plugin_manager
from tokenred.registry import Registries


@pytest.fixture(scope="session")
def model_registry() -> Any:
    """The builtin model registry (no third-party plugins)."""
    return Registries.from_plugin_manager(get_plugin_manager(autoload=False)).models


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One random-weight checkpoint directory per family."""
    root = tmp_path_factory.mktemp("ckpt")
    return {f: save_tiny_checkpoint(f, root / f, seed=1) for f in FAMILIES}


@pytest.fixture(scope="session")
def load_adapter(
    checkpoints: dict[str, Path], model_registry: Any
) -> Callable[..., Any]:
    """Return ``load(family, **config)``: a loaded adapter, cached per arguments."""
    cache: dict[tuple[Any, ...], Any] = {}

    def load(family: str, **overrides: Any) -> Any:
        key = (family, tuple(sorted(overrides.items())))
        if key not in cache:
            adapter = create_adapter(
                model_registry, AdapterConfig(name=str(checkpoints[family]))
            )
            extra = QWEN_PIXELS if family.startswith("qwen") else {}
            for name, value in {**extra, **overrides}.items():
                setattr(adapter.config, name, value)
            adapter.load()
            cache[key] = adapter
        return cache[key]

    return load


@pytest.fixture(scope="session")
def frames() -> np.ndarray:
    """Eight random 36x44 RGB frames."""
    return np.random.default_rng(0).integers(0, 256, (8, 36, 44, 3), dtype=np.uint8)
