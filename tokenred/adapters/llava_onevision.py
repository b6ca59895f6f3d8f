"""LLaVA-OneVision and LLaVA-Video checkpoints (Qwen2 LLM, SigLIP tower).

Pixels: every frame is resized to ``image_size x image_size`` (bicubic, no aspect
preservation, as the OneVision video processor does) and normalised with the
checkpoint's mean/std (SigLIP: 0.5/0.5). Tokens: the projector's patch features are
bilinearly pooled to ``ceil(side / 2)`` per side, giving ``T * h * w`` visual tokens,
followed by one learned ``image_newline`` per video. The prompt carries
``T * h * w + 1`` ``<video>`` placeholders. The newline is kept out of what reducers
see and written back after the (reduced) visual tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from torch import Tensor

from tokenred.adapter import AdapterConfig
from tokenred.adapters._common import (
    HALF_MEAN,
    HALF_STD,
    QWEN_CHAT,
    normalize,
    read_norm,
    resize_frames,
)
from tokenred.adapters._hf import HFVideoAdapter
from tokenred.arch import VisionSpec
from tokenred.model_io import VideoFeatures
from tokenred.tokens import PositionPolicy


@dataclass
class OneVisionAdapterConfig(AdapterConfig):
    """Config of the ``llava_onevision`` adapter."""

    name: str = field(
        default="llava_onevision", metadata={"help": "registered model name"}
    )


class LlavaOnevisionAdapter(HFVideoAdapter):
    """LLaVA-OneVision / LLaVA-Video (Qwen2 LLM, SigLIP, 2x2-pooled frames, newline)."""

    name = "llava_onevision"
    Config: ClassVar[type[AdapterConfig]] = OneVisionAdapterConfig
    family = "llava_onevision"
    default_positions = PositionPolicy.REASSIGN
    """1-D RoPE LLaVA: STTM's position ablation found ``reassign`` best (sttm.md
    §1.4); applied to every reducer alike."""
    model_types: ClassVar[tuple[str, ...]] = ("llava_onevision",)
    checkpoints: ClassVar[tuple[str, ...]] = (
        "llava-hf/LLaVA-Video-7B-Qwen2-hf",
        "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    )
    model_class = "LlavaOnevisionForConditionalGeneration"
    chat = QWEN_CHAT

    def _pixels(
        self, frames: np.ndarray, timestamps: Sequence[float] | None
    ) -> dict[str, Tensor]:
        size = int(self._model.config.vision_config.image_size)
        mean, std = read_norm(self._path, (HALF_MEAN, HALF_STD))
        x = normalize(resize_frames(frames, size, size), mean, std)
        # [T, 3, S, S] -> [B=1, T, 3, S, S]
        return {"pixel_values_videos": x.unsqueeze(0)}

    def _features(self, pixels: dict[str, Tensor]) -> VideoFeatures:
        model = self._model
        cfg = model.config
        pv = pixels["pixel_values_videos"].to(self._device, model.dtype)
        out = model.model.get_video_features(
            pixel_values_videos=pv,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
        # [1, T*h*w + 1, D]: the video's tokens, then its newline
        feats = out.pooler_output[0]
        t = int(pv.shape[1])
        side = math.ceil(self._patch_side() / 2)
        return VideoFeatures(
            features=feats[:-1],
            grid=(t, side, side),
            extra={"newline": feats[-1]},
            vision_seq_len=self._patch_side() ** 2,
            vision_num_seqs=t,
        )

    def _patch_side(self) -> int:
        vc = self._model.config.vision_config
        return int(vc.image_size) // int(vc.patch_size)

    def _video_block(self, video: VideoFeatures) -> tuple[list[int], int]:
        vid = int(self._model.config.video_token_id)
        return [vid] * (video.n + 1), 0

    def _fill_extra(self, embeds: Tensor, vis_start: int, video: VideoFeatures) -> None:
        newline = video.extra["newline"].to(embeds.dtype)
        embeds[0, vis_start + video.n] = newline

    def _vision_spec(self) -> VisionSpec:
        cfg: Any = self._model.config
        vc, d = cfg.vision_config, int(cfg.text_config.hidden_size)
        dv = int(vc.hidden_size)
        side = self._patch_side()
        pooled = math.ceil(side / 2) ** 2
        # The projector (Dv->D->D) runs on every patch, before pooling.
        proj = 2 * (dv * d + d * d) * side * side // pooled
        return VisionSpec(
            layers=int(vc.num_hidden_layers),
            hidden_size=dv,
            heads=int(vc.num_attention_heads),
            intermediate_size=int(vc.intermediate_size),
            patch_size=int(vc.patch_size),
            image_size=int(vc.image_size),
            in_channels=int(getattr(vc, "num_channels", 3)),
            projector_flops_per_token=proj,
        )
