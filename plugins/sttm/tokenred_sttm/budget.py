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
* :func:`fit_thresholds` / :func:`calibrate` bisect one ``lam`` for a whole subset
  of a dataset so that the *average* retained ratio lands at or just below a
  target, which is how the paper's thresholds were chosen, by hand.
* :func:`merge_adjacent` is the last resort when the budget is below what the tree
  can reach (fewer tokens than root nodes in the first frame): it merges the most
  similar neighbours in output order until the budget is met.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tokenred import ConfigError, Reduction
from tokenred_sttm.merge import (
    Evaluation,
    MergeOptions,
    Prepared,
    STTMMode,
    evaluate,
    prepare,
    with_tables,
)
from tokenred_sttm.quadtree import head_dot, unit

if TYPE_CHECKING:
    from tokenred import VisualTokens
    from tokenred_sttm.reducer import STTMConfig

log = logging.getLogger(__name__)

LAMBDA_LOW = -1.0
"""Schedule parameter that merges as much as the tree allows."""
TAU_T_FLOOR = 1e-3
"""Smallest ``tau_t`` the schedule produces."""


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
        evaluation: The groups at the chosen thresholds.
        lam: Schedule parameter chosen.
        evals: Number of STTM evaluations run.
    """

    evaluation: Evaluation
    lam: float
    evals: int


def search(prep: Prepared, budget: int, *, gap: float, iters: int) -> SearchOutcome:
    """Bisect the schedule for the largest output that fits ``budget``.

    When even ``LAMBDA_LOW`` exceeds the budget, its evaluation is returned and the
    caller must merge further (:func:`merge_adjacent`).

    Args:
        prep: The prepared video.
        budget: Maximum output tokens.
        gap: Schedule gap ``tau_s - tau_t``.
        iters: Bisection steps after the two end points.
    """
    hi = lambda_high(gap)
    if prep.n_tokens <= budget:
        return SearchOutcome(evaluate(prep, *schedule(hi, gap)), hi, 1)
    prep = with_tables(prep)
    lo = LAMBDA_LOW
    best = evaluate(prep, *schedule(lo, gap))
    best_lam, evals = lo, 1
    if best.n_out > budget:
        return SearchOutcome(best, best_lam, evals)
    for _ in range(iters):
        if best.n_out == budget:
            break
        mid = 0.5 * (lo + hi)
        ev = evaluate(prep, *schedule(mid, gap))
        evals += 1
        if ev.n_out <= budget:
            lo = mid
            if ev.n_out >= best.n_out:
                best, best_lam = ev, mid
        else:
            hi = mid
    return SearchOutcome(best, best_lam, evals)


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


def fit_thresholds(
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
    preps = [with_tables(prepare(tok.to_grid(), options)) for tok in token_sets]
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


def calibration(
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
    cal = fit_thresholds(
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


def calibrate(
    token_sets: Sequence[VisualTokens],
    target_ratio: float,
    config: STTMConfig,
    *,
    head_dim: int | None = None,
) -> tuple[float, float]:
    """Return ``(tau_s, tau_t)`` of :func:`calibration`.

    The runner (``tokenred calibrate``) or a notebook calls this on the original
    visual tokens of a few videos, then runs ``sttm`` in ``budget_mode=threshold``
    with the result, as the paper did by hand.
    """
    cal = calibration(token_sets, target_ratio, config, head_dim=head_dim)
    return cal.tau_s, cal.tau_t
