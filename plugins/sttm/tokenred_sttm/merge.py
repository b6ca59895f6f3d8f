"""The STTM pipeline as pure tensor functions: prepare once, cut at any thresholds.

:func:`prepare` does everything that does not depend on the thresholds (the feature
pyramid and the stop scores: of the parents a walk at ``reach`` visits, or of all of
them for the search); :func:`evaluate` cuts the quadtree at ``tau_s`` and runs the
temporal stage at ``tau_t``; :func:`finalize` averages the groups. The budget search
calls :func:`evaluate` repeatedly on one preparation with a pair-cosine cache
(:func:`with_cache`). Where the two modes differ, the functions read
:class:`tokenred_sttm.modes.Rules` instead of branching on the mode.

Deviations from reference (besides those listed in :mod:`tokenred_sttm.quadtree`
and :mod:`tokenred_sttm.temporal`):
    * ``reference`` mode keeps the reference's switch-off of the temporal stage for
      ``tau_t <= 0``; ``fixed`` mode treats every ``tau_t`` as a threshold.
    * ``weighted_avg`` (area-weighted means, sum pooling) works on every grid; the
      reference's sum pooling fails when the two axes differ in parity.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenred_sttm.modes import Rules, STTMMode, rules_of
from tokenred_sttm.quadtree import (
    Lattice,
    Partition,
    build_lattice,
    build_pyramid,
    compact,
    node_features,
    partition,
    patch_scores,
    stop_scores,
)
from tokenred_sttm.temporal import (
    aggregate,
    candidate_pairs,
    finest_pair_cosines,
    n_pair_keys,
    pair_cosines,
    pair_keys,
    propagate_count,
)

__all__ = [
    "Evaluation",
    "MergeOptions",
    "Prepared",
    "STTMMode",
    "STTMResult",
    "evaluate",
    "extend",
    "finalize",
    "prepare",
    "sttm_merge",
    "with_cache",
]


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

    @property
    def rules(self) -> Rules:
        """The mode's behaviour rules."""
        return rules_of(self.reference)


@dataclass(frozen=True)
class Prepared:
    """One video ready to be cut at any thresholds up to ``reach``.

    Attributes:
        grid: ``[T, H, W, C]`` input features.
        lattice: The quadtree levels used.
        levels: Level features, root first (the finest is ``grid``).
        pscores: ``[L-1, T, H, W]`` stop score of each patch's ancestor per level
            (NaN where the walk up to ``reach`` never scores it).
        scores: The per-level stop scores ``[T, h, w]`` behind ``pscores``.
        options: The switches.
        reach: Largest ``tau_s`` the scores serve (None: any).
        cache: ``[K]`` float32 pair cosines by :func:`pair_keys` key, NaN where not
            yet computed, or None to compute each cut's cosines afresh.
        hints: Host-side guesses carried between the cuts of one video (the
            rounds the last labelling took, see :func:`group`); they only decide
            when the host reads the device, never a result.
    """

    grid: Tensor
    lattice: Lattice
    levels: list[Tensor]
    pscores: Tensor
    scores: list[Tensor]
    options: MergeOptions
    reach: float | None = None
    cache: Tensor | None = None
    hints: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def level_dtype(self) -> torch.dtype:
        """Dtype of pooled levels and accumulators (model dtype in reference mode)."""
        dtype: torch.dtype = self.options.rules.level_dtype(self.grid.dtype)
        return dtype

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
        pairs: ``(dst, src, sims)`` of the candidate pairs, or None when the
            temporal stage did not run.
    """

    tau_s: float
    tau_t: float
    part: Partition
    rep: Tensor
    rounds: int
    n_out: int
    pairs: tuple[Tensor, Tensor, Tensor] | None = None


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


def prepare(
    grid: Tensor, options: MergeOptions, reach: float | None = None
) -> Prepared:
    """Build the pyramid and the stop scores of a ``[T, H, W, C]`` video.

    Args:
        grid: ``[T, H, W, C]`` features.
        options: The switches.
        reach: Largest ``tau_s`` that will be cut: only the parents the quadtree
            walk reaches at that threshold are scored (what the reference's walk
            touches). None scores every parent, for the budget search.
    """
    grid = grid.contiguous()  # strided inputs would make every gather slow
    t, h, w, _ = grid.shape
    rules = options.rules
    lattice = build_lattice(
        h,
        w,
        options.root_level,
        spatial=options.spatial,
        reference=rules.width_one_is_flat,
        device=grid.device,
    )
    dtype = rules.level_dtype(grid.dtype)
    levels = build_pyramid(grid, lattice, sums=options.weighted, dtype=dtype)
    scores = stop_scores(
        levels,
        lattice,
        options.head_dim,
        read_missing=rules.read_missing_slots,
        reach=reach,
    )
    pscores = patch_scores(scores, lattice, t)
    return Prepared(grid, lattice, levels, pscores, scores, options, reach)


def extend(prep: Prepared, reach: float | None) -> Prepared:
    """Return ``prep`` able to serve thresholds up to ``reach`` (None: any).

    Scores only the parents that the walk reaches at ``reach`` but did not at the
    old reach, so a search that raises its threshold step by step pays for the
    parents it needs and no more.
    """
    if prep.reach is None or (reach is not None and reach <= prep.reach):
        return prep
    rules = prep.options.rules
    scores = stop_scores(
        prep.levels,
        prep.lattice,
        prep.options.head_dim,
        read_missing=rules.read_missing_slots,
        reach=reach,
        known=prep.scores,
    )
    pscores = patch_scores(scores, prep.lattice, prep.grid.shape[0])
    return dataclasses.replace(prep, pscores=pscores, scores=scores, reach=reach)


def with_cache(prep: Prepared) -> Prepared:
    """Attach an empty pair-cosine cache, for callers that evaluate many cuts.

    The cache holds one float32 per possible nested pair (about ``2L - 1`` times
    the patch count); each cut then computes only the pairs no earlier cut met.
    When a cut misses many pairs of two finest patches, the whole block of those is
    filled at once by one streaming pass over the frames (no gathers).
    """
    if prep.cache is not None or not may_pair(prep):
        return prep
    size = n_pair_keys(prep.lattice, prep.grid.shape[0])
    cache = torch.full((size,), math.nan, device=prep.grid.device)
    return dataclasses.replace(prep, cache=cache)


def _finest_block(prep: Prepared) -> int:
    """First key of the pairs of two finest patches (the last key block)."""
    t, h, w, _ = prep.grid.shape
    first: int = n_pair_keys(prep.lattice, t) - (t - 1) * h * w
    return first


def may_pair(prep: Prepared) -> bool:
    return prep.options.temporal and prep.grid.shape[0] >= 2


def temporal_active(prep: Prepared, tau_t: float) -> bool:
    """Whether the temporal stage runs at ``tau_t``.

    It is skipped when no cosine can reach ``tau_t`` (above 1 plus rounding), which
    changes no result and saves the pair cosines.
    """
    if not may_pair(prep) or tau_t > 1.0 + 1e-3:
        return False
    return not prep.options.rules.temporal_off(tau_t)


def cut(prep: Prepared, tau_s: float) -> Partition:
    """Cut the quadtree at ``tau_s`` (within the preparation's reach)."""
    if prep.reach is not None and tau_s > prep.reach:
        msg = f"tau_s={tau_s} exceeds the preparation's reach {prep.reach}"
        raise ValueError(msg)
    return partition(prep.pscores, prep.lattice, tau_s)


def pair_similarities(prep: Prepared, part: Partition) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(dst, src, sims)`` of the partition's nested pairs.

    Cosines come from the cache where an earlier cut computed them.
    """
    dst, src = candidate_pairs(part)
    opts = prep.options
    if prep.cache is None:
        sims = pair_cosines(
            prep.levels, prep.lattice, part, dst, src, opts.head_dim, prep.level_dtype
        )
        return dst, src, sims
    keys = pair_keys(part, prep.lattice)
    sims = prep.cache[keys]
    start = _finest_block(prep)
    missing = torch.isnan(sims)
    counts = torch.stack([missing.sum(), (missing & (keys >= start)).sum()])
    n_miss, finest_missing = counts.tolist()
    if 4 * finest_missing > prep.cache.shape[0] - start:
        prep.cache[start:] = finest_pair_cosines(prep.grid, opts.head_dim)
        sims = prep.cache[keys]
        missing = torch.isnan(sims)
        n_miss = int(missing.sum())
    if n_miss:
        miss = compact(missing, n_miss)
        fresh = pair_cosines(
            prep.levels,
            prep.lattice,
            part,
            dst[miss],
            src[miss],
            opts.head_dim,
            prep.level_dtype,
        )
        sims[miss] = fresh
        prep.cache[keys[miss]] = fresh
    return dst, src, sims


def label(
    prep: Prepared, n: int, dst: Tensor, src: Tensor, guess: int | None = None
) -> tuple[Tensor, int, int]:
    """Label ``n`` nodes along the edges ``dst -> src``: ``(rep, rounds, n_out)``.

    The host first reads the labelling after ``guess`` rounds; by default as many
    as the last cut of this video took (the search cuts one video many times,
    with similar round counts), or, at the first cut, ``log2(T) + 1`` rounds, two
    more for full components (pointer jumping needs about that many on chains of
    ``T`` frames): usually a single read-back.
    """
    exhaustive = not prep.options.rules.early_stop
    if guess is None:
        # Full components take about two rounds more than the early stop.
        first = prep.grid.shape[0].bit_length() + (2 if exhaustive else 0)
        guess = prep.hints.get("rounds", first)
    out: tuple[Tensor, int, int] = propagate_count(
        dst, src, n, exhaustive=exhaustive, first_check=guess
    )
    return out


def group(
    prep: Prepared, n: int, pairs: tuple[Tensor, Tensor, Tensor], tau_t: float
) -> tuple[Tensor, int, int]:
    """Merge nodes whose pair cosine reaches ``tau_t``: ``(rep, rounds, n_out)``.

    The edge count is read back once and the edges compacted, so the rounds work
    on the edges only (typically a third of the pairs).
    """
    dst, src, sims = pairs
    edge = sims >= tau_t
    at = compact(edge, int(edge.sum()))
    rep, rounds, n_out = label(prep, n, dst[at], src[at])
    prep.hints["rounds"] = rounds
    return rep, rounds, n_out


def evaluate(prep: Prepared, tau_s: float, tau_t: float) -> Evaluation:
    """Cut the quadtree at ``tau_s`` and merge across frames at ``tau_t``."""
    part = cut(prep, tau_s)
    n = part.n_nodes
    if not temporal_active(prep, tau_t):
        rep = torch.arange(n, device=prep.grid.device)
        return Evaluation(tau_s, tau_t, part, rep, 0, n)
    pairs = pair_similarities(prep, part)
    rep, rounds, n_out = group(prep, n, pairs, tau_t)
    return Evaluation(tau_s, tau_t, part, rep, rounds, n_out, pairs)


def finalize(prep: Prepared, ev: Evaluation) -> STTMResult:
    """Average each group into its representative and map patches to outputs."""
    part = ev.part
    node_area = part.area.reshape(-1)[part.tl_index]
    weights = node_area if prep.options.weighted else torch.ones_like(node_area)

    def gather(ids: Tensor, counts: list[int]) -> Tensor:
        dtype = prep.level_dtype
        feats: Tensor = node_features(
            prep.levels, prep.lattice, part, dtype, ids, counts
        )
        return feats

    feats, keep = aggregate(
        gather,
        weights,
        ev.rep,
        part.level.reshape(-1)[part.tl_index],
        prep.lattice.n_levels,
        acc_dtype=prep.level_dtype,
        out_dtype=prep.grid.dtype,
        stepwise=prep.options.rules.model_dtype,
        unit_weights=not prep.options.weighted,
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

    Only the parents the quadtree walk reaches at ``tau_s`` are scored.

    Args:
        grid: ``[T, H, W, C]`` features (projector outputs or hidden states).
        tau_s: Spatial threshold: a node is kept when its cosine to every child
            reaches it.
        tau_t: Temporal threshold: nested nodes of adjacent frames merge when their
            cosine reaches it.
        options: Switches; defaults to the paper's setup in reference mode.
    """
    prep = prepare(grid, options or MergeOptions(), reach=tau_s)
    return finalize(prep, evaluate(prep, tau_s, tau_t))
