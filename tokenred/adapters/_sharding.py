"""``model.device_map``: one checkpoint over several devices through Accelerate.

Accelerate places each module on its device and wraps it in a hook that moves the
module's inputs there (and weights in from ``disk`` when offloaded), so a model
too big for one GPU runs layer by layer across GPUs. The framework keeps what it
owns: the adapter puts input ids, positions and the features on the device of
the input embeddings (:func:`main_device`), the insertion engine's reducers see
each layer's hidden states on that layer's device, and the KV cache of a layer
lives with the layer. FLOPs stay analytic (independent of placement); latency is
timed across every device the model uses (:mod:`tokenred.measure.latency`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch

from tokenred.errors import ModelLoadError

NAMED = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(text: str, label: str) -> str | dict[str, int | str]:
    """Parse ``model.device_map``: a strategy name or ``MODULE=DEVICE`` pairs.

    Raises:
        ModelLoadError: A pair without ``=``.
    """
    text = text.strip()
    if text in NAMED:
        return text
    out: dict[str, int | str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        module, sep, device = pair.partition("=")
        if not sep or not module or not device:
            msg = (
                f"model '{label}': model.device_map entry '{pair}' is not "
                "MODULE=DEVICE; use auto, balanced, sequential, or pairs such as "
                "model.language_model.layers.2=1"
            )
            raise ModelLoadError(msg)
        out[module.strip()] = int(device) if device.strip().isdigit() else device
    return out


def complete(
    model: torch.nn.Module, partial: dict[str, int | str], default: str
) -> dict[str, Any]:
    """Give every module the map leaves out the ``default`` device.

    An explicit map names what moves (a few layers); Accelerate needs every
    parameter placed, so the rest stays on ``model.device``.
    """
    out: dict[str, Any] = dict(partial)

    def walk(module: torch.nn.Module, prefix: str) -> None:
        for name, _ in module.named_parameters(recurse=False):
            out.setdefault(prefix + name, default)
        for name, child in module.named_children():
            full = prefix + name
            if full in partial:
                continue
            if any(k.startswith(full + ".") for k in partial):
                walk(child, full + ".")
            else:
                out[full] = default

    walk(model, "")
    return out


def replica_gpus(env: Mapping[str, str] | None = None) -> list[int] | None:
    """This rank's GPUs when data-parallel ranks share a node's GPUs, else None.

    With ``LOCAL_WORLD_SIZE`` ranks on a node of G GPUs, local rank r owns GPUs
    ``r*k .. r*k+k-1`` (k = G // ranks), so ``torchrun --nproc-per-node 2`` with
    ``model.device_map=auto`` on 8 GPUs runs two 4-GPU replicas.
    """
    env = os.environ if env is None else env
    ranks = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    count = torch.cuda.device_count()
    if ranks <= 1 or count == 0:
        return None
    k = max(count // ranks, 1)
    first = (int(env.get("LOCAL_RANK", "0")) * k) % count
    return list(range(first, min(first + k, count)))


def max_memory(gpus: list[int] | None) -> dict[int | str, int] | None:
    """Accelerate's ``max_memory`` limited to ``gpus`` (None: every GPU)."""
    if gpus is None:
        return None
    return {i: int(torch.cuda.mem_get_info(i)[0]) for i in gpus}


def shard(
    model: Any, device_map: str, label: str, default: str = "cpu"
) -> tuple[Any, torch.device]:
    """Dispatch a loaded (CPU) model over devices; return it and its input device.

    ``auto``/``balanced``/``sequential`` let Accelerate plan the placement from
    the free memory of each GPU (never splitting a decoder layer); explicit maps
    are completed with :func:`complete` (the rest on ``default``, the device
    ``model.device`` names). Entries mapped to ``disk`` are offloaded
    to a temporary folder and streamed in per forward.
    """
    from accelerate import dispatch_model, infer_auto_device_map

    parsed = parse_device_map(device_map, label)
    loaded = getattr(model, "hf_device_map", None)
    if loaded:  # from_pretrained already placed it (big-model loading)
        return model, main_device(model, dict(loaded))
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if isinstance(parsed, str):
        if not torch.cuda.is_available():
            msg = (
                f"model '{label}': model.device_map={parsed} needs CUDA devices; "
                "on CPU give explicit MODULE=DEVICE pairs (cpu, disk)"
            )
            raise ModelLoadError(msg)
        placed = infer_auto_device_map(
            model,
            max_memory=max_memory(replica_gpus()),
            no_split_module_classes=no_split,
        )
    else:
        placed = complete(model, parsed, default)
    main = main_device(model, placed)
    offload = tempfile.mkdtemp(prefix="tokenred-offload-")
    try:
        model = dispatch_model(
            model, device_map=placed, main_device=str(main), offload_dir=offload
        )
    except (ValueError, KeyError, RuntimeError) as exc:
        msg = f"model '{label}': model.device_map={device_map} failed: {exc}"
        raise ModelLoadError(msg) from None
    return model, main


def main_device(model: Any, placed: dict[str, Any]) -> torch.device:
    """The device of the input embeddings: where ids, positions and features go."""
    embed = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is embed)
    covering = [k for k in placed if k == "" or name == k or name.startswith(k + ".")]
    device = placed[max(covering, key=len)] if covering else "cpu"
    if device in ("disk", "meta"):
        return torch.device("cpu")
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def model_devices(model: Any) -> list[str]:
    """Every device the model's modules are placed on (manifest, timing)."""
    placed = getattr(model, "hf_device_map", None) or {}
    out = {f"cuda:{d}" if isinstance(d, int) else str(d) for d in placed.values()}
    return sorted(out) or sorted({str(p.device) for p in model.parameters()})


__all__ = ["complete", "main_device", "model_devices", "parse_device_map", "shard"]
