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

from tokenred.errors import PluginError, UnknownNameError

if TYPE_CHECKING:
    from tokenred.plugins import TokenredPluginManager

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

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
            raise UnknownNameError(self.kind, name, self.entries)
        return self.entries[key]

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
            for impl in caller.get_hookimpls():
                plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
                dist, version = pm.distribution_of(plugin)
                register = _make_register(registry, check, plugin, dist, version)
                try:
                    impl.function(**{a: register for a in impl.argnames})
                except Exception as exc:
                    pm.record_failure(plugin, f"{hook_name} failed: {exc}", exc)
                    regs.failures.append((plugin, str(exc)))
        return regs


def _make_register(
    registry: Registry[Any],
    check: Callable[[Any, str], str],
    plugin: str,
    dist: str | None,
    version: str | None,
) -> Callable[..., None]:
    origin = f"{plugin} ({dist} {version})" if dist else plugin

    def register(obj: Any, target: Any = None, aliases: tuple[str, ...] = ()) -> None:
        if isinstance(obj, str):
            # Lazy form: register("name", "module:Class").
            if not isinstance(target, str):
                msg = f"plugin {origin}: register('{obj}', ...) needs 'module:Class'"
                raise PluginError(msg)
            name, tgt = obj, target
        else:
            name, tgt = check(obj, origin), obj
        registry.add(Entry(name, tgt, plugin, dist, version, aliases=tuple(aliases)))

    return register
