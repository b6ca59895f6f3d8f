"""Prefill equivalence: keep-all == unmodified model; dropping == masking reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from _adapter_helpers import (
    FAMILIES,
    PROMPT,
    EveryThird,
    PairMerge,
    hf_inputs,
    hf_logits,
    masking_reference,
)

from tokenred.builtin.reducers import NoneReducer, RandomReducer
from tokenred.insertion import build_spliced
from tokenred.plan import BudgetSpec, ReductionPlan
from tokenred.tokens import PositionPolicy, Stage, VisualTokens

STAGES = [(Stage.PRE_LLM, 0), (Stage.IN_LLM, 2)]
STAGE_IDS = ["pre_llm", "in_llm_k2"]


def _policies(family: str) -> list[PositionPolicy]:
    if family.startswith("qwen"):
        return [PositionPolicy.SURVIVE, PositionPolicy.MERGED]
    return [PositionPolicy.SURVIVE, PositionPolicy.REASSIGN, PositionPolicy.MERGED]


def _plan(
    reducer: Any, stage: tuple[Stage, int], policy: Any, ratio: float
) -> ReductionPlan:
    return ReductionPlan(
        reducer,
        stage[0],
        stage[1],
        BudgetSpec(ratio=ratio),
        positions=policy,
        seed=3,
        sample_id="s0",
    )


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_equals_unmodified_model(
    family: str, stage: tuple[Stage, int], load_adapter: Any, frames: np.ndarray
) -> None:
    adapter = load_adapter(family)
    kw, _ = hf_inputs(adapter, frames, PROMPT)
    expected = hf_logits(adapter, kw)
    video = adapter.encode_video(frames)
    for policy in _policies(family):
        state = adapter.prefill(video, PROMPT, _plan(NoneReducer(), stage, policy, 1.0))
        diff = (state.logits - expected).abs().max().item()
        assert diff == 0.0, f"{family}/{policy.value}: keep-all differs by {diff}"
        assert state.stats.n_visual_out == state.stats.n_visual_in == video.n
    unreduced = adapter.prefill(video, PROMPT, None)
    assert torch.equal(unreduced.logits, expected), "plain prefill != HF forward"


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_removed_restore_the_model(
    family: str, load_adapter: Any, frames: np.ndarray
) -> None:
    adapter = load_adapter(family)
    video = adapter.encode_video(frames)
    before = adapter.prefill(video, PROMPT).logits
    plan = _plan(RandomReducer(), STAGES[1], None, 0.3)
    reduced = adapter.generate(video, PROMPT, plan, max_new_tokens=3)
    assert reduced.prefill.stats.n_visual_out < video.n
    hooks = sum(len(layer._forward_pre_hooks) for layer in adapter.layers)
    assert hooks == 0, f"{hooks} pre-hooks left on decoder layers"
    after = adapter.prefill(video, PROMPT).logits
    assert torch.equal(before, after), "logits changed after hooks were removed"


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_dropping_matches_masking_reference(
    family: str, stage: tuple[Stage, int], load_adapter: Any, frames: np.ndarray
) -> None:
    adapter = load_adapter(family)
    kw, layout = hf_inputs(adapter, frames, PROMPT)
    video = adapter.encode_video(frames)
    for policy in _policies(family):
        for reducer in (RandomReducer(), EveryThird()):
            plan = _plan(reducer, stage, policy, 0.3)
            state = adapter.prefill(video, PROMPT, plan)
            assert state.reduction is not None
            kept = state.reduction.assignment >= 0
            keep = torch.ones(layout.length, dtype=torch.bool)
            vs = layout.vis_start
            keep[vs : vs + layout.n_visual] = kept
            with masking_reference(adapter, layout, keep, stage[1], policy):
                expected = hf_logits(adapter, kw)
            diff = (state.logits - expected).abs().max().item()
            name = f"{family}/{reducer.name}/{policy.value}"
            assert diff < 2e-5, f"{name}: differs from masking reference by {diff}"
            assert state.stats.n_visual_out == int(kept.sum()) < video.n


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_merged_positions_are_source_means(
    family: str, load_adapter: Any, frames: np.ndarray
) -> None:
    adapter = load_adapter(family)
    video = adapter.encode_video(frames)
    plan = _plan(PairMerge(), STAGES[0], PositionPolicy.MERGED, 1.0)
    merged = adapter.prefill(video, PROMPT, plan)
    assert merged.stats.n_visual_out == (video.n + 1) // 2
    _, layout = adapter.prompt_layout(video, PROMPT)
    vs, n = layout.vis_start, layout.n_visual
    orig = layout.positions[:, vs : vs + n].float()
    # [A, N] -> [A, N/2, 2] -> mean of each pair
    pairs = orig.reshape(orig.shape[0], -1, 2).mean(-1)
    tokens = VisualTokens.from_grid(video.features, video.grid)
    sp = build_spliced(layout, tokens, merged.reduction, PositionPolicy.MERGED)
    assert torch.allclose(sp.positions[:, vs : vs + n // 2], pairs)
    assert torch.equal(
        sp.positions[:, vs + n // 2 :], layout.positions[:, vs + n :].float()
    )
    plan = _plan(PairMerge(), STAGES[0], PositionPolicy.SURVIVE, 1.0)
    survive = adapter.prefill(video, PROMPT, plan)
    assert not torch.equal(merged.logits, survive.logits), "positions had no effect"
