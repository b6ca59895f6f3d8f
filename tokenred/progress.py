"""Progress as plain lines, for logs that are not a terminal (CI, ``tee``, Slurm).

A ``tqdm`` bar redraws one line with carriage returns: in a log file that is either
nothing (tqdm hides itself off a terminal) or hundreds of fragments. This bar
instead writes whole lines -- run, done/total, rate, ETA -- at most every
``interval`` seconds, plus one when the run finishes. It never writes to the
terminal itself: the caller (the CLI) passes the function that writes a line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


def format_duration(seconds: float) -> str:
    """Return ``seconds`` as ``12.3s``, ``4m05s`` or ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class LineProgress:
    """A ``tqdm``-like bar (``update(n)``, ``close()``) that writes plain lines.

    Args:
        label: What is being counted (the runner passes ``reducer@budget``).
        total: Number of items expected.
        write: Called with each finished line (no trailing newline).
        interval: Minimum seconds between two progress lines; the first update and
            the last item always get a line, so a short run still shows one.
        clock: Monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        label: str,
        total: int,
        write: Callable[[str], None],
        *,
        interval: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._write = write
        self._interval = interval
        self._clock = clock
        self._start = clock()
        self._last: float | None = None
        self._last_done = -1
        self._closed = False

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; write a line when the interval has passed."""
        self.done += n
        now = self._clock()
        due = self._last is None or now - self._last >= self._interval
        if due or self.done >= self.total:
            self._emit(now)

    def close(self) -> None:
        """Write the final line unless the last update already wrote it."""
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        if self._last is None or self._last_done != self.done:
            self._emit(now)

    def line(self, now: float) -> str:
        """Return the progress line at time ``now``."""
        elapsed = max(now - self._start, 0.0)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [
            f"{self.label}: {self.done}/{self.total} ({pct:.0f}%)",
            f"{rate:.2f} q/s" if rate else "- q/s",
            f"elapsed {format_duration(elapsed)}",
        ]
        left = self.total - self.done
        if left > 0 and rate > 0:
            parts.append(f"eta {format_duration(left / rate)}")
        return ", ".join(parts)

    def _emit(self, now: float) -> None:
        self._last = now
        self._last_done = self.done
        self._write(self.line(now))


def line_progress_factory(
    write: Callable[[str], None],
    *,
    interval: float = 5.0,
    clock: Clock = time.monotonic,
) -> Callable[[str, int], LineProgress]:
    """Return a runner ``progress`` factory of :class:`LineProgress` bars."""

    def factory(label: str, total: int) -> LineProgress:
        return LineProgress(label, total, write, interval=interval, clock=clock)

    return factory


__all__ = ["LineProgress", "format_duration", "line_progress_factory"]
