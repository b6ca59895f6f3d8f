"""Count, on a CPU, the host-device synchronisations code would make on CUDA.

On CUDA every read of device data by the host (``.item()``, ``bool(t)``,
``.tolist()``, ``nonzero``, boolean-mask indexing, ``unique``, ``equal``, ...) makes
the host wait for the device, so a reducer that reads back once per frame or per
level stalls the GPU that often. PyTorch can report those calls only on CUDA
(``torch.cuda.set_sync_debug_mode``); on CPU nothing synchronises. This module is
the CPU proxy: a dispatch mode that records the aten ops that *would* synchronise,
plus ``Tensor.tolist`` (which dispatches no op on CPU), each with the line of the
caller. The GPU benchmark (``benchmarks/gpu_suite.py``) and reducer tests use it,
so a reducer's read-backs can be held to a bound in CI without a GPU.

Reads that dispatch no op on a CPU tensor (``.numpy()``, ``.cpu()``) and
host-to-device copies are invisible to it: the count is a lower bound.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_TEXT = "synchronizing CUDA operation"
"""The phrase PyTorch's sync debug mode warns with; recorded reads say it too."""

HOST_READ_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.item",  # seen instead of the above under inference_mode
        "aten.is_nonzero",  # bool(tensor) under inference_mode
        "aten.allclose",
        "aten.nonzero",
        "aten.nonzero_numpy",
        "aten.argwhere",
        "aten.masked_select",
        "aten._unique",
        "aten._unique2",
        "aten.unique_dim",
        "aten.unique_consecutive",
        "aten.equal",
    }
)
"""aten ops that read a value back, or size their output from the data."""

_MASK_INDEX_OPS = frozenset({"aten.index", "aten.index_put", "aten.index_put_"})


@dataclass(frozen=True)
class HostRead:
    """One recorded read, shaped like a caught sync warning.

    Attributes:
        filename: The calling file (the innermost frame outside torch).
        lineno: Its line.
        op: The aten op (or ``aten.tolist``).
    """

    filename: str
    lineno: int
    op: str

    @property
    def message(self) -> str:
        """What PyTorch's sync debug mode would have warned."""
        return f"{self.op} ({SYNC_TEXT} on CUDA)"


def is_host_read(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """Whether an aten call would make the host wait for the device on CUDA."""
    name = str(func.overloadpacket)
    if name in HOST_READ_OPS:
        return True
    if name == "aten.repeat_interleave":
        # Tensor repeats size the output from their values; an int does not.
        return func._overloadname != "self_int" and kwargs.get("output_size") is None
    if name in _MASK_INDEX_OPS and len(args) > 1:
        # Boolean-mask indexing runs a nonzero to size its output.
        return any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
            for i in (args[1] or ())
        )
    return False


def _caller(skip: tuple[str, ...]) -> tuple[str, int]:
    """Return the innermost frame outside torch, this module and ``skip``."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(skip):
            return frame.filename, frame.lineno or 0
    return "?", 0


class _HostReadOps(TorchDispatchMode):
    """Dispatch mode that appends a :class:`HostRead` per synchronising op."""

    def __init__(self, reads: list[HostRead], skip: tuple[str, ...]) -> None:
        super().__init__()
        self.reads = reads
        self.skip = skip

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if is_host_read(func, args, kwargs):
            filename, lineno = _caller(self.skip)
            self.reads.append(HostRead(filename, lineno, str(func.overloadpacket)))
        return func(*args, **kwargs)


@contextmanager
def record_host_reads(skip: Sequence[str] = ()) -> Iterator[list[HostRead]]:
    """Record the host reads of the body; yields the list it fills.

    Args:
        skip: Path prefixes whose frames are not reported as the caller (e.g. a
            harness's own file), besides torch and this module.

    Example:
        >>> with record_host_reads() as reads:
        ...     reduction = reducer.reduce(tokens, ctx)  # doctest: +SKIP
        >>> len(reads)  # doctest: +SKIP
    """
    prefixes: tuple[str, ...] = (
        str(Path(torch.__file__).parent),
        str(Path(__file__).resolve()),
        *(str(s) for s in skip),
    )
    reads: list[HostRead] = []
    original = torch.Tensor.tolist

    def tolist(self: torch.Tensor) -> Any:
        # On CUDA one copy to the host and one wait, however many values it reads.
        filename, lineno = _caller(prefixes)
        reads.append(HostRead(filename, lineno, "aten.tolist"))
        return original(self)

    torch.Tensor.tolist = tolist  # type: ignore[method-assign,assignment]
    try:
        with _HostReadOps(reads, prefixes):
            yield reads
    finally:
        torch.Tensor.tolist = original  # type: ignore[method-assign]


__all__ = [
    "HOST_READ_OPS",
    "SYNC_TEXT",
    "HostRead",
    "is_host_read",
    "record_host_reads",
]
