"""What flows in and out of a model adapter: visual tokens, prefill state, answers.

These plain dataclasses live here and only here (the adapter interface in
:mod:`tokenred.adapter` uses them). A
:class:`PrefillResult` separates what decoding continues from (logits, the adapter's
private :attr:`PrefillResult.decoding` state) from what the run records
(:class:`PrefillStats`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from tokenred.tokens import Reduction


@dataclass
class VideoFeatures:
    """Output of the vision tower and projector: the visual tokens fed to the LLM.

    Attributes:
        features: ``[N, C]`` visual tokens in ``(t, y, x)`` raster order; this is
            exactly what a pre-LLM reducer sees (no newline or separator tokens).
        grid: ``(T, H, W)`` of those tokens.
        extra: Adapter-specific tensors, e.g. LLaVA-OneVision's ``newline``
            embedding or Qwen2-VL's ``video_grid_thw``.
        vision_seq_len: Tokens per vision-encoder sequence (for vision FLOPs).
        vision_num_seqs: Number of vision-encoder sequences (frames or clips).
    """

    features: Tensor
    grid: tuple[int, int, int]
    extra: dict[str, Tensor] = field(default_factory=dict)
    vision_seq_len: int = 0
    vision_num_seqs: int = 0

    @property
    def n(self) -> int:
        """Number of visual tokens ``N``."""
        return int(self.features.shape[0])

    def to(self, device: torch.device | str) -> VideoFeatures:
        """Return a copy with every tensor on ``device``."""
        return VideoFeatures(
            features=self.features.to(device),
            grid=self.grid,
            extra={k: v.to(device) for k, v in self.extra.items()},
            vision_seq_len=self.vision_seq_len,
            vision_num_seqs=self.vision_num_seqs,
        )

    def save(self, path: str | Path) -> None:
        """Write one ``.safetensors`` file; grid and counts go in its JSON metadata."""
        from safetensors.torch import save_file

        tensors = {"features": self.features.detach().contiguous().cpu()}
        for key, value in self.extra.items():
            tensors[f"extra.{key}"] = value.detach().contiguous().cpu()
        meta = {
            "grid": list(self.grid),
            "vision_seq_len": self.vision_seq_len,
            "vision_num_seqs": self.vision_num_seqs,
        }
        save_file(tensors, str(path), metadata={"tokenred": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> VideoFeatures:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=device or "cpu") as f:
            meta = json.loads((f.metadata() or {})["tokenred"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        extra = {
            k.removeprefix("extra."): v
            for k, v in tensors.items()
            if k.startswith("extra.")
        }
        t, h, w = (int(g) for g in meta["grid"])
        return cls(
            features=tensors["features"],
            grid=(t, h, w),
            extra=extra,
            vision_seq_len=int(meta["vision_seq_len"]),
            vision_num_seqs=int(meta["vision_num_seqs"]),
        )


UNREDUCED_STAGE = "none"
""":attr:`PrefillStats.stage` of an unreduced prefill."""


@dataclass
class PrefillStats:
    """What a prefill did, as the run records it (no tensors, no live state).

    Attributes:
        n_visual_in: Visual tokens before reduction ``N``.
        n_visual_out: Visual tokens after reduction ``N'`` (``N`` when unreduced).
        schedule: Sequence length each decoder layer processed at prefill.
        visual_schedule: Visual tokens in each decoder layer at prefill.
        reduction_info: The reducer's diagnostics.
        kv_cache_bytes: Bytes of all cached keys and values after prefill.
        prompt_len: Prefill length before reduction (text + visual).
        stage: Where the reduction ran (:data:`UNREDUCED_STAGE` when unreduced).
        layer: Insertion layer K.
        policy: Position policy applied ("" when unreduced).
        budget: The token budget the reducer was given (None when unreduced).
        prefix_schedule: For answers from a prefix cache, the per-layer length of
            the reused cache; ``schedule - prefix_schedule`` tokens were computed.
    """

    n_visual_in: int
    n_visual_out: int
    schedule: list[int]
    visual_schedule: list[int]
    reduction_info: dict[str, float]
    kv_cache_bytes: int
    prompt_len: int
    stage: str = UNREDUCED_STAGE
    layer: int = 0
    policy: str = ""
    budget: int | None = None
    prefix_schedule: list[int] | None = None

    def summary(self) -> dict[str, Any]:
        """Return the fields as JSON-ready values."""
        return {
            "n_visual_in": self.n_visual_in,
            "n_visual_out": self.n_visual_out,
            "schedule": list(self.schedule),
            "visual_schedule": list(self.visual_schedule),
            "reduction_info": dict(self.reduction_info),
            "kv_cache_bytes": self.kv_cache_bytes,
            "prompt_len": self.prompt_len,
            "stage": self.stage,
            "layer": self.layer,
            "policy": self.policy,
            "budget": self.budget,
            "prefix_schedule": self.prefix_schedule,
        }


@dataclass
class PrefillResult:
    """State after prefill: what decoding continues from, plus what it did.

    Attributes:
        logits: ``[V]`` float32 logits of the next token.
        stats: What the prefill did (tokens, per-layer lengths, cache bytes), the
            part a run records.
        reduction: The validated reduction (assignment, coords), if any.
        decoding: Adapter-internal decoding state (cache, positions, hooks).
    """

    logits: Tensor
    stats: PrefillStats
    reduction: Reduction | None = None
    decoding: Any = field(default=None, repr=False)


@dataclass
class Generation:
    """A greedy answer.

    Attributes:
        text: Decoded text without special tokens.
        token_ids: Generated ids (the stop token included when produced).
        prefill: The prefill state it started from.
        decode_steps: Forward passes after prefill.
        scores: ``[len(token_ids), V]`` float32 logits that chose each token, when
            asked for.
    """

    text: str
    token_ids: list[int]
    prefill: PrefillResult
    decode_steps: int
    scores: Tensor | None = None


@dataclass
class PrefixCache:
    """A reduced prefill of the shared prefix (system prompt + video + shared text).

    :meth:`ModelAdapter.answer` copies it for every question, so one reduction
    serves many questions about the same video.

    Attributes:
        prefill: The prefix's prefill (its decoding state holds the cache).
        video_grid: ``(T, H, W)`` of the video in the prefix.
        shared_ids: Prompt tokens after the video that every question of the
            prefix begins with (empty: the prefix ends with the video); a
            question's prompt must start with them.
        answers: Questions answered from the prefix so far.
    """

    prefill: PrefillResult
    video_grid: tuple[int, int, int]
    shared_ids: tuple[int, ...] = ()
    answers: int = 0
