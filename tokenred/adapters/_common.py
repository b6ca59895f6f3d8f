"""Shared pieces of the Hugging Face adapters: frames, chat templates, checkpoints.

HF video processors need torchvision, which cannot be installed here, so every
adapter builds its pixel tensors itself from decoded ``[T, H, W, 3]`` uint8 frames.
Resizing uses PIL's bicubic filter, as HF's PIL ("slow") image processors do;
torchvision's antialiased resize differs by a few grey levels.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from tokenred.errors import DataError, ModelLoadError

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Return ``frames`` as a contiguous ``[T, H, W, 3]`` uint8 array.

    Raises:
        DataError: For any other shape or dtype.
    """
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.dtype != np.uint8:
        msg = (
            f"video frames must be a [T, H, W, 3] uint8 RGB array with T >= 1, got "
            f"shape {arr.shape} dtype {arr.dtype}; decode with tokenred.video"
        )
        raise DataError(msg)
    return np.ascontiguousarray(arr)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize every frame to ``height x width`` with PIL bicubic (uint8 in/out)."""
    if frames.shape[1:3] == (height, width):
        return frames
    out = [
        np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC))
        for f in frames
    ]
    return np.stack(out)


def resize_shortest_and_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """CLIP-style: scale the shortest edge to ``size``, then centre-crop a square."""
    h, w = frames.shape[1:3]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    resized = resize_frames(frames, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[:, top : top + size, left : left + size]


def normalize(
    frames: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]
) -> Tensor:
    """Return ``[T, 3, H, W]`` float32: rescale to [0, 1], then standardise."""
    x = torch.from_numpy(frames).to(torch.float32) / 255.0
    # [T, H, W, 3] -> [T, 3, H, W]
    x = x.permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Return the Qwen2-VL frame size: multiples of ``factor``, area in range.

    Each side is rounded to the nearest multiple of ``factor`` (at least one), then
    both are scaled by a common factor (floored or ceiled to the grid) when the area
    leaves ``[min_pixels, max_pixels]``, keeping the aspect ratio.
    """
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def read_norm(
    path: Path | None, default: tuple[tuple[float, ...], tuple[float, ...]]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return (mean, std) from the checkpoint's preprocessor config, or ``default``."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        file = path / name if path is not None else None
        if file is None or not file.is_file():
            continue
        try:
            cfg = json.loads(file.read_text())
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable image_mean/std in %s", file)
    return default


@dataclass(frozen=True)
class ChatTemplate:
    """A single-turn chat prompt split around the video block.

    The text is ``before_video + <video block> + after_video + prompt +
    after_prompt``. Each piece is tokenized on its own, as HF processors do when
    they expand the video placeholder (special tokens split the text anyway).
    """

    before_video: str
    after_video: str
    after_prompt: str
    bos: bool = False


QWEN_CHAT = ChatTemplate(
    before_video="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n",
    after_video="\n",
    after_prompt="<|im_end|>\n<|im_start|>assistant\n",
)
"""LLaVA-Video/OneVision (``conv_qwen``): the video, a newline, then the text."""

QWEN_VL_CHAT = ChatTemplate(
    before_video=QWEN_CHAT.before_video,
    after_video="",
    after_prompt=QWEN_CHAT.after_prompt,
)
"""Qwen2-VL: ``<|vision_start|>...<|vision_end|>`` directly followed by the text."""

VICUNA_CHAT = ChatTemplate(
    before_video="USER: ", after_video="\n", after_prompt=" ASSISTANT:", bos=True
)
"""LLaVA-NeXT-Video (Vicuna/LLaMA)."""


def check_checkpoint_dir(path: str | Path, *, weights: bool = True) -> Path:
    """Return ``path`` if it holds a loadable checkpoint, else raise one clear line.

    Raises:
        ModelLoadError: Naming the directory, what is missing and how to fix it.
    """
    root = Path(path).expanduser()
    fix = (
        "save it with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR), "
        "or download the full repo: huggingface-cli download ORG/NAME --local-dir DIR"
    )
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise ModelLoadError(f"model checkpoint '{root}' {what}; {fix}")
    missing = []
    if not (root / "config.json").is_file():
        missing.append("config.json")
    if weights and not (
        any((root / f).is_file() for f in WEIGHT_FILES)
        or any(root.glob("*.safetensors"))
    ):
        missing.append("model weights (*.safetensors)")
    if not any((root / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer (tokenizer.json)")
    if missing:
        what = ", ".join(missing)
        msg = f"model checkpoint '{root}' is incomplete: missing {what}; {fix}"
        raise ModelLoadError(msg)
    return root
