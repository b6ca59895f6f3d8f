"""FLOPs budgets: the kept count whose analytic prefill FLOPs fit a fraction."""

from __future__ import annotations

import pytest

from tokenred.arch import ArchSpec
from tokenred.measure.flops import (
    flops_fraction,
    flops_range,
    prefill_flops,
    reduced_schedule,
    tokens_for_flops,
)


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
@pytest.mark.parametrize("fraction", [0.55, 0.7, 0.9, 1.0])
def test_count_is_the_largest_that_fits(
    toy_arch: ArchSpec, layer: int, fraction: float
) -> None:
    length, n_visual = 1100, 1024
    kept = tokens_for_flops(
        toy_arch, fraction, length=length, n_visual=n_visual, layer=layer
    )
    low, _ = flops_range(toy_arch, length=length, n_visual=n_visual, layer=layer)
    if fraction < low:
        assert kept is None, "an unreachable fraction must give None"
        return
    assert kept is not None
    at = flops_fraction(
        toy_arch, length=length, n_visual=n_visual, layer=layer, kept=kept
    )
    assert at <= fraction, f"kept={kept} costs {at:.4f} > {fraction}"
    if kept < n_visual:
        above = flops_fraction(
            toy_arch, length=length, n_visual=n_visual, layer=layer, kept=kept + 1
        )
        assert above > fraction, "one more token must exceed the fraction"


def test_fraction_one_keeps_everything_and_matches_the_schedule(
    toy_arch: ArchSpec,
) -> None:
    kept = tokens_for_flops(toy_arch, 1.0, length=300, n_visual=256, layer=2)
    assert kept == 256
    sched = reduced_schedule(4, 2, 300, 256, 100)
    assert sched == [300, 300, 144, 144]
    ratio = (
        prefill_flops(toy_arch, sched).total / prefill_flops(toy_arch, [300] * 4).total
    )
    assert ratio == flops_fraction(
        toy_arch, length=300, n_visual=256, layer=2, kept=100
    )


def test_layers_before_k_bound_the_reachable_range(toy_arch: ArchSpec) -> None:
    """At K=2 of 4 layers the first two layers alone cost about half the prefill."""
    low, high = flops_range(toy_arch, length=1100, n_visual=1024, layer=2)
    assert 0.45 < low < 0.55 and high == 1.0
    assert tokens_for_flops(toy_arch, 0.4, length=1100, n_visual=1024, layer=2) is None
    pre_low, _ = flops_range(toy_arch, length=1100, n_visual=1024, layer=0)
    assert pre_low < 0.1, "before the LLM almost any fraction is reachable"
