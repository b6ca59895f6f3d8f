"""The unreduced companion runs of a study (``measure.baseline``).

Every reduced run is compared with the same model answering the same samples
without reduction. The companion shares the run's model, data, seed and
measurement; its budget and insertion point are normalised so that every reducer
of a study shares one baseline run (one run id).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tokenred.reducer import BASELINE_REDUCER
from tokenred.results import run_id
from tokenred.schema import BudgetConfig, InsertionConfig, to_dict

if TYPE_CHECKING:
    from tokenred.registry import Registries
    from tokenred.schema import ExperimentConfig


def baseline_config(cfg: ExperimentConfig, registries: Registries) -> ExperimentConfig:
    """Return the unreduced companion of ``cfg``: same model, data, seed, measure."""
    none_cls = registries.reducers.get(BASELINE_REDUCER)
    return dataclasses.replace(
        cfg,
        reducer=none_cls.Config(name=BASELINE_REDUCER),
        budget=BudgetConfig(ratio=1.0, tokens=None),
        insertion=InsertionConfig(),
    )


def with_baselines(
    experiments: Sequence[ExperimentConfig], registries: Registries
) -> list[ExperimentConfig]:
    """Put the unreduced companion run first wherever ``measure.baseline`` asks.

    Duplicates (by run id) are dropped, so a study that already sweeps the
    baseline reducer runs it once.
    """
    out: list[ExperimentConfig] = []
    seen: set[str] = set()

    def add(c: ExperimentConfig) -> None:
        rid = run_id(to_dict(c))
        if rid not in seen:
            seen.add(rid)
            out.append(c)

    for cfg in experiments:
        if cfg.measure.baseline:
            add(baseline_config(cfg, registries))
    for cfg in experiments:
        add(_as_baseline(cfg, registries))
    return out


def _as_baseline(cfg: ExperimentConfig, registries: Registries) -> ExperimentConfig:
    """Normalise a run of the baseline reducer itself to the one unreduced run.

    ``--reducer none --budget 0.5`` would otherwise be a second unreduced run under
    another run id (the budget and insertion point change nothing without a
    reducer), answering every question twice.
    """
    if cfg.reducer.name != BASELINE_REDUCER:
        return cfg
    return baseline_config(cfg, registries)


def ignored_settings(cfg: ExperimentConfig) -> str | None:
    """Say which settings of a baseline-reducer run are ignored, or None.

    Only what the user changed from the schema's defaults (a budget, an insertion
    point) is named; the runner logs it once per study.
    """
    if cfg.reducer.name != BASELINE_REDUCER:
        return None
    parts = []
    if cfg.budget != BudgetConfig():
        parts.append(f"budget {cfg.budget.describe()}")
    if cfg.insertion != InsertionConfig():
        ins = cfg.insertion
        fields = {"stage": ins.stage, "layer": ins.layer, "positions": ins.positions}
        parts += [
            f"insertion.{k}={getattr(v, 'value', v)}"
            for k, v in fields.items()
            if v is not None
        ]
    if not parts:
        return None
    return (
        f"reducer '{BASELINE_REDUCER}' keeps every token: {', '.join(parts)} "
        "ignored; the unreduced run is run once"
    )


__all__ = ["baseline_config", "ignored_settings", "with_baselines"]
