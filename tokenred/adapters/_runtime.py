"""Runtime helpers of the HF adapters: devices, kernels, loading, caches, state."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tokenred.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from tokenred.insertion import LayerReduction
    from tokenred.model_io import VideoFeatures

log = logging.getLogger(__name__)


@dataclass
class DecodingState:
    """Decoding state behind a :class:`~tokenred.model_io.PrefillResult`.

    Attributes:
        cache: The ``DynamicCache`` (layers < K hold ``L``, layers >= K ``L'``).
        ids: Token ids of the unreduced prompt.
        video: The visual tokens (for positions of later text).
        controller: The in-LLM hooks, replayed on every later forward.
        next_pos: Model-level position of the next token (0-d tensor).
        model_shift: Tokens removed from the model-level sequence (pre-LLM
            ``reassign``); later text positions move down by it.
        consumed: Set once decoded (the cache has grown).
    """

    cache: Any
    ids: list[int]
    video: VideoFeatures
    controller: LayerReduction | None
    next_pos: Tensor
    model_shift: int
    consumed: bool = False


def resolve_device(device: str) -> torch.device:
    """Return the torch device for ``model.device`` ("auto" picks CUDA if present)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        msg = f"model.device: unknown device '{device}'; use cpu, cuda, cuda:N or auto"
        raise ConfigError(msg) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = f"model.device={device}, but no CUDA device is available; use cpu"
        raise ConfigError(msg)
    return dev


def resolve_attn(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """Return the attention kernel for ``model.attn_implementation``.

    ``auto`` is flash-attention 2 on CUDA in half precision when the package is
    installed, else sdpa.
    """
    have_flash = importlib.util.find_spec("flash_attn") is not None
    if name == "auto":
        half = dtype in (torch.float16, torch.bfloat16)
        use_flash = have_flash and device.type == "cuda" and half
        return "flash_attention_2" if use_flash else "sdpa"
    if name.startswith("flash_attention"):
        if not have_flash or device.type != "cuda":
            msg = (
                f"model.attn_implementation={name} needs the flash-attn package and a "
                "CUDA device; install flash-attn or use sdpa"
            )
            raise ConfigError(msg)
        return name
    if name not in {"sdpa", "eager"}:
        msg = f"model.attn_implementation: unknown '{name}'; use sdpa, eager or auto"
        raise ConfigError(msg)
    return name


def load_checkpoint(
    model_class: str,
    path: Path,
    *,
    dtype: torch.dtype,
    attn: str,
    seed: int,
    label: str,
    device_map: str | None = None,
) -> tuple[Any, Any, bool]:
    """Load ``(model, tokenizer, random_weights)`` from a checkpoint directory.

    A directory without weight files gets a seeded random init (the caller allows
    that only for ``tiny``); the global RNG is left untouched.

    Raises:
        ModelLoadError: One line naming the directory and the failure.
    """
    import transformers

    cls = getattr(transformers, model_class)
    kwargs = {"dtype": dtype, "attn_implementation": attn}
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    try:
        if has_weights:
            if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
                # Big-model loading: each shard goes straight to its GPU, so a
                # checkpoint larger than host memory still loads.
                from tokenred.adapters._sharding import max_memory, replica_gpus

                kwargs["device_map"] = device_map
                kwargs["max_memory"] = max_memory(replica_gpus())
            model = cls.from_pretrained(str(path), **kwargs)
        else:
            config = transformers.AutoConfig.from_pretrained(str(path))
            log.warning(
                "model '%s': %s has no weights; using a seeded random init (seed %d)"
                " - its answers are meaningless",
                label,
                path,
                seed,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = cls._from_config(config, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        msg = (
            f"model checkpoint '{path}' failed to load as {model_class}: "
            f"{type(exc).__name__}: {first}; check that it is a complete checkpoint"
        )
        raise ModelLoadError(msg) from exc
    return model, tokenizer, not has_weights


def stop_ids(tokenizer: Any, model: Any) -> set[int]:
    """Token ids that end an answer: EOS of tokenizer and generation config."""
    eos: set[int] = set()
    generation = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(generation, "eos_token_id", None)):
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, (list, tuple)):
            eos.update(int(v) for v in value)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        eos.add(im_end)
    return eos


def cache_lengths(cache: Any) -> list[int]:
    """Cached sequence length of every layer."""
    return [int(layer.keys.shape[-2]) for layer in cache.layers]


def copy_cache(cache: Any, empty: Any) -> Any:
    """Fill ``empty`` (a new ``DynamicCache``) with clones of ``cache``'s layers."""
    with torch.inference_mode():
        for i, layer in enumerate(cache.layers):
            empty.update(layer.keys.clone(), layer.values.clone(), i)
    return empty


WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
_EDGE = 1 << 16


def weights_fingerprint(path: Path, seed: int) -> str:
    """Identify the weights in a checkpoint directory without reading them whole.

    Hashes each weight file's name, size, first and last 64 KiB (a safetensors
    header lists every tensor's name, shape and offsets; the tail holds the last
    tensor's bytes), so retraining or swapping a checkpoint at the same path
    changes it while a 15 GB checkpoint costs two small reads per file. A
    directory without weights is named by its random-init seed.
    """
    files = sorted(f for pat in WEIGHT_PATTERNS for f in path.glob(pat))
    if not files:
        return f"random-init-seed-{seed}"
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}:{size}:".encode())
        with open(f, "rb") as handle:
            digest.update(handle.read(_EDGE))
            handle.seek(max(0, size - _EDGE))
            digest.update(handle.read(_EDGE))
    return digest.hexdigest()[:16]
