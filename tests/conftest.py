"""Core test fixtures: deterministic plugin managers and fake registrations.

``pm`` has the builtin plugins only (no entry points), so a test never depends on
which third-party plugins happen to be installed; tests that need them say so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from tokenred import hookimpl
from tokenred.adapter import AdapterConfig
from tokenred.arch import ArchSpec
from tokenred.builtin.reducers import NoneReducer
from tokenred.plugins import TokenredPluginManager, get_plugin_manager
from tokenred.registry import Registries
from tokenred.tokens import Stage


@dataclass
class FakeModelConfig(AdapterConfig):
    """Config of the fake adapter."""

    name: str = field(default="fake_model", metadata={"help": "registered name"})
    layers: int = field(default=4, metadata={"help": "decoder layers"})


class FakeModel:
    """Fake model adapter: only what config loading and listing read."""

    name = "fake_model"
    Config = FakeModelConfig
    stages = frozenset({Stage.PRE_LLM, Stage.IN_LLM})
    rope = "1d"


class AliasedReducer(NoneReducer):
    """Keep everything, under another name (for alias tests)."""

    name = "keep_all"


class FakePlugin:
    """Registers a fake model and an aliased reducer."""

    @hookimpl
    def register_model_adapters(self, register: Any) -> None:
        register(FakeModel)

    @hookimpl
    def register_reducers(self, register: Any) -> None:
        register(AliasedReducer, aliases=("keepall",))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded: the test tensors are tiny, and on a shared 2-core
    machine intra-op threads only add contention (10x slower contract suite)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def pm() -> TokenredPluginManager:
    """A fresh manager with the builtin plugins only (autoload off)."""
    return get_plugin_manager(autoload=False)


@pytest.fixture
def registries(pm: TokenredPluginManager) -> Registries:
    """Registries of the builtin plugins."""
    return Registries.from_plugin_manager(pm)


@pytest.fixture
def fake_plugin() -> FakePlugin:
    """A plugin registering ``fake_model`` and the aliased ``keep_all`` reducer."""
    return FakePlugin()


@pytest.fixture
def fake_registries() -> Registries:
    """Builtins plus :class:`FakePlugin` (model ``fake_model``)."""
    pm = get_plugin_manager(autoload=False, extra=[FakePlugin()])
    return Registries.from_plugin_manager(pm)


@pytest.fixture
def no_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``tokenred.cli.main`` load the builtins only."""
    monkeypatch.setenv("TOKENRED_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("TOKENRED_DISABLE_PLUGINS", raising=False)


@pytest.fixture
def run_dir(tmp_path: Any) -> Any:
    """A fresh directory for run stores."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def device() -> str:
    """Device under test: ``TOKENRED_TEST_DEVICE`` (default cpu)."""
    return os.environ.get("TOKENRED_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def toy_arch() -> ArchSpec:
    """A 4-layer toy LLM shape (d=64, GQA 4/2) for analytic-cost tests."""
    return ArchSpec(
        "toy",
        layers=4,
        hidden_size=64,
        heads=4,
        kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=256,
    )
