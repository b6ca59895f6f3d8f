"""The typed experiment schema: plain dataclasses, one help string per field.

These are the objects the runner, the adapters and the report receive. They carry
no OmegaConf: :mod:`tokenred.config` merges YAML files, flags and overrides onto them
(and is the only module that imports omegaconf). Cross-field validation lives in
``__post_init__`` so that it runs whichever way a config is built.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tokenred.adapter import AdapterConfig
from tokenred.data import DataConfig
from tokenred.errors import ConfigError
from tokenred.plan import BudgetSpec, budget_error, check_budget, check_insertion
from tokenred.reducer import ReducerConfig
from tokenred.tokens import PositionPolicy, Stage

__all__ = [
    "AdapterConfig",
    "BudgetConfig",
    "DataConfig",
    "ExperimentConfig",
    "InsertionConfig",
    "MeasureConfig",
    "OutputConfig",
    "ReducerConfig",
    "Study",
    "StudyConfig",
    "check_budget",
    "parse_budget",
    "to_dict",
]

SELECTORS = ("reducer", "model", "data")
"""Sections whose ``name`` selects a registered class (and its Config)."""
STUDY_KEYS = frozenset({"study", "base", "sweep"})


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def parse_budget(value: str | float) -> dict[str, Any]:
    """Turn ``--budget`` text into budget fields: ``"0.3"`` is a ratio, ``"64"`` tokens.

    Raises:
        ConfigError: For non-numbers, non-positive values and fractions above 1.
    """
    if isinstance(value, bool):
        raise budget_error(f"{value!r} is not a number")
    if isinstance(value, int):
        out: dict[str, Any] = {"ratio": None, "tokens": value, "flops": None}
    elif isinstance(value, float):
        out = {"ratio": value, "tokens": None, "flops": None}
    else:
        text = str(value).strip()
        try:
            out = {"ratio": None, "tokens": int(text), "flops": None}
        except ValueError:
            try:
                out = {"ratio": float(text), "tokens": None, "flops": None}
            except ValueError:
                raise budget_error(f"{text!r} is not a number") from None
    check_budget(out["ratio"], out["tokens"])
    return out


@dataclass
class BudgetConfig(BudgetSpec):
    """How many visual tokens a reducer may keep: a fraction, a count or FLOPs.

    ``flops`` is a fraction of the unreduced prefill FLOPs (compute-matched, for
    cross-stage comparisons).

    A :class:`~tokenred.plan.BudgetSpec` (so the runner hands it to the adapter
    as is) with a default and help text for every field.
    """

    ratio: float | None = field(
        default=0.3,
        metadata=_help(
            "fraction of the N input visual tokens to keep, in (0, 1]; "
            "the alternative to tokens"
        ),
    )
    tokens: int | None = field(
        default=None,
        metadata=_help(
            "number of visual tokens to keep, >= 1; the alternative to ratio"
        ),
    )
    flops: float | None = field(
        default=None,
        metadata=_help(
            "fraction of the unreduced prefill FLOPs (same model, prompt and video) "
            "to spend, in (0, 1]: resolved per sample to the largest visual-token "
            "count whose analytic prefill FLOPs fit at the insertion layer. The "
            "recommended unit for comparing reducers at different insertion points"
        ),
    )


@dataclass
class InsertionConfig:
    """Where the reducer runs in the model and how positions are assigned.

    Study-level controls: every reducer of a comparison runs at the same point
    under the same policy. Unset fields take the model family's default (the
    adapter's ``default_stage``, ``default_layer`` and ``default_positions``, see
    ``docs/concepts.md``); the resolved values are stored in the run's manifest.
    """

    stage: Stage | None = field(
        default=None,
        metadata=_help(
            "pre_llm: on the projected features; in_llm: before layer K; null uses "
            "the model's default (in_llm for every first-party model)"
        ),
    )
    layer: int | None = field(
        default=None,
        metadata=_help(
            "decoder layer K the reduced tokens enter: 0 for pre_llm, >= 1 for "
            "in_llm; null uses the model's default (K=2 for the 28-layer LLaVA and "
            "Qwen2-VL checkpoints, K=1 for the 4-layer embedded model)"
        ),
    )
    positions: PositionPolicy | None = field(
        default=None,
        metadata=_help(
            "rotary positions of reduced tokens, the same for every reducer: "
            "reassign, survive or merged; null uses the model's default (survive "
            "for the embedded model and M-RoPE Qwen2-VL, reassign for 1-D RoPE "
            "LLaVA checkpoints)"
        ),
    )

    def __post_init__(self) -> None:
        """Tie the layer to the stage (when both are given)."""
        if self.stage is not None:
            self.stage = Stage(self.stage)
        if self.layer is not None and self.layer < 0:
            check_insertion(Stage.IN_LLM, self.layer)
        if self.stage is not None and self.layer is not None:
            check_insertion(self.stage, self.layer)


@dataclass
class MeasureConfig:
    """What the runner measures; identical for every reducer."""

    flops: bool = field(
        default=True, metadata=_help("analytic prefill FLOPs from the token schedule")
    )
    latency: bool = field(
        default=True,
        metadata=_help("time vision, reducer, prefill (TTFT), decode and end to end"),
    )
    warmup: int = field(
        default=1,
        metadata=_help("untimed warm-up passes of each sample before the timed ones"),
    )
    repeats: int = field(
        default=3,
        metadata=_help("timed repeats of each sample's prefill; the median is kept"),
    )
    memory: bool = field(
        default=True, metadata=_help("record peak memory (GPU allocated or CPU RSS)")
    )
    baseline: bool = field(
        default=True,
        metadata=_help(
            "also run the unreduced model (reducer none) on the same samples, for "
            "relative accuracy, TTFT and FLOPs and answer agreement"
        ),
    )
    kv_reuse: int = field(
        default=0,
        metadata=_help(
            "answer up to this many questions per video from one cached, reduced "
            "video prefix (query-agnostic reducers only); 0 turns reuse off"
        ),
    )

    threads: int = field(
        default=1,
        metadata=_help(
            "torch intra-op threads during the run (0: torch's default, one per "
            "physical core); recorded in the manifest. Answers do not depend on it, "
            "CPU timings do: one thread is the stable choice on a shared CPU"
        ),
    )
    deterministic: bool = field(
        default=True,
        metadata=_help(
            "run with torch's deterministic algorithms (warn-only where an op has "
            "none), so the same run id gives the same answers on every rerun"
        ),
    )

    def __post_init__(self) -> None:
        """Reject negative counts."""
        for key in ("warmup", "kv_reuse", "threads"):
            if getattr(self, key) < 0:
                msg = f"measure.{key} must be >= 0, got {getattr(self, key)}"
                raise ConfigError(msg)
        if self.repeats < 1:
            msg = f"measure.repeats must be >= 1, got {self.repeats}"
            raise ConfigError(msg)


@dataclass
class OutputConfig:
    """Where results go."""

    root: str = field(
        default="runs", metadata=_help("directory holding <name>/<run_id>/ run stores")
    )
    overwrite: bool = field(
        default=False,
        metadata=_help("start the run store afresh instead of resuming it"),
    )
    feature_cache: bool = field(
        default=True,
        metadata=_help(
            "cache vision-encoder outputs under output.root/_features, keyed by "
            "model, video and frame sampling"
        ),
    )
    trackers: list[str] = field(
        default_factory=list,
        metadata=_help(
            "experiment trackers to send each run to, e.g. [tensorboard] "
            "(registered by the register_trackers hook)"
        ),
    )


@dataclass
class ExperimentConfig:
    """One run: a model, a dataset, a reducer at a budget and an insertion point."""

    name: str = field(
        default="default",
        metadata=_help("experiment or study name; runs go to output.root/<name>/"),
    )
    seed: int = field(
        default=0, metadata=_help("seed; per-sample generators derive from it")
    )
    model: AdapterConfig = field(
        default_factory=AdapterConfig,
        metadata=_help("model adapter: model.name selects a registered adapter"),
    )
    data: DataConfig = field(
        default_factory=DataConfig,
        metadata=_help("dataset: data.name selects a registered dataset"),
    )
    reducer: ReducerConfig = field(
        default_factory=ReducerConfig,
        metadata=_help("token reducer: reducer.name selects a registered reducer"),
    )
    budget: BudgetConfig = field(
        default_factory=BudgetConfig, metadata=_help("visual-token budget")
    )
    insertion: InsertionConfig = field(
        default_factory=InsertionConfig, metadata=_help("insertion point")
    )
    measure: MeasureConfig = field(
        default_factory=MeasureConfig, metadata=_help("measurement settings")
    )
    output: OutputConfig = field(
        default_factory=OutputConfig, metadata=_help("run store location")
    )


@dataclass
class StudyConfig:
    """A study file: settings shared by every run, plus a Cartesian sweep."""

    study: str = field(
        default="",
        metadata=_help("study name (sets name for every run); empty keeps base.name"),
    )
    base: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help("a partial experiment config shared by every run"),
    )
    sweep: dict[str, list[Any]] = field(
        default_factory=dict,
        metadata=_help("dotted key -> list of values; every combination is one run"),
    )


@dataclass(frozen=True)
class Study:
    """The resolved runs of one ``tokenred run`` invocation."""

    name: str
    experiments: tuple[ExperimentConfig, ...]
    points: tuple[dict[str, Any], ...]
    """The swept values of each experiment (empty dicts without a sweep)."""


def to_dict(config: Any) -> dict[str, Any]:
    """Return a dataclass config as plain YAML/JSON-ready values (enums by value)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return typing.cast("dict[str, Any]", plain(dataclasses.asdict(config)))
