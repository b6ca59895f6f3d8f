"""The experiment runner: orchestration only, identical for every reducer.

A study goes through four steps, each owned by its own module:

1. **preflight** (:func:`preflight`): build every run's reducer, adapter and
   dataset and check that they fit, before any weight loads;
2. **runs**: for each run, open its store (:mod:`tokenred.results`), skip the
   samples already recorded, load the model and write the manifest
   (:mod:`tokenred.runfiles`);
3. **samples**: per video, read the features (:mod:`tokenred.videos`), hand each
   question to the measurement protocol (:mod:`tokenred.protocol`) or, when
   ``measure.kv_reuse`` asks and the reducer is query-agnostic, to the KV-reuse
   step, whose records are the answers from a shared prefix (:mod:`tokenred.reuse`);
4. **records**: append each record durably, then aggregate ``metrics.json``.

Nothing here knows a particular model or reducer, nothing here prints: the CLI
reports the returned :class:`RunOutcome` values. See ``docs/architecture.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenred.baselines import ignored_settings, with_baselines
from tokenred.config import to_dict, to_yaml
from tokenred.distributed import World
from tokenred.protocol import SampleProtocol
from tokenred.results import RunStore
from tokenred.runfiles import (
    collect_manifest,
    loaded_device,
    write_metrics,
    write_study_results,
)
from tokenred.videos import VideoSource, by_video

if TYPE_CHECKING:
    from tokenred.config import ExperimentConfig, Study
    from tokenred.plugins import TokenredPluginManager
    from tokenred.registry import Registries
    from tokenred.results import SampleRecord

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int], Any]
"""``(label, total) -> bar`` with ``update(n)`` and ``close()``, e.g. ``tqdm``."""


@dataclass
class RunOutcome:
    """What one experiment produced.

    Attributes:
        store: The run's store (records, manifest, metrics).
        config: The run's config.
        new_records: Records appended by this invocation.
        errors: Error records among the new ones.
        reused: Samples already recorded by an earlier invocation.
        metrics: The dataset's aggregate metrics over all records.
    """

    store: RunStore
    config: ExperimentConfig
    new_records: int = 0
    errors: int = 0
    reused: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def preflight(cfg: ExperimentConfig, registries: Registries) -> SampleProtocol:
    """Build a run's parts and check they fit, before any weights load.

    ``run_study`` calls it for every study point before the first run starts;
    ``run_experiment`` uses the protocol it returns (on CPU until the model loads).

    Raises:
        TokenredError: Unknown names, or a reducer/adapter/stage mismatch.
    """
    protocol = SampleProtocol.for_config(cfg, registries)
    protocol.dataset.check_selection()  # an empty selection fails before any run
    plan = protocol.plan("")
    if plan is not None:
        protocol.adapter.check_plan(plan)
    return protocol


def run_study(
    study: Study,
    registries: Registries,
    pm: TokenredPluginManager | None = None,
    *,
    progress: ProgressFactory | None = None,
    announce: Callable[[SampleProtocol], None] | None = None,
) -> list[RunOutcome]:
    """Run every experiment of a study (unreduced baselines first).

    Every run is preflighted before the first one starts, so an impossible point
    fails the study before hours of other points have run. ``announce`` then sees
    each preflighted run (its resolved controls) before any starts: the CLI prints
    its header lines from it.
    """
    for note in dict.fromkeys(map(ignored_settings, study.experiments)):
        if note is not None:
            log.warning("%s", note)
    experiments = with_baselines(study.experiments, registries)
    protocols = [preflight(cfg, registries) for cfg in experiments]
    if announce is not None:
        for protocol in protocols:
            announce(protocol)
    outcomes = [_run(protocol, pm, progress) for protocol in protocols]
    if World.current().is_main:  # <root>/<name>/results.json, written once
        write_study_results([o.store for o in outcomes])
    return outcomes


def run_experiment(
    cfg: ExperimentConfig,
    registries: Registries,
    pm: TokenredPluginManager | None = None,
    *,
    progress: ProgressFactory | None = None,
) -> RunOutcome:
    """Run (or resume) one experiment and return its outcome.

    Args:
        cfg: The run's config.
        registries: Where its reducer, model and dataset are found.
        pm: The plugin manager whose run hooks fire (none without it).
        progress: Optional factory of a progress bar (``tqdm``-like: ``update(n)``
            and ``close()``) given a label and the number of questions; the CLI
            passes one, the runner itself never writes to the terminal.

    Raises:
        TokenredError: For configuration, compatibility or model-loading problems;
            per-sample data errors become error records instead.
    """
    return _run(preflight(cfg, registries), pm, progress)


def _run(
    protocol: SampleProtocol,
    pm: TokenredPluginManager | None,
    progress: ProgressFactory | None,
) -> RunOutcome:
    """Run (or resume) one preflighted experiment; see :func:`run_experiment`."""
    cfg = protocol.cfg  # controls resolved (tokenred.controls): they key the run
    adapter, dataset = protocol.adapter, protocol.dataset
    # The weights are part of a run's identity: retrained or swapped weights at the
    # same path must not resume (or be reported as) the old weights' answers.
    keyed = {**to_dict(cfg), "model_weights": adapter.weights_identity()}
    store = RunStore.for_config(Path(cfg.output.root) / cfg.name, keyed)
    # Under torchrun/accelerate every rank runs this; alone, `world` does nothing.
    world = World.current()
    # Threads and deterministic algorithms for this run only (restored after it).
    with (
        world.open_store(store, reset=cfg.output.overwrite) as store,
        protocol.compute_settings() as settings,
    ):
        if world.is_main:
            store.write_config(to_yaml(cfg))
        done = store.completed_ids(include_errors=False)
        samples = dataset.samples()
        pending = [s for s in samples if s.id not in done]
        reused = len(samples) - len(pending)
        outcome = RunOutcome(store=store, config=cfg, reused=reused)
        if not pending:
            log.info("run %s: all %d records present", store.path, len(samples))
            outcome.metrics = world.from_main(lambda: write_metrics(store, dataset))
            return outcome
        groups = world.share(by_video(pending))  # whole videos, this rank's share
        if groups or world.is_main:
            world.place(adapter)
            adapter.load()
        parallel = world.describe(loaded_device(adapter, cfg) if groups else None)
        if world.is_main:
            manifest = collect_manifest(
                keyed,
                cfg,
                adapter,
                pm,
                compute=settings.to_dict(),
                kv_reuse=protocol.kv_reuse_entry(),
                controls=protocol.controls(),
                parallel=parallel,
            )
            store.write_manifest(manifest)
            if pm is not None:
                pm.hook.before_run(config=cfg, manifest=manifest)
        if groups:  # a rank can get no video (fewer videos than ranks)
            _measure(protocol, groups, store, outcome, pm, progress)
        # Every rank reports the whole run's counts, as one process would.
        counts = world.gather((outcome.new_records, outcome.errors))
        outcome.new_records, outcome.errors = (sum(c) for c in zip(*counts))
        outcome.metrics = world.from_main(lambda: write_metrics(store, dataset))
        if pm is not None and world.is_main:
            pm.hook.after_run(store=store)
    return outcome


def _measure(
    protocol: SampleProtocol,
    groups: list[list[Any]],
    store: RunStore,
    outcome: RunOutcome,
    pm: TokenredPluginManager | None,
    progress: ProgressFactory | None,
) -> None:
    """Answer this process's video groups and append each record."""
    cfg, adapter = protocol.cfg, protocol.adapter
    protocol.device = loaded_device(adapter, cfg)
    timed = cfg.measure.latency
    source = VideoSource.for_run(
        cfg, adapter, protocol.dataset, device=protocol.device, timed=timed
    )
    reuse = protocol.kv_reuse()
    label = f"{cfg.reducer.name}@{cfg.budget.describe()}"
    for group in _progress(groups, label, progress):
        if reuse is None:  # each record is durable as soon as it exists
            for sample in group:
                _append(store, protocol.measure(sample, source)[0], outcome, pm)
            continue
        # One video's questions answered from shared prefixes (reused answers).
        for record in reuse.records(group, source):
            _append(store, record, outcome, pm)


def _progress(
    groups: list[list[Any]], label: str, progress: ProgressFactory | None
) -> Iterator[list[Any]]:
    """Yield the per-video groups, advancing the caller's bar by questions."""
    if progress is None:
        yield from groups
        return
    bar = progress(label, sum(map(len, groups)))
    try:
        for group in groups:
            yield group
            bar.update(len(group))
    finally:
        bar.close()


def _append(
    store: RunStore,
    record: SampleRecord,
    outcome: RunOutcome,
    pm: TokenredPluginManager | None,
) -> None:
    store.append(record)
    outcome.new_records += 1
    outcome.errors += record.status != "ok"
    if pm is not None:
        pm.hook.after_sample(record=record)


__all__ = ["RunOutcome", "preflight", "run_experiment", "run_study"]
