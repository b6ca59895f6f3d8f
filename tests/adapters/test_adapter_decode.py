"""Decoding after a reduced prefill, per-layer cache lengths and KV-cache reuse."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from _adapter_helpers import FAMILIES, PROMPT, EveryThird, PairMerge, QueryTopK

from tokenred.adapters._runtime import cache_lengths
from tokenred.builtin.reducers import RandomReducer
from tokenred.datasets._common import build_prompt
from tokenred.errors import CompatibilityError
from tokenred.plan import BudgetSpec, ReductionPlan
from tokenred.tokens import PositionPolicy, Stage

STAGES = [(Stage.PRE_LLM, 0), (Stage.IN_LLM, 2)]
STAGE_IDS = ["pre_llm", "in_llm_k2"]
OTHER_PROMPT = "How many times does the red circle appear? A. one B. two C. three"


def _plan(reducer: Any, stage: tuple[Stage, int], policy: Any = None) -> ReductionPlan:
    return ReductionPlan(
        reducer,
        stage[0],
        stage[1],
        BudgetSpec(ratio=0.3),
        positions=policy,
        seed=5,
        sample_id="clip-1",
    )


def _cases(family: str) -> list[tuple[Any, PositionPolicy | None]]:
    cases: list[tuple[Any, PositionPolicy | None]] = [(RandomReducer(), None)]
    if not family.startswith("qwen"):
        cases.append((EveryThird(), PositionPolicy.REASSIGN))
    cases.append((PairMerge(), PositionPolicy.MERGED))
    return cases


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decode_equals_no_cache_recompute(
    family: str, stage: tuple[Stage, int], attn: str, load_adapter: Any, frames: Any
) -> None:
    adapter = load_adapter(family, attn_implementation=attn)
    video = adapter.encode_video(frames)
    k, n_layers = stage[1], len(adapter.layers)
    for reducer, policy in _cases(family):
        plan = _plan(reducer, stage, policy)
        state = adapter.prefill(video, PROMPT, plan)
        length, reduced = state.stats.prompt_len, state.stats.schedule[-1]
        assert reduced < length
        expect = [length] * k + [reduced] * (n_layers - k)
        assert cache_lengths(state.decoding.cache) == expect, "prefill cache lengths"
        gen = adapter.decode(state, 4, return_scores=True)
        assert gen.scores is not None and len(gen.token_ids) >= 1
        steps = gen.decode_steps
        grown = [n + steps for n in expect]
        assert cache_lengths(state.decoding.cache) == grown, "decode cache lengths"
        n_gen = len(gen.token_ids)
        assert n_gen > 1, "stopped at once; nothing to compare (pick another seed)"
        for i in sorted({1, n_gen - 1}):
            again = adapter.prefill(
                video, PROMPT, plan, continuation_ids=gen.token_ids[:i]
            )
            diff = (again.logits - gen.scores[i]).abs().max().item()
            name = f"{family}/{reducer.name}/{state.stats.policy}/step {i}"
            assert diff < 2e-5, (
                f"{name}: cached decode differs from recompute by {diff}"
            )


def _answer_equals_full_prefill(
    adapter: Any,
    prefix: Any,
    video: Any,
    prompt: str,
    plan: ReductionPlan,
    family: str,
) -> Any:
    """Answer ``prompt`` from ``prefix`` and assert it equals its full prefill."""
    reused = adapter.answer(prefix, prompt, max_new_tokens=4)
    full = adapter.generate(video, prompt, plan, max_new_tokens=4)
    name = f"{family}/{plan.reducer.name}/{full.prefill.stats.policy}"
    diff = (reused.prefill.logits - full.prefill.logits).abs().max().item()
    assert diff < 2e-5, f"{name}: logits from the prefix differ by {diff}"
    assert reused.token_ids == full.token_ids, f"{name}: answers differ"
    assert reused.prefill.stats.schedule == full.prefill.stats.schedule
    assert reused.prefill.stats.n_visual_out == full.prefill.stats.n_visual_out
    return reused


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_cache_answers_equal_full_prefill(
    family: str, stage: tuple[Stage, int], load_adapter: Any, frames: Any
) -> None:
    adapter = load_adapter(family)
    video = adapter.encode_video(frames)
    for reducer, policy in _cases(family):
        plan = _plan(reducer, stage, policy)
        prefix = adapter.prefill_prefix(video, plan)
        lengths = cache_lengths(prefix.prefill.decoding.cache)
        k = stage[1]
        assert lengths[:k] == [prefix.prefill.stats.prompt_len] * k
        assert set(lengths[k:]) == {prefix.prefill.stats.schedule[-1]}
        for prompt in (PROMPT, OTHER_PROMPT, PROMPT):
            _answer_equals_full_prefill(adapter, prefix, video, prompt, plan, family)
        assert cache_lengths(prefix.prefill.decoding.cache) == lengths, "prefix mutated"
        assert prefix.answers == 3


SHARED_PROMPTS = (
    build_prompt("Which color is the ball that moves left?", ["red", "blue", "green"]),
    build_prompt("How many times does the red circle appear?", ["one", "two", "six"]),
)
"""Two benchmark prompts: the same instruction first, then their own questions."""


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_holds_the_prompt_text_its_questions_share(
    family: str, stage: tuple[Stage, int], load_adapter: Any, frames: Any
) -> None:
    """A prefix built for several questions also holds the instruction they all
    begin with; each answer prefills only its own tokens and still equals the full
    prefill (positions, reductions and per-layer cache lengths included)."""
    adapter = load_adapter(family)
    video = adapter.encode_video(frames)
    afters = [adapter.prompt_ids(p)[1] for p in SHARED_PROMPTS]
    shared = adapter.shared_prompt_ids(SHARED_PROMPTS)
    n = len(shared)
    assert n >= 10, f"{family}: the instruction was not shared ({n} tokens)"
    assert all(a[:n] == shared for a in afters) and afters[0][n] != afters[1][n]
    assert adapter.shared_prompt_ids(SHARED_PROMPTS[:1]) == []
    for reducer, policy in _cases(family):
        plan = _plan(reducer, stage, policy)
        bare = adapter.prefill_prefix(video, plan)
        prefix = adapter.prefill_prefix(video, plan, prompts=SHARED_PROMPTS)
        assert prefix.shared_ids == tuple(shared)
        grown = [b + n for b in bare.prefill.stats.schedule]
        assert prefix.prefill.stats.schedule == grown
        for prompt, after in zip(SHARED_PROMPTS, afters, strict=True):
            reused = _answer_equals_full_prefill(
                adapter, prefix, video, prompt, plan, family
            )
            own = reused.prefill.stats.schedule[0] - prefix.prefill.stats.schedule[0]
            assert own == len(after) - n
        with pytest.raises(CompatibilityError, match="does not extend"):
            adapter.answer(prefix, OTHER_PROMPT, max_new_tokens=1)


def test_a_flops_budget_of_a_shared_prefix_holds_for_every_question(
    load_adapter: Any, frames: Any
) -> None:
    """budget.flops is a fraction of each answer's full prefill: a prefix shared by
    prompts of different lengths keeps what the longest one allows (the most
    restrictive), and a prefix for one prompt reduces exactly as its full prefill."""
    adapter = load_adapter("llava_onevision")
    video = adapter.encode_video(frames)
    plan = dataclasses.replace(
        _plan(RandomReducer(), STAGES[0]), budget=BudgetSpec(flops=0.5)
    )
    short, long = SHARED_PROMPTS[0], SHARED_PROMPTS[1] + " Think about it twice."
    alone = {
        p: adapter.prefill(video, p, plan).stats.n_visual_out for p in (short, long)
    }
    assert alone[long] < alone[short], "pick prompts whose budgets differ"
    for p in (short, long):
        one = adapter.prefill_prefix(video, plan, prompts=[p])
        assert one.prefill.stats.n_visual_out == alone[p]
    both = adapter.prefill_prefix(video, plan, prompts=[short, long])
    assert both.prefill.stats.n_visual_out == alone[long]


def test_query_dependent_reducer_refuses_reuse(load_adapter: Any, frames: Any) -> None:
    adapter = load_adapter("llava_onevision")
    video = adapter.encode_video(frames)
    plan = _plan(QueryTopK(), STAGES[1])
    with pytest.raises(CompatibilityError, match="query-dependent"):
        adapter.prefill_prefix(video, plan)
    # the same reducer runs fine with a full prefill, and sees the query
    gen = adapter.generate(video, PROMPT, plan, max_new_tokens=2)
    assert gen.prefill.stats.n_visual_out == BudgetSpec(ratio=0.3).resolve(video.n)


def test_decode_state_is_single_use(load_adapter: Any, frames: Any) -> None:
    adapter = load_adapter("llava_onevision")
    video = adapter.encode_video(frames)
    state = adapter.prefill(video, PROMPT)
    first = adapter.decode(state, 3)
    assert first.prefill is state and len(first.token_ids) <= 3
    with pytest.raises(Exception, match="already decoded"):
        adapter.decode(state, 3)


def test_reassign_continues_from_reduced_length(load_adapter: Any, frames: Any) -> None:
    adapter = load_adapter("llava_onevision")
    video = adapter.encode_video(frames)
    pre = adapter.prefill(
        video, PROMPT, _plan(EveryThird(), STAGES[0], PositionPolicy.REASSIGN)
    )
    assert int(pre.decoding.next_pos) == pre.stats.schedule[0]
    survive = adapter.prefill(
        video, PROMPT, _plan(EveryThird(), STAGES[0], PositionPolicy.SURVIVE)
    )
    assert int(survive.decoding.next_pos) == survive.stats.prompt_len
    inside = adapter.prefill(
        video, PROMPT, _plan(EveryThird(), STAGES[1], PositionPolicy.REASSIGN)
    )
    # lower layers continue from L; layers >= K are shifted back by the removed count
    assert int(inside.decoding.next_pos) == inside.stats.prompt_len
    assert (
        inside.decoding.controller.spliced.shift == video.n - inside.stats.n_visual_out
    )


def test_mrope_rejects_explicit_reassign(load_adapter: Any, frames: Any) -> None:
    adapter = load_adapter("qwen2_vl")
    video = adapter.encode_video(frames)
    with pytest.raises(CompatibilityError, match="M-RoPE"):
        adapter.prefill(
            video, PROMPT, _plan(EveryThird(), STAGES[0], PositionPolicy.REASSIGN)
        )
    # the reducer's default (reassign) falls back to survive, the reference choice
    reducer = EveryThird()
    reducer.position_policy = PositionPolicy.REASSIGN  # type: ignore[misc]
    state = adapter.prefill(video, PROMPT, _plan(reducer, STAGES[0]))
    assert state.stats.policy == "survive"


def test_budget_and_kv_bytes_recorded(load_adapter: Any, frames: Any) -> None:
    adapter = load_adapter("llava_next_video")
    video = adapter.encode_video(frames)
    full = adapter.prefill(video, PROMPT)
    reduced = adapter.prefill(video, PROMPT, _plan(RandomReducer(), STAGES[1]))
    assert (
        reduced.stats.budget
        == BudgetSpec(ratio=0.3).resolve(video.n)
        == reduced.stats.n_visual_out
    )
    assert (
        reduced.stats.visual_schedule
        == [video.n] * 2 + [reduced.stats.n_visual_out] * 2
    )
    assert 0 < reduced.stats.kv_cache_bytes < full.stats.kv_cache_bytes
    arch = adapter.arch
    per_token = 2 * arch.kv_heads * arch.head_dim * 4  # keys + values, float32
    assert full.stats.kv_cache_bytes == per_token * full.stats.prompt_len * arch.layers
    summary = reduced.stats.summary()
    assert summary["stage"] == "in_llm" and summary["layer"] == 2
    assert np.isfinite(reduced.logits.numpy()).all()
    assert torch.isfinite(full.logits).all()
