"""Fit a threshold-driven reducer to an average budget (``tokenred calibrate``).

Threshold reducers such as STTM keep a data-dependent number of tokens; the paper
picked their thresholds by hand so that the *average* kept ratio met the budget.
Calibration records the original visual tokens of a few videos at the configured
insertion point and hands them to the reducer's own ``calibrate`` classmethod.

Whether the reducer can calibrate at all is checked first, before any model weight
or video is loaded, so a wrong ``--reducer`` fails in milliseconds.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import torch

from tokenred.adapter import create_adapter
from tokenred.controls import resolve_insertion
from tokenred.errors import DataError, UsageError
from tokenred.plan import BudgetSpec, ReductionPlan
from tokenred.reducer import TokenReducer
from tokenred.runfiles import loaded_device
from tokenred.tokens import Reduction, Stage
from tokenred.videos import VideoSource

if TYPE_CHECKING:
    from tokenred.adapter import ModelAdapter
    from tokenred.data import Sample
    from tokenred.registry import Registries
    from tokenred.schema import ExperimentConfig
    from tokenred.tokens import ReduceContext, VisualTokens

log = logging.getLogger(__name__)


class TokenRecorder(TokenReducer):
    """Keep every token and remember what it was given (calibration only).

    It goes through the same engine as any reducer, so the recorded tokens are
    exactly what the configured reducer would see at the insertion point: the
    projected features for ``pre_llm``, the hidden states entering layer K for
    ``in_llm``. One instance serves one calibration; it is never registered.
    """

    name = "record"
    paper = reference = "-"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[VisualTokens] = []

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        """Record a copy of the tokens and keep them all."""
        del ctx
        self.seen.append(dataclasses.replace(tokens, features=tokens.features.clone()))
        keep = torch.arange(tokens.n, device=tokens.device)
        return Reduction.from_keep_index(tokens, keep)


def _can_calibrate(reducer_cls: type[TokenReducer]) -> bool:
    """Whether the reducer overrides :meth:`TokenReducer.calibrate` (the refusal)."""
    own = getattr(reducer_cls.calibrate, "__func__", None)
    return own is not getattr(TokenReducer.calibrate, "__func__", None)


def preflight_calibration(
    cfg: ExperimentConfig, registries: Registries
) -> tuple[float, ModelAdapter]:
    """Check that the configured reducer can calibrate here, before loading anything.

    Builds the reducer and the (unloaded) adapter and checks them as a run would:
    a ratio budget, a reducer with its own calibration, and a stage both support.

    Returns:
        The target ratio and the adapter, not yet loaded.

    Raises:
        UsageError: Without a ratio budget, or for a reducer with no calibration
            (the reducer's own one-line refusal).
        CompatibilityError: The reducer cannot run at the configured stage.
    """
    ratio = cfg.budget.ratio
    if ratio is None:
        msg = "calibrate needs an average ratio: pass --budget 0.3 (not a token count)"
        raise UsageError(msg)
    entry = registries.reducers.entry(cfg.reducer.name)
    reducer_cls = entry.load()
    if not _can_calibrate(reducer_cls):
        reducer_cls.calibrate(cfg.reducer, [], float(ratio))  # raises the refusal
    adapter = create_adapter(registries.models, cfg.model)
    ins = resolve_insertion(cfg.insertion, adapter)
    probe = ReductionPlan(
        reducer=reducer_cls(cfg.reducer),
        stage=ins.stage or Stage.PRE_LLM,
        layer=ins.layer or 0,
        origin=entry.origin(),
    )
    adapter.check_plan(probe)
    return float(ratio), adapter


def collect_tokens(
    cfg: ExperimentConfig,
    registries: Registries,
    adapter: ModelAdapter,
    *,
    videos: int,
) -> tuple[list[VisualTokens], int | None]:
    """Return the original visual tokens of the first ``videos`` distinct videos.

    Args:
        cfg: The calibration's config (model, data, insertion point).
        registries: Where the dataset is found.
        adapter: The model adapter (loaded here).
        videos: Distinct videos to record, at most.

    Returns:
        ``(token_sets, head_dim)`` at the configured insertion point.
    """
    dataset = registries.datasets.get(cfg.data.name)(cfg.data)
    recorder = TokenRecorder()
    ins = resolve_insertion(cfg.insertion, adapter)
    adapter.load()
    source = VideoSource.for_run(
        cfg, adapter, dataset, device=loaded_device(adapter, cfg), timed=False
    )
    chosen: dict[str, Sample] = {}
    for sample in dataset.samples():
        chosen.setdefault(sample.video_id, sample)
        if len(chosen) >= videos:
            break
    for sample in chosen.values():
        try:
            video = source.get(sample)
        except DataError as exc:
            log.warning("calibration skips sample %s: %s", sample.id, exc)
            continue
        plan = ReductionPlan(
            reducer=recorder,
            stage=ins.stage or Stage.PRE_LLM,
            layer=ins.layer or 0,
            budget=BudgetSpec(ratio=1.0),
            seed=cfg.seed,
            sample_id=sample.id,
        )
        adapter.prefill(video.features, sample.prompt, plan)
    head_dim = getattr(adapter, "head_dim", None)
    return recorder.seen, head_dim if isinstance(head_dim, int) else None


def calibrate_reducer(
    cfg: ExperimentConfig, registries: Registries, *, videos: int = 16
) -> tuple[dict[str, Any], dict[str, float]]:
    """Fit the configured reducer's parameters to ``budget.ratio`` on average.

    Returns:
        ``(overrides, info)``: reducer config fields to set, and diagnostics (the
        number of videos, the achieved ratio, ...).

    Raises:
        UsageError: Without a ratio budget, for a reducer with no calibration, or
            when none of the videos can be read.
        CompatibilityError: The reducer cannot run at the configured stage.
    """
    ratio, adapter = preflight_calibration(cfg, registries)
    reducer_cls = registries.reducers.get(cfg.reducer.name)
    tokens, head_dim = collect_tokens(cfg, registries, adapter, videos=videos)
    if not tokens:
        msg = f"calibrate: no readable video among the first {videos} of the dataset"
        raise UsageError(msg)
    overrides, info = reducer_cls.calibrate(
        cfg.reducer, tokens, ratio, head_dim=head_dim
    )
    return overrides, {"videos": float(len(tokens)), **info}


__all__ = [
    "TokenRecorder",
    "calibrate_reducer",
    "collect_tokens",
    "preflight_calibration",
]
