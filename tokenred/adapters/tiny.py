"""The embedded default model ``tiny``: a toy LLaVA-OneVision that needs no download.

Its config and word-level tokenizer are committed under ``tokenred/assets/tiny/``
(regenerate them with ``python -m tokenred.assets.build_tiny``). Layout of a
LLaVA-Video checkpoint at toy size: a 4-layer Qwen2 LLM (hidden 64, 4 heads, 2 KV
heads) and a 2-layer SigLIP tower (no pooling head) on 112x112 frames with 7x7
patches, so each frame gives 16x16 patches, pooled 2x to 8x8 = 64 visual tokens.

The weights trained by ``experiments/train_tiny.py`` (``model.safetensors`` in the
assets folder, see docs/demo-model.md) are loaded when present; without them the
weights are a seeded random init: answers are meaningless, a warning is logged,
and :meth:`describe` reports ``random_weights: True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import ClassVar

from tokenred.adapter import AdapterConfig
from tokenred.adapters.llava_onevision import LlavaOnevisionAdapter
from tokenred.tokens import PositionPolicy


def assets_dir() -> Path:
    """Return the directory of the embedded tiny checkpoint."""
    return Path(str(resources.files("tokenred") / "assets" / "tiny"))


@dataclass
class TinyAdapterConfig(AdapterConfig):
    """Config of the ``tiny`` adapter."""

    name: str = field(default="tiny", metadata={"help": "registered model name"})


class TinyAdapter(LlavaOnevisionAdapter):
    """Embedded toy LLaVA-OneVision (random weights until trained; no download)."""

    name = "tiny"
    Config: ClassVar[type[AdapterConfig]] = TinyAdapterConfig
    family = "llava_onevision"
    default_layer = 1
    """K=1 of 4 layers: the earliest in-LLM point (layer K-1=0 gives the attention
    FastV needs), the nearest the 4-layer toy has to the paper's K=2 of 28 (7 %
    of depth); K=2 would leave half the prefill unreduced."""
    default_positions = PositionPolicy.SURVIVE
    """The embedded model was trained on unreduced sequences with their original
    positions only, so ``survive`` (each kept token at its own position) is what it
    reads; the issue-16 measurement: pool 92 / tome 83 % under survive against
    53 / 50 % under reassign at 30 % before the LLM."""
    model_types: ClassVar[tuple[str, ...]] = ()
    checkpoints: ClassVar[tuple[str, ...]] = ()
    allow_random_init = True

    def _checkpoint_path(self) -> Path:
        if self.config.path is not None:
            return Path(self.config.path).expanduser()
        return assets_dir()
