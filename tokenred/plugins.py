"""Plugin loading: builtins first, then the ``tokenred`` entry-point group.

:func:`get_plugin_manager` returns a fresh manager every call; nothing is loaded at
import time. A plugin that fails to import or register never takes the tool down: it
is recorded in :attr:`TokenredPluginManager.failures`, one warning names it, its
distribution and the error, and everything else keeps working.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from tokenred import hookspecs
from tokenred.trackers import HUB_NAME, TrackerHub

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

FIRST_PARTY: dict[str, str] = {
    "sttm": "tokenred-sttm",
    "tome": "tokenred-tome",
    "fastv": "tokenred-fastv",
    "pool": "tokenred-pool",
    "dycoke_ttm": "tokenred-dycoke-ttm",
    "template": "tokenred-template",
}
"""Entry-point names reserved for the plugins shipped with tokenred -> distribution.

Another distribution cannot take these names (nor the reducer names of
:data:`tokenred.registry.FIRST_PARTY_REDUCERS`), whatever the load order.
"""


def is_first_party(plugin: str, dist: str | None) -> bool:
    """Whether ``plugin`` is a builtin or a first-party plugin from its own dist."""
    if plugin in DEFAULT_PLUGINS:
        return True
    expected = FIRST_PARTY.get(plugin)
    return expected is not None and _norm(dist) == _norm(expected)


def _norm(dist: str | None) -> str:
    return (dist or "").lower().replace("_", "-").replace(".", "-")


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

    def record_failure(
        self, plugin: str, error: str, exc: BaseException | None
    ) -> None:
        """Record a failed plugin and emit its one warning."""
        dist, version = self.distribution_of(plugin)
        failure = PluginFailure(plugin, dist, version, error)
        self.failures.append(failure)
        log.warning("%s", failure.line())
        if exc is not None:
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
    if not pm.is_blocked(HUB_NAME):  # trackers: one hub per manager (it has state)
        pm.register(TrackerHub(pm), name=HUB_NAME)
    if autoload and os.environ.get(ENV_NO_AUTOLOAD, "") not in {"1", "true"}:
        _load_entry_points(pm)
    for obj in extra:
        _safe_register(pm, obj, None)
    pm.check_pending()  # every plugin with an unknown hook was already removed
    if os.environ.get(ENV_TRACE, "") in {"1", "true"}:
        pm.trace.root.setwriter(lambda msg: log.info("%s", msg.rstrip()))
        pm.enable_tracing()
    return pm


def _hook_names() -> list[str]:
    prefixes = ("register_", "before_", "after_")
    return sorted(n for n in vars(hookspecs) if n.startswith(prefixes))


def unknown_hooks(pm: TokenredPluginManager, plugin: object) -> list[str]:
    """Return the hook implementations of ``plugin`` that match no hookspec."""
    bad = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not impl.optionalhook:
                bad.append(caller.name)
    return sorted(set(bad))


def _safe_register(pm: TokenredPluginManager, plugin: object, name: str | None) -> None:
    """Register one plugin; a bad hook fails that plugin only, with a fix.

    pluggy would raise (and take every command down) for a hook name that matches no
    specification or for a hook with arguments the specification lacks.
    """
    label = name or _label(plugin)
    try:
        registered = pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        pm.record_failure(label, f"invalid hook: {exc}{_disable_hint(label)}", exc)
        return
    except ValueError as exc:  # the same module under two entry-point names
        pm.record_failure(label, f"cannot register: {exc}{_disable_hint(label)}", exc)
        return
    if registered is None:  # blocked
        return
    bad = unknown_hooks(pm, plugin)
    if not bad:
        return
    pm.unregister(plugin)
    known = _hook_names()
    parts = []
    for hook in bad:
        close = difflib.get_close_matches(hook, known, n=1, cutoff=0.6)
        parts.append(f"'{hook}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    msg = (
        f"unknown hook {', '.join(parts)}; hooks are {', '.join(known)}"
        f"{_disable_hint(label)}"
    )
    pm.record_failure(label, msg, None)


def _label(plugin: object) -> str:
    return str(getattr(plugin, "__name__", None) or type(plugin).__name__)


def _disable_hint(name: str) -> str:
    return f" (fix the plugin or skip it with --disable-plugin {name})"


def _load_entry_points(pm: TokenredPluginManager) -> None:
    """Import each entry point of the group, recording failures instead of raising.

    Entry points are grouped by name first, so the outcome never depends on the
    order in which distributions are found: a first-party name is only taken by its
    own distribution, and a name offered by two other distributions loads neither
    and names both.
    """
    by_name: dict[str, dict[str, metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = str(dist.metadata["Name"]) if dist is not None else ""
        by_name.setdefault(ep.name, {}).setdefault(dist_name, ep)
    for name in sorted(by_name):
        if pm.is_blocked(name) or pm.has_plugin(name):
            continue
        eps = by_name[name]
        chosen = _choose(pm, name, eps)
        if chosen is None:
            continue
        ep = chosen
        dist = getattr(ep, "dist", None)
        pm.dists[name] = (
            dist.metadata["Name"] if dist is not None else None,
            dist.version if dist is not None else None,
        )
        try:
            plugin = ep.load()
        except Exception as exc:
            pm.record_failure(
                name, f"cannot import '{ep.value}': {type(exc).__name__}: {exc}", exc
            )
            continue
        _safe_register(pm, plugin, name)


def _choose(
    pm: TokenredPluginManager, name: str, eps: dict[str, metadata.EntryPoint]
) -> metadata.EntryPoint | None:
    """Pick the entry point to load for ``name``; record the rejected ones."""
    first = FIRST_PARTY.get(name)
    if first is not None:
        own = [d for d in eps if _norm(d) == _norm(first)]
        for dist in sorted(d for d in eps if _norm(d) != _norm(first)):
            pm.dists.setdefault(f"{name} [{dist}]", (dist, _version(eps[dist])))
            msg = (
                f"entry point name '{name}' of distribution {dist} is reserved for "
                f"the first-party distribution {first}; rename the entry point "
                f"or uninstall {dist}"
            )
            pm.record_failure(f"{name} [{dist}]", msg, None)
        return eps[own[0]] if own else None
    if len(eps) > 1:
        dists = sorted(eps)
        for dist in dists:
            key = f"{name} [{dist}]"
            pm.dists[key] = (dist, _version(eps[dist]))
            others = ", ".join(d for d in dists if d != dist)
            msg = (
                f"entry point name '{name}' is provided by distributions "
                f"{' and '.join(dists)}; neither was loaded: uninstall one "
                f"(this one clashes with {others})"
            )
            pm.record_failure(key, msg, None)
        return None
    return next(iter(eps.values()))


def _version(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return str(dist.version) if dist is not None else None
