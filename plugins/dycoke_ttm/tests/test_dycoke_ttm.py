from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tokenred_dycoke_ttm.reducer import DyCokeTTMConfig, DyCokeTTMReducer
from tokenred_dycoke_ttm.ttm import ANCHOR, FIRST, PRUNED, frame_plan

from tokenred import ContractError, ReduceContext, VisualTokens, validate_reduction
from tokenred.testing import parametrize_with_checks


def _ctx(budget: int) -> ReduceContext:
    return ReduceContext(budget=budget, generator=torch.Generator().manual_seed(0))


def _kept(red) -> set[int]:  # type: ignore[no-untyped-def]
    return set(torch.nonzero(red.assignment >= 0).squeeze(1).tolist())


def _video(t: int, hw: int, c: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t, hw, c, generator=gen)


def _naive_reference(x: torch.Tensor, prune_ratio: float) -> set[int]:
    """Slow restatement of the reference's frame loops (T >= 5)."""
    t, hw, _ = x.shape
    k = int((1 - prune_ratio) * hw)
    kept = {f: list(range(hw)) for f in range(t)}
    for i in range(0, t - 1, 2):
        sim = F.cosine_similarity(x[i], x[i + 1], dim=1)
        kept[i + 1] = sorted(sim.argsort(stable=True)[:k].tolist())
    for i in range(0, t - 4, 4):
        sim = F.cosine_similarity(x[i], x[i + 2], dim=1)
        kept[i + 2] = sorted(sim.argsort(stable=True)[:k].tolist())
    return {f * hw + p for f, ps in kept.items() for p in ps}


@pytest.mark.parametrize("frames", [5, 8, 9, 12])
@pytest.mark.parametrize("prune_ratio", [0.7, 0.925])
def test_matches_reference_at_paper_ratios(frames: int, prune_ratio: float) -> None:
    x = _video(frames, 20, seed=frames)
    expected = _naive_reference(x, prune_ratio)
    tokens = VisualTokens.from_grid(x.reshape(-1, 12), (frames, 4, 5))
    red = DyCokeTTMReducer().reduce(tokens, _ctx(len(expected)))
    validate_reduction(tokens, red, len(expected), "dycoke_ttm")
    assert _kept(red) == expected
    keep = int((1 - prune_ratio) * 20)
    assert red.info["prune_ratio"] == pytest.approx(1 - keep / 20)
    assert red.info["below_floor"] == 0.0


def test_static_video_keeps_first_frame_and_drops_repeats() -> None:
    frame = _video(1, 30)[0]
    for frames in (2, 3, 4):
        x = frame.expand(frames, 30, 12).reshape(-1, 12)
        tokens = VisualTokens.from_grid(x.clone(), (frames, 5, 6))
        red = DyCokeTTMReducer().reduce(tokens, _ctx(30))
        assert _kept(red) == set(range(30))
        torch.testing.assert_close(red.tokens.features, frame)
    # Five frames: frames 0 and 4 open groups of four and stay whole.
    x = frame.expand(5, 30, 12).reshape(-1, 12).clone()
    red = DyCokeTTMReducer().reduce(VisualTokens.from_grid(x, (5, 5, 6)), _ctx(60))
    assert _kept(red) == set(range(30)) | set(range(120, 150))


def test_changed_patches_survive() -> None:
    x = _video(1, 30).expand(2, 30, 12).clone()
    changed = [3, 11, 12, 29]
    x[1, changed] = _video(1, 4, seed=7)[0]
    tokens = VisualTokens.from_grid(x.reshape(-1, 12), (2, 5, 6))
    red = DyCokeTTMReducer().reduce(tokens, _ctx(30 + len(changed)))
    assert _kept(red) == set(range(30)) | {30 + p for p in changed}


def test_remainder_goes_to_the_least_similar_overall() -> None:
    # Two pruned frames; one patch of frame 3 differs strongly, so with an odd
    # remainder it is the extra token picked over all pruned frames.
    base = _video(1, 6)[0]
    x = base.expand(4, 6, 12).clone()
    x[1] += 0.05 * _video(1, 6, seed=2)[0]
    x[3] += 0.05 * _video(1, 6, seed=3)[0]
    x[3, 4] = -base[4]  # cosine -1 to frame 2
    tokens = VisualTokens.from_grid(x.reshape(-1, 12), (4, 2, 3))
    # T=4: frames 0 and 2 whole, 1 and 3 pruned; budget 12 + 1.
    red = DyCokeTTMReducer().reduce(tokens, _ctx(13))
    assert _kept(red) == set(range(6)) | set(range(12, 18)) | {18 + 4}


def test_reference_groups_switch() -> None:
    level_ref, _ = frame_plan(8, True, torch.device("cpu"))
    level_all, ref_all = frame_plan(8, False, torch.device("cpu"))
    assert level_ref.tolist() == [
        FIRST,
        PRUNED,
        PRUNED,
        PRUNED,
        ANCHOR,
        PRUNED,
        ANCHOR,
        PRUNED,
    ]
    assert level_all[6] == PRUNED and ref_all[6] == 4
    x = _video(8, 20, seed=5)
    tokens = VisualTokens.from_grid(x.reshape(-1, 12), (8, 4, 5))
    budget = 3 * 20 + 5 * 6
    red = DyCokeTTMReducer().reduce(tokens, _ctx(budget))
    frames = torch.bincount(red.representatives() // 20, minlength=8).tolist()
    assert frames == [20, 6, 6, 6, 20, 6, 20, 6]
    cfg = DyCokeTTMConfig(reference_groups=False)
    red = DyCokeTTMReducer(cfg).reduce(tokens, _ctx(2 * 20 + 6 * 7))
    frames = torch.bincount(red.representatives() // 20, minlength=8).tolist()
    assert frames == [20, 7, 7, 7, 20, 7, 7, 7]


@pytest.mark.parametrize("grid", [(1, 1, 1), (1, 3, 5), (4, 7, 5), (9, 3, 4)])
def test_exact_budget_including_below_the_floor(grid: tuple[int, int, int]) -> None:
    t, h, w = grid
    n = t * h * w
    tokens = VisualTokens.from_grid(_video(t, h * w).reshape(-1, 12), grid)
    for budget in range(1, n + 3, max(1, n // 13)):
        red = DyCokeTTMReducer().reduce(tokens, _ctx(budget))
        validate_reduction(tokens, red, budget, "dycoke_ttm")
        assert red.n_out == min(budget, n)


def test_below_floor_spreads_the_first_frame() -> None:
    tokens = VisualTokens.from_grid(_video(1, 20).reshape(-1, 12), (1, 4, 5))
    red = DyCokeTTMReducer().reduce(tokens, _ctx(4))
    assert sorted(_kept(red)) == [2, 7, 12, 17]
    assert red.info["below_floor"] == 1.0


def test_rejects_reduced_tokens() -> None:
    tokens = VisualTokens(
        features=torch.zeros(3, 4),
        coords=torch.zeros(3, 3),
        sizes=torch.tensor([1.0, 2.0, 1.0]),
        grid=(1, 2, 2),
    )
    with pytest.raises(ContractError, match=r"dycoke_ttm.*original"):
        DyCokeTTMReducer().reduce(tokens, _ctx(2))


def test_metadata() -> None:
    meta = DyCokeTTMReducer.metadata()
    assert meta["query_agnostic"] is True
    assert meta["exact_budget"] is True
    assert meta["needs"] == []
    assert meta["position_policy"] == "reassign"


@parametrize_with_checks(
    ["dycoke_ttm", DyCokeTTMReducer(DyCokeTTMConfig(reference_groups=False))]
)
def test_contract(reducer, check) -> None:  # type: ignore[no-untyped-def]
    check(reducer)


def _static_video(noise: float, seed: int = 1) -> torch.Tensor:
    """``[T, HW, C]``: a static background with one moving object, plus noise.

    Background patches equal their reference frame's patch, so their similarities
    tie at 1.0; a relative ``noise`` of 1e-6 is the size of the differences between
    CPU instruction sets (AVX-512 vs AVX2 kernels) on the same input.
    """
    t, hw, c = 9, 16, 12
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(hw, c, generator=gen).repeat(t, 1, 1)  # [HW, C] -> [T, HW, C]
    for f in range(t):  # an object crossing the frame, one patch per frame
        x[f, f % hw] = torch.randn(c, generator=gen)
    jitter = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x * (1 + noise * jitter)


@pytest.mark.parametrize("budget", [100, 72, 40, 20])
def test_float_noise_does_not_change_the_kept_tokens(budget: int) -> None:
    grid = (9, 4, 4)
    clean = VisualTokens.from_grid(_static_video(0.0).reshape(-1, 12), grid)
    a = DyCokeTTMReducer().reduce(clean, _ctx(budget))
    for seed in range(1, 4):
        noisy = VisualTokens.from_grid(_static_video(1e-6, seed).reshape(-1, 12), grid)
        b = DyCokeTTMReducer().reduce(noisy, _ctx(budget))
        assert _kept(a) == _kept(b), seed
