"""Budgets: the per-video search never exceeds the cap and lands close below it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sttm_inputs import blocky_video, checkerboard
from tokenred_sttm.budget import (
    LAMBDA_LOW,
    calibrate,
    lambda_high,
    schedule,
    search,
)
from tokenred_sttm.merge import MergeOptions, evaluate, prepare
from tokenred_sttm.reducer import STTMConfig, STTMReducer

from tokenred import ReduceContext, VisualTokens, validate_reduction
from tokenred.errors import ConfigError


def _ctx(budget: int) -> ReduceContext:
    return ReduceContext(budget=budget, generator=torch.Generator().manual_seed(0))


def _video(kind: str, grid: tuple[int, int, int], seed: int) -> torch.Tensor:
    t, h, w = grid
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(t, h, w, 8, generator=gen)
    out: torch.Tensor
    if kind == "constant":
        out = torch.randn(8, generator=gen).expand(t, h, w, 8).clone()
        return out
    if kind == "checkerboard":
        out = checkerboard(h, w)[None].expand(t, h, w, 8).clone()
        return out
    out = blocky_video(grid, seed=seed, block=1 + seed % 4)
    return out


PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
"""Hypothesis settings of the property tests: reproducible, no time limit."""


@PROPERTY
@given(
    t=st.integers(1, 4),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    frac=st.floats(0.0, 1.2),
    kind=st.sampled_from(["random", "constant", "checkerboard", "blocky"]),
    mode=st.sampled_from(["reference", "fixed"]),
    budget_mode=st.sampled_from(["search", "threshold"]),
    root=st.integers(0, 3),
    seed=st.integers(0, 1000),
)
def test_never_exceeds_the_budget(
    t: int,
    h: int,
    w: int,
    frac: float,
    kind: str,
    mode: str,
    budget_mode: str,
    root: int,
    seed: int,
) -> None:
    n = t * h * w
    budget = max(1, round(frac * n))
    cfg = STTMConfig(mode=mode, budget_mode=budget_mode, root_level=root)  # type: ignore[arg-type]
    tokens = VisualTokens.from_grid(
        _video(kind, (t, h, w), seed).reshape(n, 8), (t, h, w)
    )
    red = STTMReducer(cfg).reduce(tokens, _ctx(budget))
    validate_reduction(tokens, red, budget, "sttm")
    assert red.n_out <= budget
    if budget >= n and budget_mode == "search":
        assert red.n_out == n, "a budget of N keeps every token"


@pytest.mark.parametrize("reference", [True, False])
@pytest.mark.parametrize("ratio", [0.15, 0.5])
def test_search_lands_as_close_as_a_dense_sweep(reference: bool, ratio: float) -> None:
    grid = blocky_video((5, 14, 14), seed=21)
    prep = prepare(grid, MergeOptions(reference=reference))
    budget = int(ratio * prep.n_tokens)
    found = search(prep, budget, gap=0.25, iters=16)
    lams = torch.linspace(LAMBDA_LOW, lambda_high(0.25), 120).tolist()
    counts = [evaluate(prep, *schedule(lam, 0.25)).n_out for lam in lams]
    best_sweep = max(c for c in counts if c <= budget)
    assert found.evaluation.n_out >= best_sweep, "bisection missed a closer count"
    assert found.evaluation.n_out == budget, "the fill lands on the budget"


def test_threshold_mode_uses_the_thresholds_when_they_fit() -> None:
    grid = blocky_video((4, 14, 14), seed=5)
    tokens = VisualTokens.from_grid(grid.reshape(-1, 8), (4, 14, 14))
    cfg = STTMConfig(budget_mode="threshold", tau_s=0.85, tau_t=0.55)  # type: ignore[arg-type]
    red = STTMReducer(cfg).reduce(tokens, _ctx(tokens.n))
    want = evaluate(prepare(grid, MergeOptions()), 0.85, 0.55)
    assert red.n_out == want.n_out
    assert red.info["budget_capped"] == 0.0 and red.info["tau_s"] == 0.85
    capped = STTMReducer(cfg).reduce(tokens, _ctx(want.n_out - 5))
    assert capped.info["budget_capped"] == 1.0
    assert capped.n_out == want.n_out - 5
    assert capped.info["tau_s"] < 0.85


def test_search_reports_thresholds_that_reproduce_the_count() -> None:
    grid = blocky_video((4, 10, 18), seed=8)
    tokens = VisualTokens.from_grid(grid.reshape(-1, 8), (4, 10, 18))
    for budget in (200, 333, 500):
        red = STTMReducer(STTMConfig()).reduce(tokens, _ctx(budget))
        assert red.n_out == budget == red.info["n_out"] and red.info["fallback"] == 0
        again = evaluate(
            prepare(grid, MergeOptions()), red.info["tau_s"], red.info["tau_t"]
        )
        # The thresholds give the groups before the fill detached members.
        assert again.n_out + red.info["fill_detached"] == red.n_out
        assert red.info["fill_split"] == 0.0


def test_budget_below_the_tree_floor_merges_neighbours() -> None:
    grid = blocky_video((3, 14, 14), seed=2)
    tokens = VisualTokens.from_grid(grid.reshape(-1, 8), (3, 14, 14))
    for budget in (1, 5):
        red = STTMReducer(STTMConfig()).reduce(tokens, _ctx(budget))
        validate_reduction(tokens, red, budget, "sttm")
        assert red.n_out == budget and red.info["fallback"] == 1.0


def test_reduced_inputs_fall_back_gracefully() -> None:
    grid = blocky_video((3, 7, 5), seed=2)
    tokens = VisualTokens.from_grid(grid.reshape(-1, 8), (3, 7, 5))
    first = STTMReducer(STTMConfig()).reduce(tokens, _ctx(60))
    reduced = first.tokens
    assert not reduced.is_original()
    same = STTMReducer(STTMConfig()).reduce(reduced, _ctx(reduced.n))
    assert same.n_out == reduced.n and torch.equal(
        same.tokens.features, reduced.features
    )
    fewer = STTMReducer(STTMConfig()).reduce(reduced, _ctx(10))
    validate_reduction(reduced, fewer, 10, "sttm")
    assert fewer.n_out == 10 and fewer.info["fallback"] == 2.0


@pytest.mark.parametrize("average", ["sample", "total"])
def test_calibration_hits_an_average_ratio(average: str) -> None:
    shapes = [(3, 14, 14), (4, 10, 12), (2, 14, 14)]
    sets = [
        VisualTokens.from_grid(blocky_video(s, seed=i).reshape(-1, 8), s)
        for i, s in enumerate(shapes)
    ]
    cfg = STTMConfig(calibration_average=average, search_iters=10)  # type: ignore[arg-type]
    cal = calibrate(sets, 0.3, cfg)
    tau_s, tau_t = cal.tau_s, cal.tau_t
    assert tau_s - tau_t == pytest.approx(0.25)
    ratios, outs = [], []
    for tok in sets:
        n_out = evaluate(prepare(tok.to_grid(), MergeOptions()), tau_s, tau_t).n_out
        ratios.append(n_out / tok.n)
        outs.append(n_out)
    avg = sum(ratios) / 3 if average == "sample" else sum(outs) / sum(t.n for t in sets)
    assert 0.25 <= avg <= 0.3
    assert cal.ratio == pytest.approx(avg)
    with pytest.raises(ConfigError, match="target ratio"):
        calibrate(sets, 1.5, cfg)


def _hard(kind: str, grid: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Contents whose count curve has cliffs: static, half-duplicated, smooth."""
    t, h, w = grid
    gen = torch.Generator().manual_seed(seed)
    if kind == "static":
        return blocky_video((1, h, w), seed=seed).expand(t, h, w, 8).clone()
    if kind == "half-duplicated":
        out = blocky_video(grid, seed=seed)
        out[1::2] = out[0::2][: out[1::2].shape[0]]
        return out
    field = torch.nn.functional.interpolate(
        torch.randn(1, 16, 4, 4, generator=gen), size=(h, w), mode="bilinear"
    )[0].permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
    ramp = torch.arange(t, dtype=torch.float32)[:, None, None, None] / t
    drift = torch.randn(16, generator=gen)
    return field + 0.8 * torch.randn(t, h, w, 16, generator=gen) + 0.5 * ramp * drift


@pytest.mark.parametrize("mode", ["reference", "fixed"])
@pytest.mark.parametrize("kind", ["static", "half-duplicated", "smooth"])
def test_search_lands_on_every_budget(kind: str, mode: str) -> None:
    grid = _hard(kind, (8, 14, 14), seed=3)
    t, h, w, c = grid.shape
    tokens = VisualTokens.from_grid(grid.reshape(-1, c), (t, h, w))
    reducer = STTMReducer(STTMConfig(mode=mode))  # type: ignore[arg-type]
    for pct in range(5, 100, 5):
        budget = pct * tokens.n // 100
        red = reducer.reduce(tokens, _ctx(budget))
        assert 0.97 * budget <= red.n_out <= budget, (pct, red.n_out, red.info)


def test_static_clip_no_longer_sticks_at_one_frame() -> None:
    # Every frame identical: no threshold lies between "all merged" and "none".
    grid = _hard("static", (32, 8, 8), seed=1)
    tokens = VisualTokens.from_grid(grid.reshape(-1, 8), (32, 8, 8))
    red = STTMReducer(STTMConfig()).reduce(tokens, _ctx(tokens.n // 2))
    assert red.n_out == tokens.n // 2
    assert red.info["fill_detached"] > 0, "the fill restored merged members"


@PROPERTY
@given(
    t=st.integers(2, 6),
    h=st.integers(2, 12),
    w=st.integers(2, 12),
    frac=st.floats(0.05, 0.95),
    kind=st.sampled_from(["random", "blocky", "static", "half-duplicated", "smooth"]),
    mode=st.sampled_from(["reference", "fixed"]),
    root=st.integers(0, 2),
    seed=st.integers(0, 1000),
)
def test_search_lands_within_three_percent(
    t: int, h: int, w: int, frac: float, kind: str, mode: str, root: int, seed: int
) -> None:
    n = t * h * w
    budget = max(1, round(frac * n))
    if kind in ("random", "blocky"):
        grid = _video(kind, (t, h, w), seed)
    else:
        grid = _hard(kind, (t, h, w), seed)
    c = grid.shape[-1]
    tokens = VisualTokens.from_grid(grid.reshape(n, c), (t, h, w))
    cfg = STTMConfig(mode=mode, root_level=root)  # type: ignore[arg-type]
    red = STTMReducer(cfg).reduce(tokens, _ctx(budget))
    validate_reduction(tokens, red, budget, "sttm")
    assert red.n_out <= budget
    if red.info.get("fallback", 0.0) == 0.0 and budget >= 34:
        assert red.n_out >= 0.97 * budget, red.info


@pytest.mark.slow
def test_search_lands_on_the_embedded_benchmark() -> None:
    # Every test-split video of the embedded benchmark, through the tiny model's
    # vision tower and projector (what a pre-LLM reducer sees).
    from tokenred.adapters.tiny import TinyAdapter
    from tokenred.builtin.synthetic import SyntheticConfig, SyntheticDataset

    dataset = SyntheticDataset(SyntheticConfig(split="test"))
    adapter = TinyAdapter()
    adapter.load()
    reducer = STTMReducer(STTMConfig())
    for sample in dataset.samples():
        decoded = dataset.decode_frames(sample)
        stamps = [float(s) for s in decoded.timestamps]
        feats = adapter.encode_video(decoded.frames, stamps)
        tokens = VisualTokens.from_grid(feats.features.float(), feats.grid)
        for pct in range(5, 100, 5):
            budget = pct * tokens.n // 100
            red = reducer.reduce(tokens, _ctx(budget))
            assert 0.97 * budget <= red.n_out <= budget, (sample.video, pct)
