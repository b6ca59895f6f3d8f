"""Peak memory and KV-cache size.

* **CUDA**: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``:
  the peak of tensors allocated by PyTorch on that device (kind
  ``"cuda_allocated"``), not what the caching allocator reserved.
* **CPU**: the peak resident set size (RSS). On Linux ``VmHWM`` in
  ``/proc/self/status`` is the process's high-water mark; writing ``5`` to
  ``/proc/self/clear_refs`` resets it to the current RSS, so a reset followed by a
  read gives the peak of the measured region (kind ``"cpu_rss"``). Where that file
  cannot be written (other kernels, hardened containers), the only number left is the
  process-lifetime peak from ``getrusage`` (kind ``"cpu_rss_process"``): it includes
  model loading and every earlier sample, and reports say so. RSS counts the whole
  process (weights, Python, libraries), not only this sample's tensors.
"""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device if device is not None else "cpu")


def _vm_hwm_bytes() -> int | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    return None


def _rusage_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakMemory:
    """Reset and read the peak memory of one device.

    Args:
        device: ``"cpu"`` or a CUDA device.
    """

    def __init__(self, device: str | torch.device | None = "cpu") -> None:
        self.device = _device(device)
        self._cpu_reset_ok = False

    @property
    def kind(self) -> str:
        """Return what :meth:`peak_bytes` measures.

        ``cuda_allocated``, ``cpu_rss`` or ``cpu_rss_process`` (the process-lifetime
        peak, when no reset was possible).
        """
        if self.device.type == "cuda":
            return "cuda_allocated"
        return "cpu_rss" if self._cpu_reset_ok else "cpu_rss_process"

    def reset(self) -> bool:
        """Start a new measurement region; return whether a real reset happened."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        try:
            _CLEAR_REFS.write_text("5")
            self._cpu_reset_ok = _vm_hwm_bytes() is not None
        except OSError as exc:
            log.debug("cannot reset peak RSS via %s: %s", _CLEAR_REFS, exc)
            self._cpu_reset_ok = False
        return self._cpu_reset_ok

    def peak_bytes(self) -> int:
        """Return the peak since :meth:`reset` (see :attr:`kind` for the scope)."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        hwm = _vm_hwm_bytes() if self._cpu_reset_ok else None
        return hwm if hwm is not None else _rusage_peak_bytes()


def reset_peak(device: str | torch.device | None = "cpu") -> PeakMemory:
    """Reset the peak counter of ``device`` and return the probe to read it with."""
    probe = PeakMemory(device)
    probe.reset()
    return probe


def peak_bytes(device: str | torch.device | None = "cpu") -> int:
    """Return the current peak of ``device`` without resetting it.

    On CPU this is the VmHWM high-water mark (since the last reset of the process's
    counter) when available, else the process-lifetime peak.
    """
    if _device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(_device(device)))
    hwm = _vm_hwm_bytes()
    return hwm if hwm is not None else _rusage_peak_bytes()


def tensor_bytes(obj: Any) -> int:
    """Return the bytes of every tensor reachable in nested lists/tuples/dicts."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def cache_bytes(cache: Any) -> int:
    """Return the bytes held by a Hugging Face KV cache (or legacy tuples).

    Handles transformers 5.x ``DynamicCache`` (``cache.layers[i].keys/values``) and
    the legacy ``((k, v), ...)`` layout; anything else counts the tensors it holds.
    """
    layers = getattr(cache, "layers", None)
    if layers is not None:
        total = 0
        for layer in layers:
            for name in ("keys", "values"):
                value = getattr(layer, name, None)
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
        return total
    return tensor_bytes(cache)
