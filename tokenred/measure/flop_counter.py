"""Count FLOPs empirically with :class:`torch.utils.flop_counter.FlopCounterMode`.

On CPU, ``F.scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which FlopCounterMode has no
formula for: attention silently counts as zero. :func:`count_flops` adds that formula
through ``custom_mapping`` (no global registration, which would raise on a second
call) so the count covers attention, and equals the analytic model of
:mod:`tokenred.measure.flops` with ``attention="full"``.

Used by the tests and, optionally, by the runner as a cross-check of the analytic
numbers on small models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

T = TypeVar("T")


def _cpu_sdpa_flops(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """Full-square sdpa FLOPs from shapes (FlopCounterMode passes shapes here)."""
    return int(sdpa_flop_count(query, key, value))


def cpu_sdpa_mapping() -> dict[Any, Callable[..., int]]:
    """Return the ``custom_mapping`` that teaches FlopCounterMode the CPU sdpa op."""
    ops: dict[Any, Callable[..., int]] = {}
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
    ):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            ops[op] = _cpu_sdpa_flops
    return ops


@dataclass
class FlopCount:
    """Result of :func:`count_flops`.

    Attributes:
        total: FLOPs of everything that ran.
        by_op: FLOPs per aten op name (e.g. ``"aten.mm"``).
        by_module: FLOPs per module path (FlopCounterMode's ``depth`` levels).
        value: What the counted callable returned.
    """

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)
    value: Any = None


def count_flops(fn: Callable[[], T], *, depth: int = 2) -> FlopCount:
    """Run ``fn`` under FlopCounterMode (with the CPU sdpa formula) and count.

    Args:
        fn: A zero-argument callable, e.g. ``lambda: model(**inputs)``. It runs under
            ``torch.no_grad()``.
        depth: Module nesting depth kept in ``by_module``.

    Returns:
        The total, per-op and per-module counts, and ``fn``'s return value.
    """
    counter = FlopCounterMode(
        display=False, depth=depth, custom_mapping=cpu_sdpa_mapping()
    )
    with torch.no_grad(), counter:
        value = fn()
    counts = counter.get_flop_counts()
    by_op = {str(op): int(n) for op, n in counts.get("Global", {}).items()}
    by_module = {
        mod: int(sum(ops.values())) for mod, ops in counts.items() if mod != "Global"
    }
    return FlopCount(
        total=int(counter.get_total_flops()),
        by_op=by_op,
        by_module=by_module,
        value=value,
    )
