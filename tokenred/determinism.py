"""Reproducible answers: compute settings of a run and noise-proof score ranking.

Two things make the same run id give the same answers everywhere:

* :func:`compute_settings`: the runner sets torch's intra-op thread count from
  ``measure.threads`` and turns on torch's deterministic algorithms
  (``measure.deterministic``) for the duration of a run, and records both in the
  manifest, so CPU timings say how many threads produced them. The previous settings
  are restored when the run ends, so a library user's process (a notebook, a test
  session) is left as it was. Inter-op threads are not touched: torch allows setting
  them only once, before any parallel work, and nothing in a run uses inter-op
  parallelism; their count is recorded all the same.
* :func:`stable_scores`: reducers that *rank* similarities round them to a fixed
  grid first. Videos with static backgrounds hold hundreds of patches whose
  similarity to their neighbour is 1.0 up to float noise; the last bits of the
  features differ between CPU instruction sets (AVX-512 vs AVX2 kernels of ATen and
  oneDNN), GPUs and library versions, so an unrounded ranking of such near-ties is
  decided by that noise and moved the embedded study by 1-2 points between
  machines. On the grid, noise-level differences compare equal and the stable,
  position-ordered tie-break decides, the same on every machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

SCORE_GRID = 2.0**-10
"""Resolution at which reducers rank similarities (about 1e-3, a power of two so the
rounding is exact): far above float32 noise of the features (~1e-6 on the tiny
model), far below any similarity difference a reducer should act on."""

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS workspace setting that torch's deterministic mode needs on CUDA >= 10.2."""

_DEFAULTS: dict[str, int] = {}
"""torch's settings before tokenred first changed them (filled on first use)."""


@dataclass(frozen=True)
class ComputeSettings:
    """The compute settings a run used (written into the manifest).

    Attributes:
        threads: Intra-op threads torch used (``torch.get_num_threads()``).
        requested_threads: ``measure.threads`` as configured (0: torch's default,
            one per physical core or ``OMP_NUM_THREADS``).
        interop_threads: Inter-op threads (recorded, never changed).
        deterministic: Whether torch's deterministic algorithms were on.
    """

    threads: int
    requested_threads: int
    interop_threads: int
    deterministic: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict stored under the manifest's ``measurement``."""
        return asdict(self)


def default_threads() -> int:
    """Return torch's thread count before tokenred first changed it.

    torch has no call that returns its default once it was changed, so the value is
    read on the first call of this function (:func:`compute_settings` calls it
    before it sets anything).
    """
    import torch

    return _DEFAULTS.setdefault("threads", int(torch.get_num_threads()))


@contextlib.contextmanager
def compute_settings(
    threads: int, deterministic: bool = True
) -> Iterator[ComputeSettings]:
    """Set torch's threads and determinism for a block; restore them afterwards.

    Args:
        threads: Intra-op threads; 0 keeps torch's default (:func:`default_threads`).
        deterministic: Turn on ``torch.use_deterministic_algorithms`` (warn-only:
            an op without a deterministic implementation warns instead of failing).

    Yields:
        The settings in effect inside the block.
    """
    import torch

    default = default_threads()
    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads if threads > 0 else default)
    if deterministic:
        # Read by cuBLAS when CUDA initialises; harmless on CPU and when already set.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        yield ComputeSettings(
            threads=int(torch.get_num_threads()),
            requested_threads=threads,
            interop_threads=int(torch.get_num_interop_threads()),
            deterministic=bool(torch.are_deterministic_algorithms_enabled()),
        )
    finally:
        torch.set_num_threads(before_threads)
        torch.use_deterministic_algorithms(before_det, warn_only=before_warn)


def stable_scores(scores: Tensor, grid: float = SCORE_GRID) -> Tensor:
    """Round scores to multiples of ``grid`` so that float noise cannot reorder them.

    Use it on similarities (or any score) before ``sort``/``topk``/``max`` when the
    ranking decides which tokens are kept or merged, and break ties by position
    (``stable=True``; ``max`` returns the first maximum). Values stay in the input
    dtype; only the ranking input is rounded, never the features themselves.

    Args:
        scores: Any float tensor, e.g. cosine similarities in ``[-1, 1]``.
        grid: Rounding step; :data:`SCORE_GRID` unless a reducer needs another.
    """
    import torch

    return torch.round(scores / grid) * grid


__all__ = [
    "SCORE_GRID",
    "ComputeSettings",
    "compute_settings",
    "default_threads",
    "stable_scores",
]
