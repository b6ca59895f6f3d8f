"""Qwen2-VL and Qwen2.5-VL checkpoints (M-RoPE).

Pixels: frames are resized to a common size whose sides are multiples of
``patch_size * spatial_merge_size`` and whose area lies in ``[min_pixels,
max_pixels]`` (``smart_resize``), normalised with CLIP mean/std, padded to an even
count by repeating the last frame, and cut into ``temporal_patch_size x patch x
patch`` patches ordered so that each 2x2 merge group is contiguous (the layout of
``Qwen2VLVideoProcessor``). Tokens: the vision merger turns every 2x2 group into one
LLM token, so ``T/2 * H/28 * W/28`` tokens (real checkpoints) sit between
``<|vision_start|>`` and ``<|vision_end|>``. Positions are the model's own
``get_rope_index`` (text/t/h/w ids), so M-RoPE is exactly the unmodified model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from tokenred.adapter import AdapterConfig
from tokenred.adapters._common import (
    CLIP_MEAN,
    CLIP_STD,
    QWEN_VL_CHAT,
    normalize,
    read_norm,
    resize_frames,
    smart_resize,
)
from tokenred.adapters._hf import HFVideoAdapter
from tokenred.arch import VisionSpec
from tokenred.model_io import VideoFeatures


@dataclass
class QwenVLAdapterConfig(AdapterConfig):
    """Config of the ``qwen2_vl`` adapter."""

    name: str = field(default="qwen2_vl", metadata={"help": "registered model name"})
    min_pixels: int = field(
        default=128 * 28 * 28,
        metadata={"help": "smallest frame area in pixels (HF video processor default)"},
    )
    max_pixels: int = field(
        default=768 * 28 * 28,
        metadata={"help": "largest frame area in pixels (HF video processor default)"},
    )
    total_pixels: int | None = field(
        default=None,
        metadata={
            "help": "optional pixel budget of the whole video; caps each frame's area "
            "at total_pixels * 2 / T (qwen-vl-utils style), never below 1.05*min_pixels"
        },
    )


@dataclass
class Qwen25VLAdapterConfig(QwenVLAdapterConfig):
    """Config of the ``qwen2_5_vl`` adapter."""

    name: str = field(default="qwen2_5_vl", metadata={"help": "registered model name"})


def patchify(x: Tensor, patch: int, merge: int, temporal: int) -> Tensor:
    """Cut ``[T, C, H, W]`` frames into Qwen2-VL patch rows.

    Returns:
        ``[T/tp * H/p * W/p, C * tp * p * p]``: rows ordered by temporal group, then
        merge block (raster), then position inside the block; each row flattens
        (channel, frame, y, x).
    """
    t, c, h, w = x.shape
    gt, bh, bw = t // temporal, h // (patch * merge), w // (patch * merge)
    # [T, C, H, W] -> [gt, tp, C, bh, m, p, bw, m, p]
    v = x.reshape(gt, temporal, c, bh, merge, patch, bw, merge, patch)
    # -> [gt, bh, bw, m(y), m(x), C, tp, p(y), p(x)]
    v = v.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    # -> [gt*bh*bw*m*m, C*tp*p*p]
    return v.reshape(gt * bh * bw * merge * merge, c * temporal * patch * patch)


class Qwen2VLAdapter(HFVideoAdapter):
    """Qwen2-VL (M-RoPE; 2x2-merged patches of frame pairs between vision tokens)."""

    name = "qwen2_vl"
    Config: ClassVar[type[AdapterConfig]] = QwenVLAdapterConfig
    family = "qwen2_vl"
    rope = "mrope"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl",)
    checkpoints: ClassVar[tuple[str, ...]] = ("Qwen/Qwen2-VL-7B-Instruct",)
    model_class = "Qwen2VLForConditionalGeneration"
    chat = QWEN_VL_CHAT

    def _vision(self) -> Any:
        return self._model.config.vision_config

    def _frame_size(self, height: int, width: int, frames: int) -> tuple[int, int]:
        cfg: Any = self.config
        vc = self._vision()
        factor = int(vc.patch_size) * int(vc.spatial_merge_size)
        max_pixels = int(cfg.max_pixels)
        if cfg.total_pixels:
            per_frame = cfg.total_pixels * int(vc.temporal_patch_size) // frames
            max_pixels = max(min(max_pixels, per_frame), int(cfg.min_pixels * 1.05))
        return smart_resize(height, width, factor, int(cfg.min_pixels), max_pixels)

    def _pixels(
        self, frames: np.ndarray, timestamps: Sequence[float] | None
    ) -> dict[str, Tensor]:
        vc = self._vision()
        tp, patch, merge = (
            int(vc.temporal_patch_size),
            int(vc.patch_size),
            int(vc.spatial_merge_size),
        )
        if pad := -len(frames) % tp:
            frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
        h, w = self._frame_size(frames.shape[1], frames.shape[2], len(frames))
        mean, std = read_norm(self._path, (CLIP_MEAN, CLIP_STD))
        x = normalize(resize_frames(frames, h, w), mean, std)
        grid = torch.tensor([[len(frames) // tp, h // patch, w // patch]])
        out = {
            "pixel_values_videos": patchify(x, patch, merge, tp),
            "video_grid_thw": grid,
        }
        out["second_per_grid_ts"] = torch.tensor(
            [self._seconds_per_grid(timestamps, tp)]
        )
        return out

    @staticmethod
    def _seconds_per_grid(timestamps: Sequence[float] | None, tp: int) -> float:
        """Seconds spanned by one temporal patch (Qwen2.5-VL's time axis)."""
        if timestamps is None or len(timestamps) < 2:
            return 1.0
        step = (float(timestamps[-1]) - float(timestamps[0])) / (len(timestamps) - 1)
        return tp * step if step > 0 else 1.0

    def _features(self, pixels: dict[str, Tensor]) -> VideoFeatures:
        model = self._model
        grid = pixels["video_grid_thw"].to(self._device)
        pv = pixels["pixel_values_videos"].to(self._device, model.dtype)
        out = model.model.get_video_features(
            pixel_values_videos=pv, video_grid_thw=grid
        )
        feats = out.pooler_output[0]  # [T/2 * h * w, D]
        merge = int(self._vision().spatial_merge_size)
        t, gh, gw = (int(v) for v in grid[0].tolist())
        return VideoFeatures(
            features=feats,
            grid=(t, gh // merge, gw // merge),
            extra={
                "video_grid_thw": grid,
                "second_per_grid_ts": pixels["second_per_grid_ts"].to(self._device),
            },
            vision_seq_len=gh * gw,
            vision_num_seqs=t,
        )

    def _video_block(self, video: VideoFeatures) -> tuple[list[int], int]:
        cfg = self._model.config
        ids = [int(cfg.vision_start_token_id)]
        ids += [int(cfg.video_token_id)] * video.n
        ids.append(int(cfg.vision_end_token_id))
        return ids, 1

    def _rope_kwargs(self, video: VideoFeatures) -> dict[str, Any]:
        return {}

    def _positions(self, ids: list[int], video: VideoFeatures) -> Tensor:
        model = self._model
        input_ids = torch.tensor([ids], device=self._device)
        # token types: 0 text, 2 video (the placeholder runs only)
        types = (input_ids == int(model.config.video_token_id)).to(torch.int32) * 2
        pos, _ = model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=types,
            video_grid_thw=video.extra["video_grid_thw"],
            **self._rope_kwargs(video),
        )
        positions: Tensor = pos[:, 0]  # [3, B=1, L] -> [3, L]
        return positions

    def _vision_spec(self) -> VisionSpec:
        vc = self._vision()
        e = int(vc.embed_dim)
        d = int(self._model.config.text_config.hidden_size)
        m2 = int(vc.spatial_merge_size) ** 2
        return VisionSpec(
            layers=int(vc.depth),
            hidden_size=e,
            heads=int(vc.num_heads),
            intermediate_size=int(e * float(vc.mlp_ratio)),
            patch_size=int(vc.patch_size),
            temporal_patch_size=int(vc.temporal_patch_size),
            in_channels=int(vc.in_channels),
            # merger MLP on each group of merge^2 patches: (m2*e -> m2*e -> d)
            projector_flops_per_token=2 * (m2 * e * m2 * e + m2 * e * d),
        )


class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL (M-RoPE with absolute time on the t axis; windowed ViT)."""

    name = "qwen2_5_vl"
    Config: ClassVar[type[AdapterConfig]] = Qwen25VLAdapterConfig
    family = "qwen2_5_vl"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_5_vl",)
    checkpoints: ClassVar[tuple[str, ...]] = ("Qwen/Qwen2.5-VL-7B-Instruct",)
    model_class = "Qwen2_5_VLForConditionalGeneration"

    def _rope_kwargs(self, video: VideoFeatures) -> dict[str, Any]:
        return {"second_per_grid_ts": video.extra["second_per_grid_ts"]}

    def _vision_spec(self) -> VisionSpec:
        vc = self._vision()
        h = int(vc.hidden_size)
        d = int(vc.out_hidden_size)
        m2 = int(vc.spatial_merge_size) ** 2
        return VisionSpec(
            layers=int(vc.depth),
            hidden_size=h,
            heads=int(vc.num_heads),
            intermediate_size=int(vc.intermediate_size),
            patch_size=int(vc.patch_size),
            temporal_patch_size=int(vc.temporal_patch_size),
            in_channels=int(vc.in_channels),
            projector_flops_per_token=2 * (m2 * h * m2 * h + m2 * h * d),
            gated_mlp=True,
        )
