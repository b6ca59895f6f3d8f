"""Independent references for the adapter tests (no tokenred engine code).

The unmodified model is run through Hugging Face's own ``forward`` with
``input_ids`` and pixel inputs, so HF merges the visual features and computes the
positions itself. The masking reference adds test-local pre-hooks that mask the
dropped visual tokens out as keys from layer K on (and re-index positions for
``reassign``) without shortening anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tokenred.reducer import TokenReducer
from tokenred.tokens import (
    Need,
    PositionPolicy,
    ReduceContext,
    Reduction,
    Stage,
    VisualTokens,
)

FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "llava_next_video")
QWEN_PIXELS = {"min_pixels": 32 * 32, "max_pixels": 32 * 40}
"""Frame-area bounds that keep the tiny Qwen checkpoints' grids small."""
PROMPT = "Which color is the ball that moves left? A. red B. blue C. green D. white"


def hf_inputs(
    adapter: Any, frames: np.ndarray, prompt: str
) -> tuple[dict[str, Any], Any]:
    """Return HF ``forward`` kwargs of the unreduced prompt and its layout."""
    pixels = adapter.vision_inputs(frames)
    video = adapter.encode_video(frames)
    ids, layout = adapter.prompt_layout(video, prompt)
    input_ids = torch.tensor([ids])
    kw: dict[str, Any] = {
        "input_ids": input_ids,
        "pixel_values_videos": pixels["pixel_values_videos"],
    }
    if adapter.rope == "mrope":
        vid = int(adapter.hf_model.config.video_token_id)
        kw["video_grid_thw"] = pixels["video_grid_thw"]
        kw["mm_token_type_ids"] = (input_ids == vid).to(torch.int32) * 2
        if adapter.family == "qwen2_5_vl":
            kw["second_per_grid_ts"] = pixels["second_per_grid_ts"]
    return kw, layout


def hf_logits(adapter: Any, kw: dict[str, Any]) -> Tensor:
    """Last-position logits of the unmodified HF forward."""
    with torch.inference_mode():
        out = adapter.hf_model(**kw, logits_to_keep=1)
    return out.logits[0, -1].float()


@contextmanager
def masking_reference(
    adapter: Any, layout: Any, keep: Tensor, k: int, policy: PositionPolicy
) -> Iterator[None]:
    """Mask dropped rows out as keys in layers >= k (float mask; no shortening).

    Args:
        adapter: A loaded adapter.
        layout: Layout of the unreduced prompt.
        keep: ``[L]`` bool, False for dropped visual rows.
        k: First masked layer (0 for pre-LLM reduction).
        policy: ``reassign`` re-indexes the kept rows contiguously in layers >= k.
    """
    length = keep.shape[0]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    allowed = causal & keep[None, :]
    mask = torch.zeros(length, length).masked_fill(~allowed, float("-inf"))[None, None]
    positions = None
    if policy is PositionPolicy.REASSIGN:
        # [1, L] 1-D positions (reassign is a 1-D RoPE policy)
        positions = (torch.cumsum(keep.long(), 0) - 1).clamp(min=0)[None]
    rotary = adapter.hf_model.model.language_model.rotary_emb

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        hs = args[0]
        kwargs["attention_mask"] = mask.to(hs.dtype)
        if positions is not None:
            kwargs["position_embeddings"] = rotary(hs, positions)
        return args, kwargs

    handles = [
        layer.register_forward_pre_hook(hook, with_kwargs=True)
        for layer in list(adapter.layers)[k:]
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class EveryThird(TokenReducer):
    """Keep every third visual token (deterministic dropping reducer)."""

    name = "every_third"

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        keep = torch.arange(0, tokens.n, 3, device=tokens.device)[: ctx.budget]
        return Reduction.from_keep_index(tokens, keep)


class PairMerge(TokenReducer):
    """Average adjacent pairs of tokens; drop the pairs beyond the budget."""

    name = "pair_merge"
    exact_budget = False

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        assignment = torch.arange(tokens.n, device=tokens.device) // 2
        assignment[assignment >= ctx.budget] = -1
        return Reduction.from_assignment(tokens, assignment)


class QueryTopK(TokenReducer):
    """Keep the tokens most similar to the mean query state (query-dependent)."""

    name = "query_topk"
    needs = frozenset({Need.QUERY})
    query_agnostic = False

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        query = ctx.require(Need.QUERY, self.name).float().mean(0)
        scores = tokens.features.float() @ query
        return Reduction.from_keep_index(tokens, scores.topk(ctx.budget).indices)


class AttentionTopK(TokenReducer):
    """FastV-like: keep the tokens the last query attends to most; records inputs."""

    name = "attention_topk"
    needs = frozenset({Need.ATTENTION, Need.KEYS})
    query_agnostic = False
    stages = frozenset({Stage.IN_LLM})

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, Tensor] = {}

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        attn = ctx.require(Need.ATTENTION, self.name)
        self.seen = {
            "attention": attn.clone(),
            "keys": ctx.require(Need.KEYS, self.name),
        }
        scores = attn.float().mean(dim=(0, 1))
        return Reduction.from_keep_index(tokens, scores.topk(ctx.budget).indices)
