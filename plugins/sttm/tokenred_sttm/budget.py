"""Meeting token budgets with STTM's thresholds.

The paper hand-tunes ``tau_s`` and ``tau_t`` per model and dataset to land near an
average retained ratio. tokenred also needs a hard per-video cap, so both thresholds
follow one parameter ``lam`` (the *schedule*)::

    tau_s = lam
    tau_t = max(lam - gap, TAU_T_FLOOR)        # gap defaults to 0.25

``gap`` is the median ``tau_s - tau_t`` of the paper's released settings (0.15 to
0.35). A smaller ``lam`` merges more. At ``LAMBDA_LOW = -1`` every spatial parent
stops at the root level and every nested pair with a positive cosine is an edge; at
:func:`lambda_high` both thresholds exceed 1 and nothing merges. The floor keeps
``tau_t`` positive, so anti-correlated tokens never merge and the reference's
"``tau_t <= 0`` switches the temporal stage off" rule never fires inside the search.

* :func:`search` bisects ``lam`` for one video so that the output never exceeds the
  budget and is the largest count seen that fits (the count is a step function of
  ``lam``, almost always non-decreasing).
* :func:`calibrate` (the one calibration entry point, used by
  ``STTMReducer.calibrate`` and ``tokenred calibrate``) bisects one ``lam`` for a
  whole subset of a dataset so that the *average* retained ratio lands at or just
  below a target, which is how the paper's thresholds were chosen, by hand.
* :func:`merge_adjacent` is the last resort when the budget is below what the tree
  can reach (fewer tokens than root nodes in the first frame): it merges the most
  similar neighbours in output order until the budget is met.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokenred import ConfigError, Reduction
from tokenred_sttm.merge import (
    Evaluation,
    MergeOptions,
    Prepared,
    cut,
    evaluate,
    extend,
    label,
    may_pair,
    pair_similarities,
    prepare,
    with_cache,
)
from tokenred_sttm.modes import STTMMode
from tokenred_sttm.quadtree import (
    compact,
    count_nodes,
    head_dot,
    node_intervals,
    partition_at,
    unit,
)

if TYPE_CHECKING:
    from tokenred import VisualTokens
    from tokenred_sttm.reducer import STTMConfig

log = logging.getLogger(__name__)

LAMBDA_LOW = -1.0
"""Schedule parameter that merges as much as the tree allows."""
TAU_T_FLOOR = 1e-3
"""Smallest ``tau_t`` the schedule produces."""
SCHEDULE_RESOLUTION = 1e-4
"""Bracket width at which the schedule bisection stops (the fill does the rest)."""


class BudgetMode(str, enum.Enum):
    """How the reducer meets ``ctx.budget``."""

    THRESHOLD = "threshold"
    """Use ``tau_s``/``tau_t`` as given; search only when they exceed the budget."""
    SEARCH = "search"
    """Bisect the schedule per video to land just below the budget."""


class Average(str, enum.Enum):
    """How :func:`calibrate` averages retained ratios over videos."""

    SAMPLE = "sample"
    """Mean of per-video ratios (the paper's R.NV)."""
    TOTAL = "total"
    """Total output tokens over total input tokens."""


def schedule(lam: float, gap: float) -> tuple[float, float]:
    """Return ``(tau_s, tau_t)`` for the schedule parameter ``lam``."""
    return lam, max(lam - gap, TAU_T_FLOOR)


def lambda_high(gap: float) -> float:
    """Return a ``lam`` at which both thresholds exceed 1 (nothing merges)."""
    return 1.01 + max(gap, 0.0)


@dataclass(frozen=True)
class SearchOutcome:
    """Result of a per-video search.

    Attributes:
        evaluation: The groups at the chosen thresholds, after the fill.
        lam: Schedule parameter of the bracket's fitting end.
        evals: Number of STTM evaluations run (cuts of the tree).
        detached: Group members the fill split off into their own tokens.
        split: Spatial nodes the fill refined into their children.
    """

    evaluation: Evaluation
    lam: float
    evals: int
    detached: int = 0
    split: int = 0


def search(
    prep: Prepared,
    budget: int,
    *,
    gap: float,
    iters: int,
    start: float | None = None,
) -> SearchOutcome:
    """Find the groups of exactly ``budget`` tokens (or as close below as possible).

    Two steps. The *schedule* step brackets ``lam`` from ``start`` (steps of 0.02,
    doubling, up or down the schedule) and then bisects the bracket (at most
    ``iters`` steps, fewer once it is narrow) for ``lo < hi`` whose counts fit and
    exceed the budget; it fixes the balance between the stages. The *fill* then
    lands on the budget inside the bracket (:func:`fill`). When even ``LAMBDA_LOW``
    exceeds the budget, its evaluation is returned and the caller must merge
    further (:func:`merge_adjacent`).

    The quadtree is scored lazily: each step extends the walk to its own ``tau_s``
    (:func:`tokenred_sttm.merge.extend`), so the search scores no more parents than
    a fixed-threshold call at ``hi`` would, and pair cosines are cached across
    steps (:func:`tokenred_sttm.merge.with_cache`).

    Args:
        prep: The prepared video, at any reach.
        budget: Maximum output tokens.
        gap: Schedule gap ``tau_s - tau_t``.
        iters: Most bisection steps after the bracket is found.
        start: Schedule parameter tried first; None derives it from the budget
            (:func:`first_guess`).
    """
    top = lambda_high(gap)
    if prep.n_tokens <= budget:
        part = partition_at(
            torch.full_like(
                prep.grid[..., 0], prep.lattice.n_levels - 1, dtype=torch.long
            ),
            prep.lattice,
        )
        rep = torch.arange(part.n_nodes, device=prep.grid.device)
        tau_s, tau_t = schedule(top, gap)
        return SearchOutcome(
            Evaluation(tau_s, tau_t, part, rep, 0, part.n_nodes), top, 0
        )
    prep = with_cache(prep)
    evals = 0

    def run(lam: float) -> Evaluation:
        nonlocal prep, evals
        tau_s, tau_t = schedule(lam, gap)
        prep = extend(prep, tau_s)
        evals += 1
        return evaluate(prep, tau_s, tau_t)

    if start is None:
        start = first_guess(prep, budget)
    lam = min(max(start, LAMBDA_LOW), top)
    first = run(lam)
    step = 0.02
    if first.n_out <= budget:
        lo, best, hi = lam, first, top  # the count at ``top`` is N > budget
        while lo + step < top:
            ev = run(lo + step)
            if ev.n_out > budget:
                hi = lo + step
                break
            lo, best = lo + step, ev
            step *= 2
    else:
        hi = lam
        while True:
            lam = max(hi - step, LAMBDA_LOW)
            ev = run(lam)
            if ev.n_out <= budget:
                lo, best = lam, ev
                break
            if lam == LAMBDA_LOW:  # below the tree's floor
                return SearchOutcome(ev, lam, evals)
            hi, step = lam, step * 2
    for _ in range(iters):
        if best.n_out == budget or hi - lo < SCHEDULE_RESOLUTION:
            break
        mid = 0.5 * (lo + hi)
        ev = run(mid)
        if ev.n_out <= budget:
            lo, best = mid, ev
        else:
            hi = mid
    if best.n_out == budget:
        return SearchOutcome(best, lo, evals)
    prep = extend(prep, hi)  # the fill reads node counts up to ``hi``
    ev, detached, split = fill(prep, best, hi, budget)
    return SearchOutcome(ev, lo, evals, detached, split)


def first_guess(prep: Prepared, budget: int) -> float:
    """Guess the schedule parameter that lands near ``budget``, for free.

    A probe above the answer cuts a finer tree than the answer needs (more parents
    scored, more pair cosines), which is what a search pays for; a probe below it
    is cheap. The root level's stop scores are computed by every preparation, so
    their quantile at ``0.5 + 0.7 * kept`` (``kept = budget / N``) is a free guess:
    about half the area stays in whole roots for a small budget, more for a large
    one. Falls back to the paper's 0.85 when no root score exists.
    """
    roots = prep.pscores[0].reshape(-1) if prep.pscores.shape[0] else None
    if roots is None:
        return 0.85
    roots = roots[torch.isfinite(roots)]
    if roots.numel() == 0:
        return 0.85
    kept = budget / prep.n_tokens
    q = min(0.5 + 0.7 * kept, 1.0)
    k = min(max(math.ceil(q * roots.numel()), 1), roots.numel())
    return float(torch.kthvalue(roots, k).values)


def fill(
    prep: Prepared, fits: Evaluation, lam_hi: float, budget: int
) -> tuple[Evaluation, int, int]:
    """Refine the groups of a fitting cut until they number exactly ``budget``.

    The partitions of neighbouring thresholds are nested, so the fill refines
    rather than re-cuts:

    1. *Spatial*: take the coarsest quadtree cut with ``tau_s`` in
       ``[fits.tau_s, lam_hi]`` that has at least ``budget`` nodes (read off the
       sorted node intervals, no cut needed).
    2. *Temporal*: on that partition, raise ``tau_t`` to the highest of the pair
       cosines (bisection over their sorted values) at which the groups still fit.
    3. *Detach*: split off the ``budget - count`` group members whose strongest
       merge is the weakest (ties: earliest node), one token each.

    Without a temporal stage, step 2 and 3 become a spatial refinement: the
    least-similar nodes of the last fitting cut split into their children, which
    lands within two tokens. If the temporal stage cannot bring the partition of
    step 1 under the budget, ``fits`` is detached as far as it allows.

    Returns:
        The evaluation, the members detached and the nodes split.
    """
    low, high = node_intervals(prep.pscores, prep.lattice)
    taus = _breakpoints(low, high, fits.tau_s, lam_hi)
    counts = count_nodes(low, high, taus)
    reached = torch.nonzero(counts >= budget).squeeze(1)
    if not may_pair(prep) or reached.numel() == 0:
        return _spatial_fill(prep, fits, taus, counts, budget)
    tau_s = float(taus[reached[0]])
    part = fits.part if tau_s == fits.tau_s else cut(prep, tau_s)
    pairs = pair_similarities(prep, part)
    recut = _recut(prep, part.n_nodes, pairs, budget)
    if recut is None:  # the temporal stage cannot bring this cut under budget
        if fits.pairs is None:
            return fits, 0, 0
        part, pairs = fits.part, fits.pairs
        rep, tau_t, rounds, tau_s = fits.rep, fits.tau_t, fits.rounds, fits.tau_s
        n_out = fits.n_out
    else:
        rep, tau_t, rounds, n_out = recut
    rep, detached = _detach(rep, n_out, pairs, tau_t, budget)
    n_out += detached
    return Evaluation(tau_s, tau_t, part, rep, rounds, n_out, pairs), detached, 0


def _breakpoints(low: Tensor, high: Tensor, start: float, stop: float) -> Tensor:
    """Return the sorted thresholds in ``[start, stop]`` where the node count moves.

    The count of ``low < tau <= high`` changes just above a ``low`` and just above
    a ``high``; ``start`` itself is included.
    """
    vals = torch.cat([low, high])
    vals = vals[torch.isfinite(vals)]
    vals = torch.nextafter(vals, torch.full_like(vals, math.inf))
    vals = vals[(vals > start) & (vals <= stop)]
    first = torch.tensor([start], dtype=vals.dtype, device=vals.device)
    out: Tensor = torch.unique(torch.cat([first, vals]))
    return out


def _recut(
    prep: Prepared, n: int, pairs: tuple[Tensor, Tensor, Tensor], budget: int
) -> tuple[Tensor, float, int, int] | None:
    """Return ``(rep, tau_t, rounds, n_out)`` at the highest ``tau_t`` that fits.

    ``tau_t`` runs over the distinct pair cosines of at least ``TAU_T_FLOOR``; each
    bisection step is one label propagation. The pairs are sorted by cosine once,
    so the edges at any of those values are a prefix of them, whose lengths are
    read back together: a step then reads the device only for its count. None
    when all of them together still exceed the budget.
    """
    dst, src, sims = pairs
    if n <= budget:
        return torch.arange(n, device=sims.device), lambda_high(0.0), 0, n
    key = sims.nan_to_num(nan=-math.inf)  # a NaN cosine is never an edge
    order = torch.sort(key, descending=True, stable=True).indices
    ordered = key[order]  # [P] descending
    # [P] whether a sorted pair is the last one of its cosine (and reaches the floor)
    last = torch.ones_like(ordered, dtype=torch.bool)
    last[:-1] = ordered[:-1] != ordered[1:]
    last &= ordered >= TAU_T_FLOOR
    n_vals = int(last.sum())
    if n_vals == 0:
        return None
    ends = compact(last, n_vals)  # [V] per distinct cosine, its last sorted pair
    reach = ends.tolist()  # pairs at or above the j-th highest cosine, minus one
    dst, src = dst[order], src[order]
    guess = None  # each step first reads back after the rounds of the last

    def at(j: int) -> tuple[Tensor, int, int]:
        nonlocal guess
        k = reach[j] + 1
        out: tuple[Tensor, int, int] = label(prep, n, dst[:k], src[:k], guess)
        guess = out[1] if j < n_vals - 1 else None
        return out

    low, high = -1, n_vals - 1  # count(low) > budget, count(high) <= budget
    best = None
    # Full connected components only merge further as edges are added, so when
    # any step fits, all the edges together fit too: that labelling (the
    # slowest, its chains are the longest) is then only needed if no step fits.
    # The reference's early stop has no such guarantee, so it is tested first.
    if prep.options.rules.early_stop:
        best = at(high)
        if best[2] > budget:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        cand = at(mid)
        if cand[2] <= budget:
            high, best = mid, cand
        else:
            low = mid
    if best is None:
        best = at(high)
        if best[2] > budget:
            return None
    rep, rounds, n_out = best
    return rep, float(ordered[reach[high]]), rounds, n_out


def _detach(
    rep: Tensor,
    n_out: int,
    pairs: tuple[Tensor, Tensor, Tensor],
    tau_t: float,
    budget: int,
) -> tuple[Tensor, int]:
    """Make group members their own tokens until there are ``budget`` groups.

    A representative is its group's smallest id and no member represents another,
    so each detached member adds exactly one token. Members go in order of their
    strongest merge cosine (weakest first), ties by node id. ``n_out`` is the
    number of groups of ``rep``.
    """
    n = rep.shape[0]
    idx = torch.arange(n, device=rep.device)
    want = budget - n_out
    if want <= 0 or n_out == n:
        return rep, 0
    members = compact(rep != idx, n - n_out)
    dst, src, sims = pairs
    strong = torch.where(sims >= tau_t, sims, -math.inf)  # -inf: not an edge
    strength = torch.full((n,), -math.inf, device=rep.device)
    strength.scatter_reduce_(0, dst, strong, reduce="amax")
    strength.scatter_reduce_(0, src, strong, reduce="amax")
    order = members[torch.sort(strength[members], stable=True).indices]
    chosen = order[:want]
    rep = rep.clone()
    rep[chosen] = chosen
    return rep, min(want, n - n_out)


def _spatial_fill(
    prep: Prepared, fits: Evaluation, taus: Tensor, counts: Tensor, budget: int
) -> tuple[Evaluation, int, int]:
    """Split the least-similar nodes of the last fitting cut toward ``budget``.

    Used without a temporal stage: the count is the node count, which jumps by 1-3
    (or more on ties) from one breakpoint to the next.
    """
    fit = torch.nonzero(counts <= budget).squeeze(1)
    over = torch.nonzero(counts > budget).squeeze(1)
    if fit.numel() == 0 or over.numel() == 0 or fits.pairs is not None:
        return fits, 0, 0
    tau_a, tau_b = float(taus[fit[-1]]), float(taus[over[0]])
    part_a, part_b = cut(prep, tau_a), cut(prep, tau_b)
    n_a = part_a.n_nodes
    # Nodes of part_b inside each node of part_a (part_b refines part_a).
    pieces = torch.zeros(n_a, dtype=torch.long, device=part_a.node.device)
    pieces.index_add_(
        0,
        part_a.node[part_b.is_top_left],
        torch.ones_like(part_a.node[part_b.is_top_left]),
    )
    gain = pieces - 1
    level = part_a.level.reshape(-1)[part_a.tl_index]
    y, x = part_a.tlbr[:, 1], part_a.tlbr[:, 2]
    # The score that kept each node whole: lower = less similar, split first.
    top = max(prep.pscores.shape[0] - 1, 0)
    score = prep.pscores[level.clamp(max=top), part_a.tlbr[:, 0], y, x]
    cand = torch.nonzero(gain > 0).squeeze(1)
    order = cand[torch.sort(score[cand], stable=True).indices]
    left = budget - n_a
    n_take = int((torch.cumsum(gain[order], 0) <= left).sum())
    take, rest = order[:n_take], order[n_take:]
    left -= int(gain[take].sum())
    extra = []
    for g in (1, 2):  # top up with the nodes that add one or two tokens
        small = rest[gain[rest] == g][: left // g]
        extra.append(small)
        left -= g * small.shape[0]
        rest = rest[gain[rest] != g]
    chosen = torch.cat([take, *extra])
    split = torch.zeros(n_a, dtype=torch.bool, device=pieces.device)
    split[chosen] = True
    lvl = torch.where(split[part_a.node], part_b.level, part_a.level)
    part = partition_at(lvl, prep.lattice)
    rep = torch.arange(part.n_nodes, device=lvl.device)
    ev = Evaluation(tau_a, fits.tau_t, part, rep, 0, part.n_nodes)
    return ev, 0, int(chosen.shape[0])


def merge_adjacent(tokens: VisualTokens, budget: int) -> Reduction:
    """Merge the most similar neighbours of a token sequence down to ``budget``.

    Picks the ``N - budget`` adjacent pairs with the highest float32 cosine (ties to
    the earlier pair) and merges each run of joined tokens with a size-weighted
    mean, so the output keeps the sequence order and has exactly ``budget`` tokens.
    Returns the tokens unchanged when they already fit.
    """
    n = tokens.n
    dev = tokens.device
    if n <= budget:
        return Reduction.from_keep_index(tokens, torch.arange(n, device=dev))
    u = unit(tokens.features, None, temporal=True)  # [N, C]
    sims = head_dot(u[:-1] * u[1:], None)  # [N-1] cosine of each neighbour pair
    order = torch.sort(sims, descending=True, stable=True).indices
    joined = torch.zeros(n, dtype=torch.bool, device=dev)
    joined[order[: n - budget] + 1] = True  # token i+1 joins token i
    groups = torch.cumsum((~joined).to(torch.long), 0) - 1
    return Reduction.from_assignment(tokens, groups, mean="size")


def compose(first: Reduction, second: Reduction) -> Reduction:
    """Chain two reductions: ``second`` applied to the output of ``first``."""
    a = first.assignment
    kept = a >= 0
    out = torch.full_like(a, -1)
    out[kept] = second.assignment[a[kept]]
    info = {**first.info, **second.info}
    return Reduction(tokens=second.tokens, assignment=out, info=info)


@dataclass(frozen=True)
class Calibration:
    """Thresholds fitted on a subset of a dataset.

    Attributes:
        tau_s: Spatial threshold.
        tau_t: Temporal threshold.
        lam: Schedule parameter.
        ratio: Average retained ratio those thresholds give on the subset.
    """

    tau_s: float
    tau_t: float
    lam: float
    ratio: float


def _fit_schedule(
    token_sets: Sequence[VisualTokens],
    target_ratio: float,
    options: MergeOptions,
    *,
    gap: float = 0.25,
    iters: int = 14,
    average: Average = Average.SAMPLE,
) -> Calibration:
    """Fit one schedule point whose average retained ratio is at most the target.

    Args:
        token_sets: Original (unreduced) visual tokens of several videos.
        target_ratio: Target average ``N_out / N_in`` in ``(0, 1]``.
        options: STTM switches (mode, root level, stages, ...).
        gap: Schedule gap.
        iters: Bisection steps.
        average: Per-video mean of ratios, or ratio of totals.
    """
    average = Average(average)
    preps = [with_cache(prepare(tok.to_grid(), options)) for tok in token_sets]
    n_in = [p.n_tokens for p in preps]

    def ratio(lam: float) -> float:
        outs = [evaluate(p, *schedule(lam, gap)).n_out for p in preps]
        if average is Average.TOTAL:
            return float(sum(outs) / sum(n_in))
        return float(sum(o / n for o, n in zip(outs, n_in)) / len(preps))

    lo, hi = LAMBDA_LOW, lambda_high(gap)
    r_lo = ratio(lo)
    if r_lo > target_ratio:
        log.warning(
            "sttm calibration: the tree cannot go below an average ratio of %.4f "
            "(target %.4f); returning the most aggressive thresholds",
            r_lo,
            target_ratio,
        )
    best = r_lo
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        r = ratio(mid)
        if r <= target_ratio:
            lo, best = mid, r
        else:
            hi = mid
    tau_s, tau_t = schedule(lo, gap)
    return Calibration(tau_s=tau_s, tau_t=tau_t, lam=lo, ratio=best)


def resolve_options(
    config: STTMConfig, ctx_head_dim: int | None, channels: int
) -> MergeOptions:
    """Turn a reducer config into merge switches, resolving the mode defaults.

    Raises:
        ConfigError: If per-head similarity has no usable head width.
    """
    reference = STTMMode(config.mode) is STTMMode.REFERENCE
    weighted = (not reference) if config.weighted_avg is None else config.weighted_avg
    head_dim: int | None = None
    if config.sim_per_head:
        head_dim = config.head_dim if config.head_dim is not None else ctx_head_dim
        if head_dim is None or head_dim <= 0 or channels % head_dim:
            msg = (
                f"reducer.sim_per_head: head width {head_dim} does not divide the "
                f"{channels} feature channels; set reducer.head_dim to a divisor "
                "of C or run through an adapter that provides the model's head_dim"
            )
            raise ConfigError(msg)
    return MergeOptions(
        reference=reference,
        root_level=config.root_level,
        spatial=config.spatial,
        temporal=config.temporal,
        head_dim=head_dim,
        weighted=weighted,
    )


def calibrate(
    token_sets: Sequence[VisualTokens],
    target_ratio: float,
    config: STTMConfig,
    *,
    head_dim: int | None = None,
) -> Calibration:
    """Fit one schedule point on a subset of a dataset for an average budget.

    The schedule gap, bisection steps and averaging come from the config
    (``search_gap``, ``search_iters``, ``calibration_average``).

    Args:
        token_sets: Original visual tokens of the calibration videos (one model,
            one insertion point: hidden states of layer K for ``in_llm``).
        target_ratio: Target average retained ratio in ``(0, 1]``, e.g. 0.3.
        config: The STTM config (mode, root level, stages, per-head similarity).
        head_dim: The model's head width, used when ``sim_per_head`` is set and
            ``config.head_dim`` is not.

    Raises:
        ConfigError: On an empty subset, reduced tokens or a ratio outside (0, 1].
    """
    if not token_sets or not 0.0 < target_ratio <= 1.0:
        msg = (
            f"sttm calibrate: need at least one video and a target ratio in (0, 1], "
            f"got {len(token_sets)} videos and ratio {target_ratio!r}"
        )
        raise ConfigError(msg)
    if not all(tok.is_original() for tok in token_sets):
        msg = "sttm calibrate: token_sets must be original (unreduced) grid tokens"
        raise ConfigError(msg)
    options = resolve_options(config, head_dim, token_sets[0].channels)
    cal = _fit_schedule(
        token_sets,
        target_ratio,
        options,
        gap=config.search_gap,
        iters=config.search_iters,
        average=Average(config.calibration_average),
    )
    log.info(
        "sttm calibration: tau_s=%.4f tau_t=%.4f give an average ratio of %.4f "
        "(target %.4f) on %d videos",
        cal.tau_s,
        cal.tau_t,
        cal.ratio,
        target_ratio,
        len(token_sets),
    )
    return cal
