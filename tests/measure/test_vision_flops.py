"""Analytic vision-tower FLOPs == FlopCounterMode on tiny SigLIP, CLIP and Qwen2-VL."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from tokenred.arch import VisionSpec
from tokenred.measure import vision_flops, vision_flops_breakdown
from tokenred.measure.flop_counter import count_flops

TOWER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=56,
    patch_size=14,
)


def _spec(cfg: Any, **kw: Any) -> VisionSpec:
    return VisionSpec(
        layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
        **kw,
    )


def _pixels(frames: int, side: int = 56) -> torch.Tensor:
    return torch.randn(
        frames, 3, side, side, generator=torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize("frames", [1, 3])
def test_siglip_tower(frames: int) -> None:
    # LLaVA-OneVision uses SigLIP without the attention-pooling head.
    cfg = transformers.SiglipVisionConfig(vision_use_head=False, **TOWER)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.SiglipVisionModel(cfg).eval()
    counted = count_flops(lambda: model(pixel_values=_pixels(frames)))
    seq_len = (56 // 14) ** 2
    assert counted.total == vision_flops(_spec(cfg), seq_len, frames)


def test_clip_tower_has_an_unconvolved_class_token() -> None:
    cfg = transformers.CLIPVisionConfig(projection_dim=32, **TOWER)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(cfg).eval()
    frames = 2
    counted = count_flops(lambda: model(pixel_values=_pixels(frames)))
    seq_len = (56 // 14) ** 2 + 1  # + CLS
    parts = vision_flops_breakdown(_spec(cfg), seq_len, frames)
    assert counted.total == parts.total
    conv = counted.by_op["aten.convolution"]
    assert conv == parts.patch_embed, "the conv sees patches, not the class token"


def test_qwen2_vl_tower_with_merger_projector() -> None:
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        Qwen2VisionTransformerPretrainedModel,
    )

    cfg = Qwen2VLVisionConfig(
        depth=2,
        embed_dim=32,
        hidden_size=64,
        num_heads=2,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2VisionTransformerPretrainedModel._from_config(cfg).eval()
    t, h, w = 2, 4, 6  # temporal groups, patch rows, patch cols
    # [t*h*w, C*tp*p*p] patch rows, as the adapter builds them
    pixels = torch.randn(t * h * w, 3 * 2 * 14 * 14)
    counted = count_flops(lambda: model(pixels, grid_thw=torch.tensor([[t, h, w]])))
    merged = 4 * cfg.embed_dim  # 2x2 patches concatenated
    spec = VisionSpec(
        layers=cfg.depth,
        hidden_size=cfg.embed_dim,
        heads=cfg.num_heads,
        intermediate_size=cfg.embed_dim * cfg.mlp_ratio,
        patch_size=14,
        temporal_patch_size=2,
        image_size=0,  # dynamic resolution: one position per patch
        projector_flops_per_token=2 * merged * merged + 2 * merged * cfg.hidden_size,
    )
    n_visual = t * h * w // 4
    # attention runs per temporal group: num_seqs = t sequences of h*w patches
    assert counted.total == vision_flops(spec, h * w, t, n_visual=n_visual)
    without_projector = vision_flops(spec, h * w, t)
    assert (
        counted.total - without_projector == spec.projector_flops_per_token * n_visual
    )


def test_gated_mlp_counts_three_matrices() -> None:
    plain = VisionSpec(
        layers=1, hidden_size=8, heads=1, intermediate_size=16, patch_size=2
    )
    gated = VisionSpec(
        layers=1,
        hidden_size=8,
        heads=1,
        intermediate_size=16,
        patch_size=2,
        gated_mlp=True,
    )
    a = vision_flops_breakdown(plain, 10, 1)
    b = vision_flops_breakdown(gated, 10, 1)
    assert b.mlp * 2 == a.mlp * 3
