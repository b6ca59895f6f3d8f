"""The unreduced companion runs of a study (``measure.baseline``).

Every reduced run is compared with the same model answering the same samples
without reduction. The companion shares the run's model, data, seed and
measurement; its budget and insertion point are normalised so that every reducer
of a study shares one baseline run (one run id).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tokenred.reducer import BASELINE_REDUCER
from tokenred.results import run_id
from tokenred.schema import BudgetConfig, InsertionConfig, to_dict

if TYPE_CHECKING:
    from tokenred.registry import Registries
    from tokenred.schema import ExperimentConfig

log = logging.getLogger(__name__)


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

    ``--reducer none --budget 0.3`` would otherwise be a second unreduced run under
    another run id (the budget and insertion point change nothing without a
    reducer), answering every question twice.
    """
    if cfg.reducer.name != BASELINE_REDUCER:
        return cfg
    base = baseline_config(cfg, registries)
    # Only a budget or insertion point the user set is worth a warning; the
    # schema's defaults (ratio 0.3, the family's insertion) are not.
    if (cfg.budget, cfg.insertion) != (BudgetConfig(), InsertionConfig()):
        ins = cfg.insertion
        log.warning(
            "reducer '%s' keeps every token: budget %s and insertion "
            "(stage %s, layer %s, positions %s) are ignored; the unreduced run is "
            "run once",
            BASELINE_REDUCER,
            cfg.budget.describe(),
            getattr(ins.stage, "value", ins.stage),
            ins.layer,
            getattr(ins.positions, "value", ins.positions),
        )
    return base


__all__ = ["baseline_config", "with_baselines"]
