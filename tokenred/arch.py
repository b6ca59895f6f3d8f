"""Architecture facts of a model, as the analytic FLOPs model needs them.

An adapter fills an :class:`ArchSpec` from its checkpoint config. Nothing here imports
transformers: the FLOPs model and the reports work from these numbers alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class VisionSpec:
    """The vision tower and projector of a video LLM.

    Attributes:
        layers: Transformer blocks in the vision encoder.
        hidden_size: Width of the vision encoder.
        heads: Attention heads of the vision encoder.
        intermediate_size: MLP width of the vision encoder.
        patch_size: Spatial patch size in pixels.
        temporal_patch_size: Frames per temporal patch (2 for Qwen2-VL, else 1).
        image_size: Input side in pixels for fixed-resolution towers (0 if dynamic).
        in_channels: Image channels.
        projector_flops_per_token: FLOPs of the projector per *output* visual token.
        gated_mlp: Whether the vision MLP is gated (three matrices instead of two).
    """

    layers: int
    hidden_size: int
    heads: int
    intermediate_size: int
    patch_size: int
    temporal_patch_size: int = 1
    image_size: int = 0
    in_channels: int = 3
    projector_flops_per_token: int = 0
    gated_mlp: bool = False


@dataclass(frozen=True)
class ArchSpec:
    """The language model's shape.

    Attributes:
        family: Adapter family, e.g. ``"llava_onevision"``.
        layers: Decoder layers.
        hidden_size: Residual width ``d``.
        heads: Query heads ``H``.
        kv_heads: Key/value heads (GQA).
        head_dim: Per-head width.
        intermediate_size: MLP width ``I`` (SwiGLU: three matrices).
        vocab_size: Output vocabulary ``V``.
        rope: ``"1d"`` or ``"mrope"``.
        vision: The vision tower, if any.
    """

    family: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope: str = "1d"
    vision: VisionSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view for manifests."""
        return asdict(self)
