"""Attention rows for reducers that need them, without switching to eager."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _adapter_helpers import FAMILIES, PROMPT, AttentionTopK, hf_inputs

from tokenred.errors import CompatibilityError
from tokenred.plan import BudgetSpec, ReductionPlan
from tokenred.tokens import Stage


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_attention_matches_eager(
    family: str, load_adapter: Any, frames: Any
) -> None:
    k = 2
    sdpa = load_adapter(family)
    eager = load_adapter(family, attn_implementation="eager")
    video = sdpa.encode_video(frames)
    reducer = AttentionTopK()
    plan = ReductionPlan(reducer, Stage.IN_LLM, k, BudgetSpec(ratio=0.25))
    state = sdpa.prefill(video, PROMPT, plan)
    attn = reducer.seen["attention"]
    n = video.n
    heads = sdpa.arch.heads
    assert attn.shape == (heads, 1, n), f"attention shape {tuple(attn.shape)}"
    kw, layout = hf_inputs(eager, frames, PROMPT)
    with torch.inference_mode():
        out = eager.hf_model(**kw, output_attentions=True)
    vs = layout.vis_start
    # [B, H, L, L] -> last query row over the visual columns: [H, 1, N]
    expected = out.attentions[k - 1][0, :, -1:, vs : vs + n].float()
    diff = (attn - expected).abs().max().item()
    assert diff < 1e-6, f"{family}: captured attention differs from eager by {diff}"
    keys = reducer.seen["keys"]
    assert keys.shape == (n, sdpa.arch.kv_heads * sdpa.arch.head_dim)
    top = attn.float().mean(dim=(0, 1)).topk(state.stats.n_visual_out).indices
    kept = torch.nonzero(state.reduction.assignment >= 0).squeeze(1)
    assert torch.equal(torch.sort(top).values, kept), "reducer did not see the scores"


def test_attention_needs_in_llm(load_adapter: Any, frames: Any) -> None:
    adapter = load_adapter("llava_onevision")
    video = adapter.encode_video(frames)
    reducer = AttentionTopK()
    reducer.stages = frozenset({Stage.PRE_LLM, Stage.IN_LLM})  # type: ignore[misc]
    plan = ReductionPlan(reducer, Stage.PRE_LLM, 0, BudgetSpec(ratio=0.25))
    with pytest.raises(CompatibilityError, match="in_llm"):
        adapter.prefill(video, PROMPT, plan)
    plan = ReductionPlan(AttentionTopK(), Stage.IN_LLM, 4, BudgetSpec(ratio=0.25))
    with pytest.raises(CompatibilityError, match="outside"):
        adapter.prefill(video, PROMPT, plan)
