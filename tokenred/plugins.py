"""Plugin loading: builtins first, then the ``tokenred`` entry-point group.

:func:`get_plugin_manager` returns a fresh manager every call; nothing is loaded at
import time. A plugin that fails to import or register never takes the tool down: it
is recorded in :attr:`TokenredPluginManager.failures`, one warning names it, its
distribution and the error, and everything else keeps working.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from tokenred import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tokenred"
ENV_DISABLE = "TOKENRED_DISABLE_PLUGINS"
ENV_NO_AUTOLOAD = "TOKENRED_DISABLE_PLUGIN_AUTOLOAD"
ENV_TRACE = "TOKENRED_TRACE_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "tokenred.builtin.reducers",
    "tokenred.builtin.datasets",
    "tokenred.builtin.models",
)
"""Modules of the builtin plugins, registered under their module name."""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed to import or register."""

    name: str
    dist: str | None
    version: str | None
    error: str

    def line(self) -> str:
        """Return the one-line warning text."""
        where = f" (distribution {self.dist} {self.version})" if self.dist else ""
        return f"plugin '{self.name}'{where} failed and was skipped: {self.error}"


class TokenredPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers distributions and failures."""

    def __init__(self) -> None:
        """Create an empty manager with tokenred's hookspecs."""
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.dists: dict[str, tuple[str | None, str | None]] = {}

    def distribution_of(self, plugin: str) -> tuple[str | None, str | None]:
        """Return ``(distribution, version)`` of a plugin, or ``(None, None)``."""
        return self.dists.get(plugin, (None, None))

    def record_failure(self, plugin: str, error: str, exc: BaseException) -> None:
        """Record a failed plugin and emit its one warning."""
        dist, version = self.distribution_of(plugin)
        failure = PluginFailure(plugin, dist, version, error)
        self.failures.append(failure)
        log.warning("%s", failure.line())
        log.debug("plugin %s traceback", plugin, exc_info=exc)

    def plugin_rows(self) -> list[dict[str, Any]]:
        """Return one row per loaded or failed plugin for ``tokenred plugins``."""
        rows: list[dict[str, Any]] = []
        failed = {f.name for f in self.failures}
        for name, plugin in sorted(self.list_name_plugin()):
            if plugin is None:
                continue
            dist, version = self.distribution_of(name)
            hooks = sorted(c.name for c in self.get_hookcallers(plugin) or [])
            rows.append(
                {
                    "name": name,
                    "distribution": dist,
                    "version": version,
                    "status": "failed" if name in failed else "ok",
                    "hooks": hooks,
                    "error": None,
                }
            )
        for f in self.failures:
            if any(r["name"] == f.name for r in rows):
                row = next(r for r in rows if r["name"] == f.name)
                row["error"] = f.error
                continue
            rows.append(
                {
                    "name": f.name,
                    "distribution": f.dist,
                    "version": f.version,
                    "status": "failed",
                    "hooks": [],
                    "error": f.error,
                }
            )
        return rows


def _blocked_from_env() -> list[str]:
    raw = os.environ.get(ENV_DISABLE, "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def get_plugin_manager(
    *,
    autoload: bool = True,
    block: Iterable[str] = (),
    extra: Iterable[object] = (),
) -> TokenredPluginManager:
    """Return a fresh plugin manager with builtins and installed plugins.

    Args:
        autoload: Load the ``tokenred`` entry-point group (also switched off by
            ``TOKENRED_DISABLE_PLUGIN_AUTOLOAD=1``).
        block: Plugin names to skip (also ``TOKENRED_DISABLE_PLUGINS=a,b``).
        extra: Additional plugin objects (modules or instances), e.g. for tests.
    """
    pm = TokenredPluginManager()
    for name in [*block, *_blocked_from_env()]:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if pm.is_blocked(module_name):
            continue
        pm.register(importlib.import_module(module_name), name=module_name)
    if autoload and os.environ.get(ENV_NO_AUTOLOAD, "") not in {"1", "true"}:
        _load_entry_points(pm)
    for obj in extra:
        pm.register(obj)
    pm.check_pending()
    if os.environ.get(ENV_TRACE, "") in {"1", "true"}:
        pm.trace.root.setwriter(lambda msg: log.info("%s", msg.rstrip()))
        pm.enable_tracing()
    return pm


def _load_entry_points(pm: TokenredPluginManager) -> None:
    """Import each entry point of the group, recording failures instead of raising."""
    seen: set[str] = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen or pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        seen.add(ep.name)
        dist = getattr(ep, "dist", None)
        pm.dists[ep.name] = (
            dist.metadata["Name"] if dist is not None else None,
            dist.version if dist is not None else None,
        )
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            pm.record_failure(
                ep.name, f"cannot import '{ep.value}': {type(exc).__name__}: {exc}", exc
            )
