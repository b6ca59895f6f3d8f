"""Measurement owned by the runner and identical for every reducer.

* :mod:`~tokenred.measure.flops`: analytic FLOPs from the per-layer token schedule;
* :mod:`~tokenred.measure.flop_counter`: FlopCounterMode with the CPU sdpa formula,
  the empirical cross-check;
* :mod:`~tokenred.measure.latency`: device-aware phase timer and repeat protocol;
* :mod:`~tokenred.measure.memory`: peak memory and KV-cache bytes.

See ``docs/measuring.md`` for the formulas and the protocol.
"""

from __future__ import annotations

from tokenred.measure.flop_counter import FlopCount, count_flops
from tokenred.measure.flops import (
    ATTENTION_CONVENTIONS,
    FlopBreakdown,
    MeasurementError,
    VisionFlops,
    decode_flops,
    equivalent_tokens,
    prefill_flops,
    prefix_flops,
    reuse_flops,
    sample_flops,
    suffix_flops,
    vision_flops,
    vision_flops_breakdown,
)
from tokenred.measure.latency import (
    Repeats,
    Timer,
    measure_repeats,
    phase,
    summarize,
    timing,
)
from tokenred.measure.memory import (
    PeakMemory,
    cache_bytes,
    peak_bytes,
    reset_peak,
    tensor_bytes,
)

__all__ = [
    "ATTENTION_CONVENTIONS",
    "FlopBreakdown",
    "FlopCount",
    "MeasurementError",
    "PeakMemory",
    "Repeats",
    "Timer",
    "VisionFlops",
    "cache_bytes",
    "count_flops",
    "decode_flops",
    "equivalent_tokens",
    "measure_repeats",
    "peak_bytes",
    "phase",
    "prefill_flops",
    "prefix_flops",
    "reset_peak",
    "reuse_flops",
    "sample_flops",
    "suffix_flops",
    "summarize",
    "tensor_bytes",
    "timing",
    "vision_flops",
    "vision_flops_breakdown",
]
