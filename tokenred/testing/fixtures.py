"""Opt-in pytest fixtures for plugin test suites.

Enable them in your ``conftest.py``::

    pytest_plugins = ["tokenred.testing.fixtures"]

They are not auto-loaded into every pytest session (tox's kit works the same way).
"""

from __future__ import annotations

import pytest

from tokenred.plugins import TokenredPluginManager, get_plugin_manager
from tokenred.registry import Registries


@pytest.fixture
def pm() -> TokenredPluginManager:
    """Return a fresh plugin manager with the builtins and every installed plugin."""
    return get_plugin_manager()


@pytest.fixture
def registries(pm: TokenredPluginManager) -> Registries:
    """Return the registries built from :func:`pm`."""
    return Registries.from_plugin_manager(pm)
