"""Registries of reducers, model adapters and datasets, filled by plugin hooks.

:meth:`Registries.from_plugin_manager` calls each ``register_*`` hook once per plugin
with a ``register`` closure bound to that plugin, so every entry knows which plugin
and distribution provided it. That record feeds error messages, ``tokenred plugins``
and the run manifest. There is no module-global registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tokenred.errors import PluginError, TokenredError, UnknownNameError
from tokenred.plugins import DEFAULT_PLUGINS, is_first_party

if TYPE_CHECKING:
    from tokenred.plugins import PluginFailure, TokenredPluginManager

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

FIRST_PARTY_REDUCERS: dict[str, str] = {
    "sttm": "sttm",
    "tome": "tome",
    "fastv": "fastv",
    "pool": "pool",
    "dycoke_ttm": "dycoke_ttm",
    "template_stride": "template",
}
"""Reducer names reserved for a first-party plugin (reducer -> plugin name)."""

T = TypeVar("T")


def import_object(path: str) -> Any:
    """Import ``"package.module:Attr"`` and return the attribute."""
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


@dataclass
class Entry(Generic[T]):
    """One registered class and where it came from."""

    name: str
    target: type[T] | str
    plugin: str
    dist: str | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()

    def origin(self) -> str:
        """Return ``plugin (dist version)`` for messages."""
        if self.dist:
            return f"{self.plugin} ({self.dist} {self.version})"
        return self.plugin

    def label(self) -> str:
        """Return ``name (dist version)`` (or the name alone) for run-time messages."""
        return f"{self.name} ({self.dist} {self.version})" if self.dist else self.name

    def load(self) -> type[T]:
        """Return the class, importing it if it was registered lazily."""
        if isinstance(self.target, str):
            try:
                self.target = import_object(self.target)
            except Exception as exc:
                msg = (
                    f"{self.name}: cannot import '{self.target}' registered by plugin "
                    f"{self.origin()}: {type(exc).__name__}: {exc}"
                )
                raise PluginError(msg) from exc
        return self.target  # type: ignore[return-value]


@dataclass
class Registry(Generic[T]):
    """Name -> class mapping for one kind of thing, with suggestions on misses."""

    kind: str
    base: str
    entries: dict[str, Entry[T]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    failed_plugins: list[PluginFailure] = field(default_factory=list)
    """Plugins that failed to load: a missing name may be theirs."""

    def add(self, entry: Entry[T]) -> None:
        """Add an entry, rejecting bad names and duplicates.

        Raises:
            PluginError: Naming both plugins on a collision.
        """
        for name in (entry.name, *entry.aliases):
            if not NAME_RE.match(name):
                msg = (
                    f"{self.kind} name '{name}' from plugin {entry.origin()} must "
                    f"match {NAME_RE.pattern}"
                )
                raise PluginError(msg)
            clash = self.entries.get(self.aliases.get(name, name))
            if clash is not None:
                msg = (
                    f"{self.kind} '{name}' from plugin {entry.origin()} is already "
                    f"registered by plugin {clash.origin()}; disable one with "
                    "--disable-plugin"
                )
                raise PluginError(msg)
        self.entries[entry.name] = entry
        for alias in entry.aliases:
            self.aliases[alias] = entry.name

    def names(self) -> list[str]:
        """Return the sorted registered names (without aliases)."""
        return sorted(self.entries)

    def entry(self, name: str) -> Entry[T]:
        """Return the entry for ``name`` or an alias.

        Raises:
            UnknownNameError: With close matches and every available name.
        """
        key = self.aliases.get(name, name)
        if key not in self.entries:
            raise self._missing(name)
        return self.entries[key]

    def _missing(self, name: str) -> TokenredError:
        """Say a plugin failed to load when that plugin may provide ``name``."""
        owner = FIRST_PARTY_REDUCERS.get(name, name) if self.kind == "reducer" else name
        for failure in self.failed_plugins:
            if failure.name.split(" [")[0] in {name, owner}:
                where = f" (distribution {failure.dist})" if failure.dist else ""
                msg = (
                    f"{self.kind} '{name}' is not available: plugin "
                    f"'{failure.name}'{where} failed to load: {failure.error}; fix "
                    "or reinstall it ('tokenred plugins' lists every plugin)"
                )
                return PluginError(msg)
        err = UnknownNameError(self.kind, name, self.entries)
        if self.failed_plugins:
            names = ", ".join(f"'{f.name}'" for f in self.failed_plugins)
            err.args = (
                f"{err.args[0]} (plugins that failed to load and may provide it: "
                f"{names}; see 'tokenred plugins')",
            )
        return err

    def get(self, name: str) -> type[T]:
        """Return the class registered under ``name``."""
        return self.entry(name).load()

    def __iter__(self) -> Iterator[Entry[T]]:
        """Iterate entries in name order."""
        return iter(self.entries[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` (or an alias) is registered."""
        return isinstance(name, str) and self.aliases.get(name, name) in self.entries

    def __len__(self) -> int:
        """Number of registered entries."""
        return len(self.entries)


def _check_reducer(cls: Any, origin: str) -> str:
    from tokenred.reducer import ReducerConfig, TokenReducer

    if not (isinstance(cls, type) and issubclass(cls, TokenReducer)):
        msg = f"plugin {origin} registered {cls!r}, which is not a TokenReducer"
        raise PluginError(msg)
    name = getattr(cls, "name", None)
    if not isinstance(name, str):
        msg = f"reducer {cls.__name__} from plugin {origin} has no 'name'"
        raise PluginError(msg)
    config = cls.Config
    if not (dataclasses.is_dataclass(config) and issubclass(config, ReducerConfig)):
        msg = (
            f"reducer '{name}' from plugin {origin}: Config must be a dataclass "
            "subclass of tokenred.ReducerConfig"
        )
        raise PluginError(msg)
    return name


def _named(kind: str) -> Callable[[Any, str], str]:
    def check(cls: Any, origin: str) -> str:
        name = getattr(cls, "name", None)
        if not isinstance(cls, type) or not isinstance(name, str):
            msg = f"plugin {origin} registered {cls!r} as a {kind} without a 'name'"
            raise PluginError(msg)
        return name

    return check


@dataclass
class Registries:
    """The reducer, model-adapter and dataset registries of one plugin manager."""

    reducers: Registry[Any]
    models: Registry[Any]
    datasets: Registry[Any]
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(plugin, message) of registrations that raised."""

    @classmethod
    def empty(cls) -> Registries:
        """Return empty registries."""
        return cls(
            reducers=Registry("reducer", "tokenred.reducer:TokenReducer"),
            models=Registry("model", "tokenred.adapter:ModelAdapter"),
            datasets=Registry("dataset", "tokenred.data:VideoDataset"),
        )

    @classmethod
    def from_plugin_manager(cls, pm: TokenredPluginManager) -> Registries:
        """Call every ``register_*`` hook, plugin by plugin.

        A plugin whose hook raises is recorded as failed (with one warning naming it,
        its distribution and the error); the other plugins still register.
        """
        regs = cls.empty()
        hooks: list[tuple[str, Registry[Any], Callable[[Any, str], str]]] = [
            ("register_reducers", regs.reducers, _check_reducer),
            ("register_model_adapters", regs.models, _named("model")),
            ("register_datasets", regs.datasets, _named("dataset")),
        ]
        for hook_name, registry, check in hooks:
            caller = getattr(pm.hook, hook_name)
            # get_hookimpls() lists implementations in registration order (pluggy
            # *calls* them in reverse), so builtins register before third-party
            # plugins and a clashing plugin, not the builtin, is the one reported.
            for impl in _ordered(pm, caller.get_hookimpls()):
                plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
                dist, version = pm.distribution_of(plugin)
                register = _make_register(registry, check, plugin, dist, version)
                try:
                    impl.function(**{a: register for a in impl.argnames})
                except Exception as exc:
                    pm.record_failure(plugin, f"{hook_name} failed: {exc}", exc)
                    regs.failures.append((plugin, str(exc)))
        for registry in (regs.reducers, regs.models, regs.datasets):
            registry.failed_plugins = list(pm.failures)
        return regs


def _ordered(pm: TokenredPluginManager, impls: list[Any]) -> list[Any]:
    """Builtins, then first-party plugins, then the rest by name.

    A fixed order makes the outcome of a name clash independent of the order in
    which distributions were found; the later plugin is the one reported.
    """

    def key(item: tuple[int, Any]) -> tuple[int, int, str]:
        index, impl = item
        name = pm.get_name(impl.plugin) or ""
        if name in DEFAULT_PLUGINS:
            return (0, index, "")
        if is_first_party(name, pm.distribution_of(name)[0]):
            return (1, 0, name)
        return (2, 0, name)

    return [impl for _, impl in sorted(enumerate(impls), key=key)]


def _make_register(
    registry: Registry[Any],
    check: Callable[[Any, str], str],
    plugin: str,
    dist: str | None,
    version: str | None,
) -> Callable[..., None]:
    origin = f"{plugin} ({dist} {version})" if dist else plugin
    first_party = is_first_party(plugin, dist)

    def register(obj: Any, target: Any = None, aliases: tuple[str, ...] = ()) -> None:
        if isinstance(obj, str):
            # Lazy form: register("name", "module:Class").
            if not isinstance(target, str):
                msg = f"plugin {origin}: register('{obj}', ...) needs 'module:Class'"
                raise PluginError(msg)
            name, tgt = obj, target
        else:
            name, tgt = check(obj, origin), obj
        owner = FIRST_PARTY_REDUCERS.get(name) if registry.kind == "reducer" else None
        if owner is not None and not (plugin == owner and first_party):
            msg = (
                f"reducer name '{name}' from plugin {origin} is reserved for the "
                f"first-party plugin '{owner}'; rename the reducer"
            )
            raise PluginError(msg)
        registry.add(Entry(name, tgt, plugin, dist, version, aliases=tuple(aliases)))

    return register
