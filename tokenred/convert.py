"""Convert original-format LLaVA-OneVision/Video checkpoints to the HF layout.

The checkpoints of the STTM paper (e.g. ``lmms-lab/LLaVA-Video-7B-Qwen2``) were
written by the LLaVA-NeXT code base as ``LlavaQwenForCausalLM``: a Qwen2 config
with ``mm_*`` keys on top, and weights named ``model.layers.*``,
``model.mm_projector.*``, ``model.vision_tower.vision_tower.vision_model.*``.
transformers loads the same network as ``LlavaOnevisionForConditionalGeneration``,
which :func:`convert_llava_original` writes: the weights renamed (no values
changed), a nested config built from the original keys and the tower's weight
shapes, and the tokenizer with ``<image>``/``<video>`` placeholders.

The model is built on the meta device and filled by ``load_state_dict(strict,
assign)``, so a missing or unknown weight fails loudly and a 7B checkpoint is held
in memory once.

What the HF class cannot express is reported as notes rather than hidden: the
original code can put a newline token after every grid row
(``mm_newline_position: grid``) where the HF class puts one after the video, and
can pool frames other than bilinearly.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tokenred.checkpoints import is_original_llava, read_config, resolve_checkpoint
from tokenred.errors import ModelLoadError

log = logging.getLogger(__name__)

KNOWN_TOWER_HEADS = {
    "google/siglip-so400m-patch14-384": 16,
    "google/siglip-so400m-patch14-224": 16,
    "google/siglip-base-patch16-224": 12,
    "google/siglip-large-patch16-384": 16,
}
"""Attention heads of the SigLIP towers LLaVA checkpoints name (not in weights)."""

_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "hidden_act",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "attention_dropout",
)
_TOWER = "model.vision_tower.vision_tower.vision_model."
_COPIED_FILES = ("generation_config.json", "preprocessor_config.json")


@dataclass
class Conversion:
    """What :func:`convert_llava_original` wrote.

    Attributes:
        output: The HF-format checkpoint directory.
        tensors: Number of weight tensors written.
        notes: Differences between the original code's behaviour and the HF
            class that the conversion cannot remove (one line each).
    """

    output: Path
    tensors: int
    notes: list[str] = field(default_factory=list)


def rename_weight(name: str) -> str | None:
    """Return the HF ``LlavaOnevision`` parameter name of an original weight name.

    ``None`` for weights the HF model has no place for.
    """
    if name == "lm_head.weight":
        return name
    if name == "model.image_newline":
        return name
    if name.startswith(_TOWER):
        return "model.vision_tower." + name.removeprefix(_TOWER)
    projector = re.match(r"model\.mm_projector\.(\d+)\.(weight|bias)$", name)
    if projector:
        index = {"0": "linear_1", "2": "linear_2"}.get(projector.group(1))
        if index is None:
            return None
        return f"model.multi_modal_projector.{index}.{projector.group(2)}"
    for part in ("embed_tokens.", "layers.", "norm."):
        if name.startswith("model." + part):
            return "model.language_model." + name.removeprefix("model.")
    return None


def read_weights(path: Path) -> dict[str, Tensor]:
    """Return every tensor of the checkpoint's ``*.safetensors`` (or ``*.bin``)."""
    from safetensors.torch import load_file

    tensors: dict[str, Tensor] = {}
    files = sorted(path.glob("*.safetensors"))
    for file in files:
        tensors.update(load_file(str(file)))
    if not files:
        for file in sorted(path.glob("*.bin")):
            tensors.update(torch.load(file, map_location="cpu", weights_only=True))
    if not tensors:
        msg = f"model checkpoint '{path}' has no weights (*.safetensors or *.bin)"
        raise ModelLoadError(msg)
    return tensors


def _tower_heads(tower: str, hidden: int) -> int:
    """Attention heads of the vision tower ``mm_vision_tower`` names.

    Read from the tower's own config when it is a local directory or cached
    Hugging Face repo, else from :data:`KNOWN_TOWER_HEADS`.
    """
    try:
        path = resolve_checkpoint(tower) if tower else None
    except ModelLoadError:
        path = None
    if path is not None and (path / "config.json").is_file():
        cfg = read_config(path)
        cfg = cfg.get("vision_config", cfg)
        if "num_attention_heads" in cfg:
            return int(cfg["num_attention_heads"])
    if tower in KNOWN_TOWER_HEADS:
        return KNOWN_TOWER_HEADS[tower]
    msg = (
        f"vision tower '{tower}' (hidden size {hidden}) is not a known SigLIP tower "
        "and its config is not cached; download it (huggingface-cli download "
        f"{tower}) so its attention-head count can be read"
    )
    raise ModelLoadError(msg)


def vision_config(config: dict[str, Any], weights: dict[str, Tensor]) -> dict[str, Any]:
    """Build the SigLIP ``vision_config`` from the tower's weight shapes.

    Raises:
        ModelLoadError: For a tower that is not SigLIP or has no weights here.
    """
    tower = str(config.get("mm_vision_tower", ""))
    patch = weights.get(_TOWER + "embeddings.patch_embedding.weight")
    if "siglip" not in tower.lower() or patch is None:
        msg = (
            f"vision tower '{tower}' is not supported: only LLaVA-OneVision/Video "
            "checkpoints with their SigLIP tower weights included are converted"
        )
        raise ModelLoadError(msg)
    hidden, channels, patch_size = (int(v) for v in patch.shape[:3])
    positions = int(weights[_TOWER + "embeddings.position_embedding.weight"].shape[0])
    layers = 1 + max(
        int(m.group(1))
        for k in weights
        if (m := re.match(re.escape(_TOWER) + r"encoder\.layers\.(\d+)\.", k))
    )
    fc1 = weights[_TOWER + "encoder.layers.0.mlp.fc1.weight"]
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": hidden,
        "intermediate_size": int(fc1.shape[0]),
        "num_hidden_layers": layers,
        "num_attention_heads": _tower_heads(tower, hidden),
        "num_channels": channels,
        "patch_size": patch_size,
        "image_size": math.isqrt(positions) * patch_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": any(k.startswith(_TOWER + "head.") for k in weights),
    }


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Build the Qwen2 ``text_config`` from the original top-level keys."""
    text = {k: config[k] for k in _TEXT_KEYS if k in config}
    rope = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", 1e4))}
    return {"model_type": "qwen2", **text, "rope_parameters": rope}


def _notes(config: dict[str, Any]) -> list[str]:
    notes = []
    newline = config.get("mm_newline_position", "one_token")
    if newline not in ("one_token", None):
        notes.append(
            f"mm_newline_position '{newline}': the original code adds newline tokens "
            "inside the video; the HF class (and tokenred) adds one after it"
        )
    pool = config.get("mm_spatial_pool_mode", "bilinear")
    if pool not in ("bilinear", None):
        notes.append(
            f"mm_spatial_pool_mode '{pool}': the HF class pools video frames "
            "bilinearly to ceil(side / 2)"
        )
    return notes


def _placeholders(tokenizer: Any) -> tuple[int, int]:
    """Add ``<image>``/``<video>`` to ``tokenizer`` if missing; return their ids."""
    missing = [t for t in ("<image>", "<video>") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    image = int(tokenizer.convert_tokens_to_ids("<image>"))
    video = int(tokenizer.convert_tokens_to_ids("<video>"))
    return image, video


def _grow_vocab(weights: dict[str, Tensor], size: int) -> None:
    """Pad the embedding and LM-head rows to ``size`` with their mean row."""
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        table = weights.get(key)
        if table is not None and table.shape[0] < size:
            extra = table.float().mean(0, keepdim=True).to(table.dtype)
            # [V, D] + [size - V, D] -> [size, D]
            weights[key] = torch.cat(
                [table, extra.expand(size - table.shape[0], -1)], 0
            )


def convert_llava_original(source: str | Path, output: str | Path) -> Conversion:
    """Write an HF-format copy of an original-format LLaVA-OneVision/Video checkpoint.

    Args:
        source: The original checkpoint: a directory or a cached Hugging Face id
            (e.g. ``lmms-lab/LLaVA-Video-7B-Qwen2``).
        output: The new checkpoint directory (created; must be empty if present).

    Raises:
        ModelLoadError: One line for a source that is not an original-format
            LLaVA checkpoint, an unsupported tower or projector, weights that do
            not fill the HF model, or a non-empty output directory.
    """
    import transformers as tf

    src = resolve_checkpoint(source)
    out = Path(output).expanduser()
    if not (src / "config.json").is_file():
        msg = f"model checkpoint '{src}' has no config.json; pass the checkpoint dir"
        raise ModelLoadError(msg)
    if out.exists() and any(out.iterdir()):
        msg = f"output directory '{out}' is not empty; choose a new directory"
        raise ModelLoadError(msg)
    config = read_config(src)
    if not is_original_llava(config):
        msg = (
            f"model checkpoint '{src}' is not in the original LLaVA format "
            f"({config.get('model_type')}); it loads without conversion"
        )
        raise ModelLoadError(msg)
    projector = config.get("mm_projector_type", "mlp2x_gelu")
    if projector != "mlp2x_gelu":
        msg = f"mm_projector_type '{projector}' is not supported; only mlp2x_gelu"
        raise ModelLoadError(msg)
    original = read_weights(src)
    vision = vision_config(config, original)
    weights: dict[str, Tensor] = {}
    for name, tensor in original.items():
        new = rename_weight(name)
        if new is None:
            msg = f"model checkpoint '{src}': weight '{name}' has no HF counterpart"
            raise ModelLoadError(msg)
        weights[new] = tensor
    tokenizer = tf.AutoTokenizer.from_pretrained(str(src))
    image_id, video_id = _placeholders(tokenizer)
    text = text_config(config)
    size = max(int(text.get("vocab_size", 0)), image_id + 1, video_id + 1)
    text["vocab_size"] = size
    _grow_vocab(weights, size)
    dtype = next(iter(weights.values())).dtype
    hf_config = tf.LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=image_id,
        video_token_index=video_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )
    hf_config.dtype = dtype
    with torch.device("meta"):
        model = tf.LlavaOnevisionForConditionalGeneration(hf_config)
    result = model.load_state_dict(weights, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in _tied(model)]
    if missing or result.unexpected_keys:
        what = missing[:3] or result.unexpected_keys[:3]
        kind = "missing" if missing else "unexpected"
        msg = f"model checkpoint '{src}': {kind} weights after conversion: {what}"
        raise ModelLoadError(msg)
    if hf_config.tie_word_embeddings:
        model.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    for name in _COPIED_FILES:
        if (src / name).is_file():  # the source's own settings win
            shutil.copyfile(src / name, out / name)
    notes = _notes(config)
    for note in notes:
        log.warning("convert %s: %s", src, note)
    record = {"source": str(source), "source_path": str(src), "notes": notes}
    (out / "tokenred_conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return Conversion(output=out, tensors=len(weights), notes=notes)


def _tied(model: Any) -> set[str]:
    """Parameter names the model ties to another (absent from checkpoints)."""
    if not model.config.tie_word_embeddings:
        return set()
    return {"lm_head.weight"}
