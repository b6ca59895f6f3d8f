"""Device-aware wall-clock timing of named phases.

Protocol (the same for every reducer):

* **CUDA**: each phase records a pair of CUDA events on the current stream. Nothing
  synchronises while the work runs, so timing does not change what is timed; the
  events are synchronised only when the results are read.
* **CPU**: :func:`time.perf_counter_ns`, a monotonic clock.
* :func:`measure_repeats` runs ``warmup`` untimed repeats first (caches, allocator,
  kernel selection) and then ``repeats`` timed ones; :func:`summarize` reports the
  median, inter-quartile range, mean, min and max of those.

Phases used by the runner: ``vision`` (encoder + projector), ``reducer`` (inside the
engine), ``prefill`` (time to first token, reducer included), ``decode`` (all decode
steps of one answer; the runner divides by the steps) and ``e2e``.

Code deep inside a measured call (the insertion engine timing the reducer) reports
to whichever timer the measurement protocol made active with :func:`timing`, via
:func:`phase`; nothing else carries the timer, so a reduction plan describes *what*
to apply and never *how it is measured*.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")


def _is_cuda(device: str | torch.device | None) -> bool:
    return torch.device(device if device is not None else "cpu").type == "cuda"


_SPANNED: list[torch.device] = []
"""CUDA devices a sharded model runs on, besides the timer's own (see below)."""


def time_across(devices: Sequence[str]) -> None:
    """Make CUDA timers record on every device of a sharded model.

    With ``model.device_map`` a phase's work runs on several GPUs (a reducer at
    layer K runs on layer K's GPU); each phase then records its events on the
    current stream of every such device and reports the longest interval. The
    adapter calls this when it loads (an unsharded model passes no devices).
    """
    # Other placements (cpu, disk offload) are timed by the host clock anyway.
    _SPANNED[:] = [torch.device(d) for d in devices if str(d).startswith("cuda")]


class Timer:
    """Time named phases on one device; ``timer("prefill")`` is a context manager.

    A phase may be entered several times (e.g. once per decode step); each interval
    is kept. Phases may nest (``reducer`` inside ``prefill``).

    Args:
        device: The device the timed work runs on; ``"cuda..."`` selects CUDA events.
    """

    def __init__(self, device: str | torch.device | None = "cpu") -> None:
        self.device = torch.device(device if device is not None else "cpu")
        self.cuda = _is_cuda(self.device)
        self._cpu: dict[str, list[float]] = {}
        self._events: dict[str, list[list[tuple[Any, Any]]]] = {}
        self.devices = [self.device] + [d for d in _SPANNED if d != self.device]
        """Devices whose streams the CUDA events are recorded on."""

    @property
    def kind(self) -> str:
        """``"cuda"`` or ``"cpu"``: which clock the numbers come from."""
        return "cuda" if self.cuda else "cpu"

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Time the body of the ``with`` block as one interval of ``phase``."""
        if self.cuda:
            pairs = [
                (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                for _ in self.devices
            ]
            for device, (start, _) in zip(self.devices, pairs):
                start.record(torch.cuda.current_stream(device))
            try:
                yield
            finally:
                for device, (_, end) in zip(self.devices, pairs):
                    end.record(torch.cuda.current_stream(device))
            self._events.setdefault(phase, []).append(pairs)
            return
        t0 = time.perf_counter_ns()
        try:
            yield
        finally:
            elapsed = (time.perf_counter_ns() - t0) / 1e6
            self._cpu.setdefault(phase, []).append(elapsed)

    def results(self) -> dict[str, list[float]]:
        """Return every interval in milliseconds, per phase (synchronises on CUDA)."""
        out = {phase: list(values) for phase, values in self._cpu.items()}
        for phase, intervals in self._events.items():
            for pairs in intervals:
                for _, end in pairs:
                    end.synchronize()
            # One interval per entry: the longest over the devices it spans.
            out[phase] = [
                max(float(start.elapsed_time(end)) for start, end in pairs)
                for pairs in intervals
            ]
        return out

    def totals(self) -> dict[str, float]:
        """Return the summed milliseconds per phase."""
        return {phase: float(sum(v)) for phase, v in self.results().items()}

    def clear(self) -> None:
        """Forget every recorded interval."""
        self._cpu.clear()
        self._events.clear()


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """Return ``{median, iqr, mean, min, max, n}`` of timing samples in ms.

    The IQR uses the inclusive quartile method so that it is defined for two
    samples; with one sample it is 0.
    """
    values = [float(v) for v in samples_ms]
    if not values:
        return {
            "median": float("nan"),
            "iqr": float("nan"),
            "mean": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
            "n": 0,
        }
    if len(values) > 1:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        iqr = q3 - q1
    else:
        iqr = 0.0
    return {
        "median": statistics.median(values),
        "iqr": iqr,
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


@dataclass
class Repeats(Generic[T]):
    """Outcome of :func:`measure_repeats`.

    Attributes:
        value: What ``fn`` returned on the last timed repeat.
        phases: Per phase, the summed milliseconds of each timed repeat.
        device_kind: ``"cuda"`` or ``"cpu"``.
    """

    value: T
    phases: dict[str, list[float]] = field(default_factory=dict)
    device_kind: str = "cpu"

    def summary(self) -> dict[str, dict[str, float]]:
        """Return :func:`summarize` of every phase."""
        return {phase: summarize(v) for phase, v in self.phases.items()}


def measure_repeats(
    fn: Callable[[Timer], T],
    *,
    warmup: int = 1,
    repeats: int = 3,
    device: str | torch.device | None = "cpu",
) -> Repeats[T]:
    """Call ``fn(timer)`` ``warmup`` times untimed, then ``repeats`` times timed.

    ``fn`` wraps its phases in ``with timer("name"):``. Each timed repeat gets a fresh
    :class:`Timer`; a phase entered several times within one repeat is summed.

    Args:
        fn: The work to time; receives the repeat's timer.
        warmup: Untimed calls first (their numbers are discarded).
        repeats: Timed calls (at least 1).
        device: Where the work runs.
    """
    for _ in range(warmup):
        fn(Timer(device))
    phases: dict[str, list[float]] = {}
    value: Any = None
    for _ in range(max(1, repeats)):
        timer = Timer(device)
        value = fn(timer)
        for phase, total in timer.totals().items():
            phases.setdefault(phase, []).append(total)
    return Repeats(
        value=value, phases=phases, device_kind="cuda" if _is_cuda(device) else "cpu"
    )


_ACTIVE: ContextVar[Timer | None] = ContextVar("tokenred_active_timer", default=None)


@contextmanager
def timing(timer: Timer) -> Iterator[Timer]:
    """Make ``timer`` the one :func:`phase` reports to inside the ``with`` block.

    The measurement protocol wraps a timed call in it, so phases nested deep inside
    the call (the reducer inside the engine) land on the same repeat's timer.
    """
    token = _ACTIVE.set(timer)
    try:
        yield timer
    finally:
        _ACTIVE.reset(token)


def phase(name: str) -> AbstractContextManager[Any]:
    """Time the ``with`` body as ``name`` on the active timer (no-op without one)."""
    timer = _ACTIVE.get()
    return timer(name) if timer is not None else nullcontext()
