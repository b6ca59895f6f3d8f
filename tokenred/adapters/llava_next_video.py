"""LLaVA-NeXT-Video checkpoints (LLaMA/Vicuna LLM, CLIP tower).

Pixels: the shortest edge is scaled to ``image_size`` and a centred square is cut
(CLIP style), then normalised with CLIP mean/std. Tokens: the CLS token is dropped
(``vision_feature_select_strategy="default"``), each frame's patch grid is
average-pooled by ``spatial_pool_stride`` and projected, giving ``T * h * w``
``<video>`` placeholders and no newline.
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
    CLIP_MEAN,
    CLIP_STD,
    VICUNA_CHAT,
    normalize,
    read_norm,
    resize_shortest_and_crop,
)
from tokenred.adapters._hf import HFVideoAdapter
from tokenred.arch import VisionSpec
from tokenred.model_io import VideoFeatures
from tokenred.tokens import PositionPolicy


@dataclass
class NextVideoAdapterConfig(AdapterConfig):
    """Config of the ``llava_next_video`` adapter."""

    name: str = field(
        default="llava_next_video", metadata={"help": "registered model name"}
    )


class LlavaNextVideoAdapter(HFVideoAdapter):
    """LLaVA-NeXT-Video (LLaMA LLM, CLIP, average-pooled frames, Vicuna template)."""

    name = "llava_next_video"
    Config: ClassVar[type[AdapterConfig]] = NextVideoAdapterConfig
    family = "llava_next_video"
    default_positions = PositionPolicy.REASSIGN
    """1-D RoPE LLaVA: the policy STTM's ablation found best, for every reducer."""
    model_types: ClassVar[tuple[str, ...]] = ("llava_next_video",)
    checkpoints: ClassVar[tuple[str, ...]] = ("llava-hf/LLaVA-NeXT-Video-7B-hf",)
    model_class = "LlavaNextVideoForConditionalGeneration"
    chat = VICUNA_CHAT

    def _pixels(
        self, frames: np.ndarray, timestamps: Sequence[float] | None
    ) -> dict[str, Tensor]:
        size = int(self._model.config.vision_config.image_size)
        mean, std = read_norm(self._path, (CLIP_MEAN, CLIP_STD))
        x = normalize(resize_shortest_and_crop(frames, size), mean, std)
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
        feats = out.pooler_output[0]  # [T * h * w, D]
        t = int(pv.shape[1])
        side = math.isqrt(feats.shape[0] // t)
        vc = cfg.vision_config
        patches = (int(vc.image_size) // int(vc.patch_size)) ** 2
        return VideoFeatures(
            features=feats,
            grid=(t, side, side),
            vision_seq_len=patches + 1,  # CLS token included in the tower
            vision_num_seqs=t,
        )

    def _video_block(self, video: VideoFeatures) -> tuple[list[int], int]:
        return [int(self._model.config.video_token_id)] * video.n, 0

    def _vision_spec(self) -> VisionSpec:
        cfg: Any = self._model.config
        vc, d = cfg.vision_config, int(cfg.text_config.hidden_size)
        dv = int(vc.hidden_size)
        return VisionSpec(
            layers=int(vc.num_hidden_layers),
            hidden_size=dv,
            heads=int(vc.num_attention_heads),
            intermediate_size=int(vc.intermediate_size),
            patch_size=int(vc.patch_size),
            image_size=int(vc.image_size),
            in_channels=int(getattr(vc, "num_channels", 3)),
            # pooling comes first, so the projector (Dv->D->D) runs per output token
            projector_flops_per_token=2 * (dv * d + d * d),
        )
