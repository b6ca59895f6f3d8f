"""Where a ``--model`` checkpoint lives: local directories and Hugging Face ids.

``--model`` takes a registered adapter name, a checkpoint directory, or a Hugging
Face repo id such as ``llava-hf/LLaVA-Video-7B-Qwen2-hf``. A repo id resolves to
its snapshot in the local Hugging Face cache (``HF_HUB_CACHE``, else
``HF_HOME/hub``); with ``HF_HUB_OFFLINE=1`` nothing is downloaded, otherwise a
missing snapshot is downloaded by ``huggingface_hub`` as transformers would.

The cache location and the offline switch are read from the environment at call
time rather than from ``huggingface_hub.constants`` (fixed when that module is
first imported), so a process that sets ``HF_HOME`` later still gets it.

Checkpoints in the original LLaVA format (the LLaVA-NeXT code base's
``LlavaQwenForCausalLM``, which transformers cannot load) are recognised here and
rejected with the command that converts them (:mod:`tokenred.convert`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tokenred.errors import ModelLoadError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "true", "yes", "on"}

ORIGINAL_ARCHITECTURES = frozenset(
    {"LlavaQwenForCausalLM", "LlavaLlamaForCausalLM", "LlavaMistralForCausalLM"}
)
"""``architectures`` of checkpoints written by the original LLaVA code bases."""


def is_repo_id(name: str) -> bool:
    """Whether ``name`` reads as ``org/name`` and is not an existing local path."""
    return bool(_REPO_ID.match(name)) and not Path(name).expanduser().exists()


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids downloads."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_repo_id(repo_id: str) -> Path:
    """Return the local snapshot directory of the Hugging Face repo ``repo_id``.

    The cached snapshot of ``refs/main`` is used when present; otherwise, unless
    offline, ``huggingface_hub`` downloads it into the cache.

    Raises:
        ModelLoadError: One line naming the repo, the cache and how to get it.
    """
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, OSError
        cached_error = exc
    if hub_offline():
        msg = (
            f"model '{repo_id}' is not in the Hugging Face cache {cache} and "
            "HF_HUB_OFFLINE is set; download it first (huggingface-cli download "
            f"{repo_id}), point HF_HOME at the cache that holds it, or pass a "
            "checkpoint directory"
        )
        raise ModelLoadError(msg) from cached_error
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache))
    except Exception as exc:  # no network, unknown repo, gated repo
        first = (str(exc).strip().splitlines() or [""])[0]
        msg = (
            f"model '{repo_id}' is neither a registered model, a directory, nor in "
            f"the Hugging Face cache {cache}, and downloading it failed "
            f"({type(exc).__name__}: {first}); check the name or pass a directory"
        )
        raise ModelLoadError(msg) from exc


def resolve_checkpoint(name: str | Path) -> Path:
    """Return the checkpoint directory of a local path or a Hugging Face repo id.

    An existing path is returned as is (checked later by the loader); a repo id
    goes through :func:`resolve_repo_id`; anything else is returned unchanged so
    the caller's "does not exist" error names it.
    """
    text = str(name)
    if is_repo_id(text):
        return resolve_repo_id(text)
    return Path(text).expanduser()


def read_config(path: Path) -> dict[str, Any]:
    """Return ``config.json`` of a checkpoint directory as a dict.

    Raises:
        ModelLoadError: When it is unreadable or not a JSON object.
    """
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        msg = f"model checkpoint '{path}': unreadable config.json ({exc})"
        raise ModelLoadError(msg) from exc
    if not isinstance(data, dict):
        msg = f"model checkpoint '{path}': config.json is not a JSON object"
        raise ModelLoadError(msg)
    return data


def is_original_llava(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` is in the original LLaVA (LLaVA-NeXT) format.

    Those configs name ``LlavaQwenForCausalLM`` (or the LLaMA/Mistral variants),
    use ``model_type`` ``llava_qwen``, or carry ``mm_vision_tower`` at top level
    instead of a ``vision_config``.
    """
    archs = set(config.get("architectures") or ())
    if archs & ORIGINAL_ARCHITECTURES or config.get("model_type") == "llava_qwen":
        return True
    return "mm_vision_tower" in config and "vision_config" not in config


def reject_original_llava(path: Path, config: dict[str, Any]) -> None:
    """Raise the one-line "convert it" error for an original-format checkpoint.

    Raises:
        ModelLoadError: When :func:`is_original_llava` holds.
    """
    if not is_original_llava(config):
        return
    arch = ", ".join(config.get("architectures") or [str(config.get("model_type"))])
    msg = (
        f"model checkpoint '{path}' is in the original LLaVA format ({arch}), which "
        f"transformers cannot load; convert it once with 'tokenred convert {path} "
        "OUT_DIR' and pass --model OUT_DIR (or use its Hugging Face twin, e.g. "
        "llava-hf/LLaVA-Video-7B-Qwen2-hf)"
    )
    raise ModelLoadError(msg)
