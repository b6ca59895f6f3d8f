"""Hook specifications of tokenred plugins.

Hooks only register things; classes behave. An implementation may accept any subset
of a hook's arguments, which leaves room to add arguments later.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "tokenred"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_reducers(register: Any) -> None:
    """Register token reducers.

    Called once per plugin manager when the registries are built.

    Args:
        register: Call as ``register(ReducerClass, aliases=())`` for each
            :class:`~tokenred.TokenReducer` subclass the plugin provides.
    """


@hookspec
def register_model_adapters(register: Any) -> None:
    """Register model adapters.

    Args:
        register: Call as ``register(AdapterClass)`` or, to import lazily, as
            ``register("name", "module:Class")``.
    """


@hookspec
def register_datasets(register: Any) -> None:
    """Register video QA datasets.

    Args:
        register: Call as ``register(DatasetClass)`` or ``register("name",
            "module:Class")``.
    """


@hookspec
def register_commands(subparsers: Any) -> None:
    """Add subcommands to the ``tokenred`` CLI.

    Args:
        subparsers: The ``argparse`` subparsers action of the main parser. A command
            sets ``func`` with ``set_defaults(func=callable(args) -> int)``.
    """


@hookspec
def register_trackers(register: Any) -> None:
    """Register experiment trackers (switched on by ``output.trackers``).

    Called when the first run of a manager starts. A tracker subclasses
    :class:`tokenred.trackers.Tracker` and receives the run's config, each record
    and the final metrics (the builtin hub forwards ``before_run``,
    ``after_sample`` and ``after_run`` to it).

    Args:
        register: Call as ``register(TrackerClass)`` (registered under its
            ``name``) or, to import lazily, ``register("name", "module:Class")``.
    """


@hookspec
def before_run(config: Any, manifest: Any) -> None:
    """Observe the start of a run; return values are ignored.

    Args:
        config: The resolved, typed experiment config.
        manifest: The run manifest (versions, device, plugins).
    """


@hookspec
def after_sample(record: Any) -> None:
    """Observe one finished sample record; return values are ignored.

    Args:
        record: The per-sample record as written to the run store.
    """


@hookspec
def after_run(store: Any) -> None:
    """Observe the end of a run; return values are ignored.

    Args:
        store: The run store holding every record.
    """
