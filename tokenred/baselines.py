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
        add(cfg)
    return out


__all__ = ["baseline_config", "with_baselines"]
