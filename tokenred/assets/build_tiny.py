"""Regenerate ``tokenred/assets/tiny/``: config.json and the word-level tokenizer.

Run ``python -m tokenred.assets.build_tiny`` after changing the vocabulary in
:mod:`tokenred.adapters._tiny`. No weights are written: the ``tiny`` adapter falls
back to a seeded random init until a trained ``model.safetensors`` is committed
next to these files (issue 8). Existing weights are kept.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tokenred.adapters._tiny import build_tokenizer, tiny_config

log = logging.getLogger(__name__)

TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
"""LLM of the tiny model: Qwen2 at toy size (4 layers, so in-LLM reducers at layer 2
still have layers after them; hidden 64 keeps CPU training at ~20 minutes)."""

TINY_VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 112,
    "patch_size": 7,
    "vision_use_head": False,
}
"""SigLIP tower: 112 / 7 = 16 patches per side, pooled 2x to 8 x 8 = 64 tokens per
frame (1024 per 16-frame video; an 8 x 8 grid keeps quadtree merging meaningful).
No attention-pooling head, as in LLaVA-OneVision (the FLOPs model assumes none)."""


def build(out: Path) -> Path:
    """Write config.json and tokenizer files of the tiny model into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(
        "llava_onevision", tokenizer, text=dict(TINY_TEXT), vision=dict(TINY_VISION)
    )
    config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent / "tiny"
    parser.add_argument("--out", type=Path, default=default, help="target directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    log.info("wrote %s", build(args.out))


if __name__ == "__main__":
    main()
