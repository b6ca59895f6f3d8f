"""The STTM pipeline as pure tensor functions: prepare once, cut at any thresholds.

:func:`prepare` does everything that does not depend on the thresholds (the feature
pyramid and every parent's stop score); :func:`evaluate` cuts the quadtree at
``tau_s`` and runs the temporal stage at ``tau_t``; :func:`finalize` averages the
groups. The budget search calls :func:`evaluate` repeatedly on one preparation.

Deviations from reference (besides those listed in :mod:`tokenred_sttm.quadtree`
and :mod:`tokenred_sttm.temporal`):
    * ``reference`` mode keeps the reference's switch-off of the temporal stage for
      ``tau_t <= 0``; ``fixed`` mode treats every ``tau_t`` as a threshold.
    * ``weighted_avg`` (area-weighted means, sum pooling) works on every grid; the
      reference's sum pooling fails when the two axes differ in parity.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenred_sttm.quadtree import (
    Lattice,
    Partition,
    build_lattice,
    build_pyramid,
    node_features,
    partition,
    patch_scores,
    stop_scores,
)
from tokenred_sttm.temporal import (
    PairTables,
    aggregate,
    build_pair_tables,
    candidate_pairs,
    pair_similarity,
    propagate,
    table_pairs,
)


class STTMMode(str, enum.Enum):
    """Which behaviour STTM follows."""

    REFERENCE = "reference"
    """The authors' code, quirks included (reproduces published numbers)."""
    FIXED = "fixed"
    """Masked border slots, full connected components, area-weighted means."""


@dataclass(frozen=True)
class MergeOptions:
    """Threshold-independent switches of one STTM run.

    Attributes:
        reference: Reproduce the authors' code (quirks included); False = fixed.
        root_level: Index of the coarsest quadtree level searched.
        spatial: Run the spatial stage.
        temporal: Run the temporal stage.
        head_dim: Per-head similarity width (None = whole vector).
        weighted: Area-weighted means (sum pyramid) instead of plain means.
    """

    reference: bool = True
    root_level: int = 1
    spatial: bool = True
    temporal: bool = True
    head_dim: int | None = None
    weighted: bool = False


@dataclass(frozen=True)
class Prepared:
    """One video ready to be cut at any thresholds.

    Attributes:
        grid: ``[T, H, W, C]`` input features.
        lattice: The quadtree levels used.
        levels: Level features, root first (the finest is ``grid``).
        pscores: ``[L-1, T, H, W]`` stop score of each patch's ancestor per level.
        options: The switches.
        tables: Every potential temporal pair's cosine (see :func:`with_tables`),
            or None to compute the cosines of each cut directly.
    """

    grid: Tensor
    lattice: Lattice
    levels: list[Tensor]
    pscores: Tensor
    options: MergeOptions
    tables: PairTables | None = None

    @property
    def level_dtype(self) -> torch.dtype:
        """Dtype of pooled levels and accumulators (model dtype in reference mode)."""
        return self.grid.dtype if self.options.reference else torch.float32

    @property
    def n_tokens(self) -> int:
        """Number of input tokens ``T*H*W``."""
        t, h, w, _ = self.grid.shape
        return t * h * w


@dataclass(frozen=True)
class Evaluation:
    """The groups found at one pair of thresholds.

    Attributes:
        tau_s: Spatial threshold used.
        tau_t: Temporal threshold used.
        part: The spatial partition.
        rep: ``[Nn]`` representative node of each node.
        rounds: Label-propagation rounds (0 without a temporal stage).
        n_out: Number of groups (output tokens).
    """

    tau_s: float
    tau_t: float
    part: Partition
    rep: Tensor
    rounds: int
    n_out: int


@dataclass(frozen=True)
class STTMResult:
    """STTM's output in the reference's terms, in output order.

    Attributes:
        features: ``[N', C]`` merged tokens, in the input dtype.
        tlbr: ``[N', 5]`` ``(t, y0, x0, y1, x1)`` of each token's representative node.
        sizes: ``[N']`` patches merged into each token.
        assignment: ``[T*H*W]`` output index of every input patch.
        n_spatial: Nodes after the spatial stage.
        rounds: Label-propagation rounds.
    """

    features: Tensor
    tlbr: Tensor
    sizes: Tensor
    assignment: Tensor
    n_spatial: int
    rounds: int


def prepare(grid: Tensor, options: MergeOptions) -> Prepared:
    """Build the pyramid and the stop scores of a ``[T, H, W, C]`` video."""
    t, h, w, _ = grid.shape
    lattice = build_lattice(
        h,
        w,
        options.root_level,
        spatial=options.spatial,
        reference=options.reference,
        device=grid.device,
    )
    dtype = grid.dtype if options.reference else torch.float32
    levels = build_pyramid(grid, lattice, sums=options.weighted, dtype=dtype)
    scores = stop_scores(levels, options.head_dim, reference=options.reference)
    pscores = patch_scores(scores, lattice, t)
    return Prepared(grid, lattice, levels, pscores, options)


def with_tables(prep: Prepared) -> Prepared:
    """Precompute the temporal pair tables, for callers that evaluate many cuts.

    Costs about ``2L - 1`` passes over the video (L levels) once, after which each
    :func:`evaluate` does no feature arithmetic in the temporal stage; a no-op when
    the temporal stage cannot run.
    """
    if prep.tables is not None or not prep.options.temporal or prep.grid.shape[0] < 2:
        return prep
    tables = build_pair_tables(prep.levels, prep.lattice, prep.options.head_dim)
    return dataclasses.replace(prep, tables=tables)


def temporal_active(prep: Prepared, tau_t: float) -> bool:
    """Whether the temporal stage runs at ``tau_t``.

    It is skipped when no cosine can reach ``tau_t`` (above 1 plus rounding), which
    changes no result and saves the pair cosines.
    """
    opts = prep.options
    if not opts.temporal or prep.grid.shape[0] < 2 or tau_t > 1.0 + 1e-3:
        return False
    return not (opts.reference and tau_t <= 0)


def evaluate(prep: Prepared, tau_s: float, tau_t: float) -> Evaluation:
    """Cut the quadtree at ``tau_s`` and merge across frames at ``tau_t``."""
    part = partition(prep.pscores, prep.lattice, tau_s)
    n = part.n_nodes
    rep = torch.arange(n, device=prep.grid.device)
    if not temporal_active(prep, tau_t):
        return Evaluation(tau_s, tau_t, part, rep, 0, n)
    if prep.tables is not None:
        dst, src, sims = table_pairs(prep.tables, part, prep.lattice)
    else:
        feats = node_features(prep.levels, prep.lattice, part, prep.level_dtype)
        dst, src = candidate_pairs(part)
        sims = pair_similarity(feats, dst, src, prep.options.head_dim, owned=True)
        del feats
    edge = sims >= tau_t
    rep, rounds = propagate(
        dst[edge], src[edge], n, exhaustive=not prep.options.reference
    )
    n_out = int((rep == torch.arange(n, device=rep.device)).sum())
    return Evaluation(tau_s, tau_t, part, rep, rounds, n_out)


def finalize(prep: Prepared, ev: Evaluation) -> STTMResult:
    """Average each group into its representative and map patches to outputs."""
    part = ev.part
    node_area = part.area.reshape(-1)[part.tl_index]
    weights = node_area if prep.options.weighted else torch.ones_like(node_area)
    node_feats = node_features(prep.levels, prep.lattice, part, prep.level_dtype)
    feats, keep = aggregate(
        node_feats,
        weights,
        ev.rep,
        acc_dtype=prep.level_dtype,
        out_dtype=prep.grid.dtype,
    )
    out_index = torch.full_like(ev.rep, -1)
    out_index[keep] = torch.arange(keep.shape[0], device=keep.device)
    assignment = out_index[ev.rep[part.node.reshape(-1)]]
    sizes = torch.zeros_like(node_area).index_add_(0, ev.rep, node_area)[keep]
    return STTMResult(
        features=feats,
        tlbr=part.tlbr[keep],
        sizes=sizes,
        assignment=assignment,
        n_spatial=part.n_nodes,
        rounds=ev.rounds,
    )


def sttm_merge(
    grid: Tensor, tau_s: float, tau_t: float, options: MergeOptions | None = None
) -> STTMResult:
    """Run STTM once on a ``[T, H, W, C]`` video at fixed thresholds.

    Args:
        grid: ``[T, H, W, C]`` features (projector outputs or hidden states).
        tau_s: Spatial threshold: a node is kept when its cosine to every child
            reaches it.
        tau_t: Temporal threshold: nested nodes of adjacent frames merge when their
            cosine reaches it.
        options: Switches; defaults to the paper's setup in reference mode.
    """
    prep = prepare(grid, options or MergeOptions())
    return finalize(prep, evaluate(prep, tau_s, tau_t))
