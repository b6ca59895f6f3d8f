"""Experiment trackers: send each run's config, per-sample values and metrics elsewhere.

A tracker is a small class (:class:`Tracker`) that plugins register through the
``register_trackers`` hook -- the builtin TensorBoard tracker is registered the same
way -- and that a config switches on by name (``output.trackers=[tensorboard]``).
:class:`TrackerHub`, registered with every plugin manager, observes the run hooks
(``before_run``, ``after_sample``, ``after_run``) and forwards them to the trackers
the run's config names, so the runner knows nothing about trackers.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenred.errors import ConfigError
from tokenred.hookspecs import hookimpl

if TYPE_CHECKING:
    from tokenred.plugins import TokenredPluginManager
    from tokenred.results import RunStore, SampleRecord
    from tokenred.schema import ExperimentConfig

log = logging.getLogger(__name__)

HUB_NAME = "tokenred.builtin.trackers"
"""The hub's plugin name (``--disable-plugin tokenred.builtin.trackers``)."""


class Tracker:
    """Base class of experiment trackers; one instance per run.

    Subclasses set :attr:`name` and override what they need. Errors a tracker
    raises propagate (a tracker the user asked for that cannot write should stop the
    run, not silently lose its log).

    Args:
        config: The run's resolved config.
        manifest: The run manifest (``run_id``, versions, device, ...).
        run_dir: The run store's folder; trackers that write files put them below.
    """

    name: str = ""

    def __init__(
        self, config: ExperimentConfig, manifest: Mapping[str, Any], run_dir: Path
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.run_dir = run_dir

    def log_sample(self, record: SampleRecord, step: int) -> None:
        """Record one finished sample (``step`` counts this run's new samples)."""

    def finish(self, store: RunStore, metrics: Mapping[str, float]) -> None:
        """Record the run's aggregate ``metrics`` and release resources."""


def run_dir_of(config: ExperimentConfig, manifest: Mapping[str, Any]) -> Path:
    """Return the run store folder of a run (``<output.root>/<name>/<run_id>``)."""
    return Path(config.output.root) / config.name / str(manifest["run_id"])


class TrackerHub:
    """The plugin that forwards the run hooks to the trackers a config asks for.

    Args:
        pm: The plugin manager whose ``register_trackers`` hook names the trackers.
    """

    def __init__(self, pm: TokenredPluginManager) -> None:
        self._pm = pm
        self._classes: dict[str, type[Tracker] | str] | None = None
        self._active: list[Tracker] = []
        self._step = 0

    def classes(self) -> dict[str, type[Tracker] | str]:
        """Return the registered trackers, name -> class or ``"module:Class"``."""
        if self._classes is None:
            found: dict[str, type[Tracker] | str] = {}

            def register(
                cls: type[Tracker] | str, target: type[Tracker] | str | None = None
            ) -> None:
                if isinstance(cls, str):  # register("name", "module:Class")
                    if target is None:
                        msg = f"register_trackers: '{cls}' needs 'module:Class'"
                        raise ConfigError(msg)
                    found[cls] = target
                    return
                found[cls.name] = cls

            self._pm.hook.register_trackers(register=register)
            self._classes = found
        return self._classes

    def resolve(self, name: str) -> type[Tracker]:
        """Return the tracker class registered as ``name``.

        Raises:
            ConfigError: Unknown name (the message lists the known ones), or a
                tracker whose module cannot be imported (e.g. its extra is missing).
        """
        known = self.classes()
        if name not in known:
            names = ", ".join(sorted(known)) or "none"
            msg = (
                f"unknown tracker '{name}' in output.trackers; registered trackers: "
                f"{names}"
            )
            raise ConfigError(msg)
        target = known[name]
        if not isinstance(target, str):
            return target
        module, _, attr = target.partition(":")
        try:
            cls: type[Tracker] = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            msg = (
                f"tracker '{name}' cannot load ({exc}); install its extra, e.g. "
                f"pip install 'tokenred[{name}]', or drop it from output.trackers"
            )
            raise ConfigError(msg) from exc
        return cls

    @hookimpl
    def register_trackers(self, register: Any) -> None:
        """Register the builtin trackers (lazily: their libraries are optional)."""
        register("tensorboard", "tokenred.trackers.tensorboard:TensorBoardTracker")

    @hookimpl
    def before_run(self, config: Any, manifest: Any) -> None:
        """Start the trackers the run's ``output.trackers`` names."""
        self._finish_all(None, {})  # a run that raised never reached after_run
        # Observers see whatever the caller passes; only a run config has trackers.
        output = getattr(config, "output", None)
        names = list(getattr(output, "trackers", None) or [])
        self.classes()  # asked at the first run, tracker or not: bad hooks show early
        classes = [self.resolve(n) for n in names]  # every name checked first
        if not classes:
            return
        info = _as_dict(manifest)
        run_dir = run_dir_of(config, info)
        self._active = [cls(config, info, run_dir) for cls in classes]
        self._step = 0
        if self._active:
            log.info("trackers: %s", ", ".join(names))

    @hookimpl
    def after_sample(self, record: Any) -> None:
        """Forward one record to every active tracker."""
        if not self._active:
            return
        self._step += 1
        for tracker in self._active:
            tracker.log_sample(record, self._step)

    @hookimpl
    def after_run(self, store: Any) -> None:
        """Give the trackers the run's metrics and close them."""
        metrics = store.read_metrics() if hasattr(store, "read_metrics") else {}
        self._finish_all(store, metrics or {})

    def _finish_all(self, store: Any, metrics: Mapping[str, float]) -> None:
        active, self._active = self._active, []
        for tracker in active:
            tracker.finish(store, metrics)


def _as_dict(manifest: Any) -> dict[str, Any]:
    """The manifest as a plain dict (the runner passes a ``RunManifest``)."""
    if isinstance(manifest, Mapping):
        return dict(manifest)
    if dataclasses.is_dataclass(manifest) and not isinstance(manifest, type):
        return dataclasses.asdict(manifest)
    msg = f"a run manifest must be a mapping or dataclass, got {type(manifest)}"
    raise TypeError(msg)


__all__ = ["HUB_NAME", "Tracker", "TrackerHub", "run_dir_of"]
