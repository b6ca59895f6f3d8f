"""Prefill, greedy decoding and prefix-cache answers over an HF adapter.

Positions (``[A, L]``, A=1 or 3) are explicit everywhere:

* the unreduced layout has the model's own positions; tokens appended after a
  prompt (decoded tokens, continuation ids) continue from its maximum + 1, as
  ``generate`` does (Qwen2-VL's ``rope_deltas``);
* after a pre-LLM reduction the model sees the spliced positions, and later tokens
  move down by the removed count under ``reassign`` (``model_shift``);
* after an in-LLM reduction layers < K keep the unreduced positions, and the
  :class:`~tokenred.insertion.LayerReduction` hooks shift layers >= K themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from tokenred.adapters._runtime import DecodingState, copy_cache
from tokenred.errors import CompatibilityError, UsageError
from tokenred.insertion import (
    LayerReduction,
    Spliced,
    layer_lengths,
    reduce_pre_llm,
    resolve_policy,
    splice,
)
from tokenred.measure.memory import cache_bytes
from tokenred.model_io import UNREDUCED_STAGE, Generation, PrefillResult, PrefillStats
from tokenred.plan import BudgetCost
from tokenred.tokens import Stage

if TYPE_CHECKING:
    from tokenred.adapters._hf import HFVideoAdapter
    from tokenred.model_io import PrefixCache, VideoFeatures
    from tokenred.plan import ReductionPlan
    from tokenred.tokens import Reduction


def run_prefill(
    adapter: HFVideoAdapter,
    video: VideoFeatures,
    before: list[int],
    after: list[int],
    plan: ReductionPlan | None,
    continuation: Sequence[int] = (),
    *,
    cost_length: int | None = None,
) -> PrefillResult:
    """Prefill ``before + video block + after (+ continuation)``, reduced per plan.

    ``cost_length`` is the unreduced prompt length a FLOPs budget is measured
    against (default: this prefill's own length); a shared prefix passes the length
    of the full prompts it will answer, since its own length holds no question.
    """
    video = video.to(adapter.device)
    ids, layout = adapter._layout(video, before, after, continuation)
    policy = None
    cost = None
    if plan is not None:
        adapter.check_plan(plan)
        policy = resolve_policy(plan, adapter.rope, adapter.default_positions)
        length = layout.length if cost_length is None else cost_length
        cost = BudgetCost(adapter.arch, length, plan.layer)
    cache = adapter._new_cache()
    controller: LayerReduction | None = None
    sp: Spliced | None = None
    reduction: Reduction | None = None
    budget: int | None = None
    with torch.inference_mode():
        embeds = adapter._embeds(ids, layout, video)
        positions = layout.positions
        if plan is not None and plan.stage is Stage.PRE_LLM:
            reduction, sp, budget = reduce_pre_llm(
                plan,
                layout,
                video.features.to(embeds.dtype),
                policy or resolve_policy(plan, adapter.rope),
                head_dim=adapter.head_dim,
                query=embeds[0, layout.query_start :],
                cost=cost,
            )
            embeds = splice(embeds, sp, reduction.tokens.features)
            positions = sp.positions
        elif plan is not None:
            controller = LayerReduction(
                adapter.layers,
                adapter._rotary,
                plan=plan,
                layout=layout,
                policy=policy or resolve_policy(plan, adapter.rope),
                head_dim=adapter.head_dim,
                cost=cost,
            )
        logits = adapter._forward(
            cache, positions, embeds=embeds, controller=controller
        )
    if controller is not None:
        reduction, sp, budget = (
            controller.reduction,
            controller.spliced,
            controller.budget,
        )
    model_shift = sp.shift if (sp is not None and controller is None) else 0
    state = DecodingState(
        cache=cache,
        ids=ids,
        video=video,
        controller=controller,
        next_pos=layout.positions.max() + 1 - model_shift,
        model_shift=model_shift,
    )
    n_out = sp.n_out if sp is not None else layout.n_visual
    reduced = sp.length if sp is not None else layout.length
    k = plan.layer if plan is not None else 0
    seq, vis = layer_lengths(
        len(adapter.layers), k, layout.length, reduced, layout.n_visual, n_out
    )
    stats = PrefillStats(
        n_visual_in=layout.n_visual,
        n_visual_out=n_out,
        schedule=seq,
        visual_schedule=vis,
        reduction_info=dict(reduction.info) if reduction is not None else {},
        kv_cache_bytes=cache_bytes(cache),
        prompt_len=layout.length,
        stage=plan.stage.value if plan is not None else UNREDUCED_STAGE,
        layer=k,
        policy=policy.value if policy is not None else "",
        budget=budget,
    )
    return PrefillResult(logits, stats, reduction, state)


def greedy_decode(
    adapter: HFVideoAdapter,
    prefilled: PrefillResult,
    limit: int,
    *,
    return_scores: bool,
) -> Generation:
    """Decode greedily from ``prefilled`` for at most ``limit`` tokens (consumes it)."""
    state: DecodingState | None = prefilled.decoding
    if state is None or state.consumed:
        msg = "this prefill state was already decoded; prefill again to re-decode"
        raise UsageError(msg)
    state.consumed = True
    axes = 1 if adapter.rope == "1d" else 3
    logits, tokens, scores = prefilled.logits, [], []
    steps = 0
    with torch.inference_mode():
        for i in range(limit):
            tok = int(torch.argmax(logits))
            tokens.append(tok)
            scores.append(logits)
            if tok in adapter.stop_ids or i == limit - 1:
                break
            # one new token at the same position on every M-RoPE axis: [A, 1]
            pos = (state.next_pos + i).reshape(1, 1).expand(axes, 1)
            logits = adapter._forward(
                state.cache, pos, ids=[tok], controller=state.controller
            )
            steps += 1
    return Generation(
        text=adapter.detokenize(tokens),
        token_ids=tokens,
        prefill=prefilled,
        decode_steps=steps,
        scores=torch.stack(scores) if return_scores else None,
    )


def prefill_from_prefix(
    adapter: HFVideoAdapter, prefix: PrefixCache, prompt: str
) -> PrefillResult:
    """Prefill ``prompt``'s own tokens after a copy of a prefix cache.

    Raises:
        CompatibilityError: ``prompt`` does not begin with the text the prefix
            already holds (:attr:`PrefixCache.shared_ids`), or has no token of its
            own after it.
    """
    base = prefix.prefill
    src: DecodingState = base.decoding
    _, prompt_after = adapter.prompt_ids(prompt)
    shared = list(prefix.shared_ids)
    if prompt_after[: len(shared)] != shared or len(prompt_after) <= len(shared):
        msg = (
            f"model '{adapter.name}': the question does not extend the cached "
            f"prefix's {len(shared)} shared prompt tokens; build the prefix with "
            "prefill_prefix(..., prompts=[...]) listing this question"
        )
        raise CompatibilityError(msg)
    after = prompt_after[len(shared) :]
    full = [*src.ids, *after]
    cache = copy_cache(src.cache, adapter._new_cache())
    controller = src.controller.fork() if src.controller is not None else None
    with torch.inference_mode():
        # positions of the whole unreduced prompt, as a full prefill computes them
        positions = adapter._positions(full, src.video)
        q_pos = positions[:, len(src.ids) :] - src.model_shift
        logits = adapter._forward(cache, q_pos, ids=after, controller=controller)
    state = DecodingState(
        cache=cache,
        ids=full,
        video=src.video,
        controller=controller,
        next_pos=positions.max() + 1 - src.model_shift,
        model_shift=src.model_shift,
    )
    prefix.answers += 1
    q = len(after)
    stats = dataclasses.replace(
        base.stats,
        schedule=[s + q for s in base.stats.schedule],
        visual_schedule=list(base.stats.visual_schedule),
        reduction_info=dict(base.stats.reduction_info),
        kv_cache_bytes=cache_bytes(cache),
        prompt_len=len(full),
        prefix_schedule=list(base.stats.schedule),
    )
    return PrefillResult(logits, stats, base.reduction, state)
