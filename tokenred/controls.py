"""Study-level controls: everything that is not the reducer but changes the result.

A comparison of reducers is fair only when the position policy, the insertion stage
and layer, the frames, the dtype, the attention backend and the threads are the
same for every reducer. They are resolved here, once per run, from the config and
the model adapter's per-family defaults (never from the reducer: a reducer's
``position_policy`` is its *preferred* policy, metadata that applies only when the
user asks for it with ``insertion.positions``). The resolved values are what the run
is keyed by, what its manifest stores under ``controls``, what the CLI prints in
one header line before the run starts, and what ``tokenred report`` shows as a
column whenever the rows of a table differ in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tokenred.plan import check_insertion
from tokenred.schema import InsertionConfig
from tokenred.tokens import Stage

if TYPE_CHECKING:
    from tokenred.adapter import ModelAdapter
    from tokenred.schema import ExperimentConfig

CONTROL_COLUMNS: dict[str, str] = {
    "positions": "Positions",
    "stage": "Stage",
    "layer": "Layer",
    "frames": "Frames",
    "dtype": "DType",
    "attention": "Attn",
    "threads": "Threads",
}
"""Control key -> report column title, in display order."""

NOT_APPLICABLE = "-"
"""The value of a reduction control in the unreduced run (it reduces nothing)."""


def resolve_insertion(ins: InsertionConfig, adapter: ModelAdapter) -> InsertionConfig:
    """Fill the unset insertion fields from the model adapter's family defaults.

    ``insertion.stage`` unset: ``in_llm`` when a layer >= 1 is given, ``pre_llm``
    for layer 0, else the adapter's ``default_stage``. ``insertion.layer`` unset:
    0 before the LLM, the adapter's ``default_layer`` inside it.
    ``insertion.positions`` unset: the adapter's ``default_positions``.

    Raises:
        ConfigError: An inconsistent stage/layer pair.
    """
    stage, layer = ins.stage, ins.layer
    if stage is None:
        if layer is None:
            stage = adapter.default_stage
        else:
            stage = Stage.IN_LLM if layer >= 1 else Stage.PRE_LLM
    stage = Stage(stage)
    if layer is None:
        layer = adapter.default_layer if stage is Stage.IN_LLM else 0
    check_insertion(stage, layer)
    positions = ins.positions or adapter.default_positions
    return InsertionConfig(stage=stage, layer=layer, positions=positions)


def resolve_config(
    cfg: ExperimentConfig, adapter: ModelAdapter, *, unreduced: bool
) -> ExperimentConfig:
    """Return ``cfg`` with its controls resolved (the unreduced run unchanged).

    The unreduced run reduces nothing, so its insertion point and policy do not
    apply; leaving them unset keeps one baseline run per study.
    """
    if unreduced:
        return cfg
    return dataclasses.replace(cfg, insertion=resolve_insertion(cfg.insertion, adapter))


def _frames(cfg: ExperimentConfig) -> str:
    fr = cfg.data.frames
    if fr.num_frames is not None:
        return str(fr.num_frames)
    return f"{fr.fps:g} fps, max {fr.max_frames}" if fr.fps else f"max {fr.max_frames}"


def describe_controls(cfg: ExperimentConfig, *, unreduced: bool) -> dict[str, Any]:
    """Return the resolved controls of a run (``cfg`` from :func:`resolve_config`).

    Stored in the manifest under ``controls`` and printed by the CLI's header line.
    """
    ins = cfg.insertion
    reduced = not unreduced and ins.stage is not None
    return {
        "positions": ins.positions.value
        if reduced and ins.positions is not None
        else NOT_APPLICABLE,
        "stage": Stage(ins.stage).value if reduced else NOT_APPLICABLE,
        "layer": ins.layer if reduced else NOT_APPLICABLE,
        "frames": _frames(cfg),
        "dtype": cfg.model.dtype.value,
        "attention": cfg.model.attn_implementation,
        "threads": cfg.measure.threads,
        "deterministic": cfg.measure.deterministic,
        "budget_unit": "none" if unreduced else cfg.budget.unit,
    }


def header_line(cfg: ExperimentConfig, controls: Mapping[str, Any]) -> str:
    """Return the one line the CLI prints before a run starts: what will be run."""
    if controls["stage"] == NOT_APPLICABLE:
        where = "unreduced"
        budget = "budget none"
    else:
        where = str(controls["stage"])
        if controls["stage"] == Stage.IN_LLM.value:
            where += f" K={controls['layer']}"
        where += f" | positions={controls['positions']}"
        budget = f"budget {cfg.budget.describe()}"
    data = cfg.data
    limit = f", limit {data.limit}" if data.limit is not None else ""
    return (
        f"run {cfg.reducer.name} | {budget} | {where} | model {cfg.model.name} "
        f"({controls['dtype']}, {controls['attention']}) | data {data.name}/"
        f"{data.split}{limit} | frames {controls['frames']} | threads "
        f"{controls['threads']}"
    )


def mixed_controls(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the control keys whose value differs among reduced rows.

    The unreduced run's ``-`` is ignored: it reduces nothing, so it does not make a
    comparison unfair.
    """
    mixed = []
    for key in CONTROL_COLUMNS:
        values = {
            str(r.get(key))
            for r in rows
            if r.get(key) is not None and str(r.get(key)) not in (NOT_APPLICABLE, "?")
        }
        if len(values) > 1:
            mixed.append(key)
    return mixed


def mixed_warning(mixed: Sequence[str]) -> str:
    """Return the one warning line of a comparison whose rows differ in controls."""
    names = ", ".join(CONTROL_COLUMNS[k] for k in mixed)
    return (
        f"warning: these rows differ in {names}, not only in the reducer and its "
        "budget; compare them as an ablation of that control, not as a ranking of "
        "reducers"
    )


__all__ = [
    "CONTROL_COLUMNS",
    "describe_controls",
    "header_line",
    "mixed_controls",
    "mixed_warning",
    "resolve_config",
    "resolve_insertion",
]
