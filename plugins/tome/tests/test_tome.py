from __future__ import annotations

import pytest
import torch
from tokenred_tome.reducer import ToMeConfig, ToMeMode, ToMeReducer

from tokenred import ReduceContext, VisualTokens, validate_reduction
from tokenred.errors import ConfigError
from tokenred.testing import parametrize_with_checks


def _ctx(budget: int) -> ReduceContext:
    return ReduceContext(budget=budget, generator=torch.Generator().manual_seed(0))


def _random_tokens(
    grid: tuple[int, int, int], c: int = 16, seed: int = 0
) -> VisualTokens:
    t, h, w = grid
    gen = torch.Generator().manual_seed(seed)
    return VisualTokens.from_grid(torch.randn(t * h * w, c, generator=gen), grid)


def _groups(assignment: torch.Tensor) -> set[frozenset[int]]:
    out: dict[int, set[int]] = {}
    for i, a in enumerate(assignment.tolist()):
        out.setdefault(a, set()).add(i)
    return {frozenset(v) for v in out.values()}


def _naive_reference(feats: torch.Tensor, target: int) -> set[frozenset[int]]:
    """Slow restatement of the reference rounds, kept in its internal order."""
    members = [[i] for i in range(feats.shape[0])]
    x = [feats[i].double() for i in range(feats.shape[0])]
    size = [1.0] * feats.shape[0]
    while len(x) > target:
        n = len(x)
        r = min(n - target, n // 2)
        a, b = list(range(0, n, 2)), list(range(1, n, 2))
        best: list[tuple[float, int]] = []
        for i in a:
            sims = [float(x[i] @ x[j] / (x[i].norm() * x[j].norm())) for j in b]
            k = max(range(len(b)), key=lambda m: (sims[m], -m))
            best.append((sims[k], b[k]))
        order = sorted(range(len(a)), key=lambda m: -best[m][0])
        mem = {j: list(members[j]) for j in b}
        acc = {j: x[j] * size[j] for j in b}
        tot = {j: size[j] for j in b}
        for m in order[:r]:
            i, j = a[m], best[m][1]
            mem[j] += members[i]
            acc[j] = acc[j] + x[i] * size[i]
            tot[j] += size[i]
        keep = [a[m] for m in order[r:]]
        members = [members[i] for i in keep] + [mem[j] for j in b]
        x = [x[i] for i in keep] + [acc[j] / tot[j] for j in b]
        size = [size[i] for i in keep] + [tot[j] for j in b]
    return {frozenset(m) for m in members}


def test_identical_pair_merges_first() -> None:
    tokens = _random_tokens((4, 7, 5))
    feats = tokens.features.clone()
    feats[37] = 2.5 * feats[12]  # even and odd position: same direction, cos = 1
    tokens = VisualTokens.from_grid(feats, tokens.grid)
    red = ToMeReducer().reduce(tokens, _ctx(tokens.n - 1))
    assert red.n_out == tokens.n - 1
    assert red.assignment[12] == red.assignment[37]
    groups = _groups(red.assignment)
    assert frozenset({12, 37}) in groups
    assert all(len(g) == 1 for g in groups if g != frozenset({12, 37}))


def test_identical_pair_merges_first_per_frame() -> None:
    tokens = _random_tokens((3, 4, 4))
    feats = tokens.features.clone()
    feats[16 + 3] = feats[16 + 8]  # both in frame 1, odd and even position
    tokens = VisualTokens.from_grid(feats, tokens.grid)
    cfg = ToMeConfig(mode=ToMeMode.FRAME)
    red = ToMeReducer(cfg).reduce(tokens, _ctx(3 * 15))
    # 15 per frame: frame 1 merges its planted pair; the others their best pair.
    assert red.assignment[19] == red.assignment[24]
    frames = torch.div(red.representatives(), 16, rounding_mode="floor")
    assert torch.bincount(frames).tolist() == [15, 15, 15]


@pytest.mark.parametrize("mode", list(ToMeMode))
@pytest.mark.parametrize("grid", [(1, 1, 1), (1, 3, 5), (4, 7, 5), (5, 6, 6)])
def test_exact_budget_every_budget(mode: ToMeMode, grid: tuple[int, int, int]) -> None:
    tokens = _random_tokens(grid, c=8)
    reducer = ToMeReducer(ToMeConfig(mode=mode))
    for budget in range(1, tokens.n + 3, max(1, tokens.n // 17)):
        red = reducer.reduce(tokens, _ctx(budget))
        validate_reduction(tokens, red, budget, "tome")
        assert red.n_out == min(budget, tokens.n)


@pytest.mark.parametrize("budget", [1, 7, 35, 69, 70, 100, 139])
def test_video_mode_matches_reference_rounds(budget: int) -> None:
    tokens = _random_tokens((4, 7, 5), seed=3)
    red = ToMeReducer().reduce(tokens, _ctx(budget))
    assert _groups(red.assignment) == _naive_reference(tokens.features, budget)


def test_frame_mode_matches_reference_per_frame() -> None:
    tokens = _random_tokens((3, 5, 5), seed=4)
    red = ToMeReducer(ToMeConfig(mode=ToMeMode.FRAME)).reduce(tokens, _ctx(3 * 6))
    expected: set[frozenset[int]] = set()
    for t in range(3):
        local = _naive_reference(tokens.features[25 * t : 25 * (t + 1)], 6)
        expected |= {frozenset(i + 25 * t for i in g) for g in local}
    assert _groups(red.assignment) == expected


def test_size_weighted_average_with_incoming_sizes() -> None:
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    tokens = VisualTokens(
        features=feats,
        coords=torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 1.0, 1.0]]),
        sizes=torch.tensor([3.0, 1.0, 2.0]),
        grid=(1, 2, 3),
    )
    red = ToMeReducer().reduce(tokens, _ctx(2))
    validate_reduction(tokens, red, 2, "tome")
    assert red.assignment.tolist() == [0, 0, 1]
    torch.testing.assert_close(red.tokens.features[0], torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(red.tokens.sizes, torch.tensor([4.0, 2.0]))
    torch.testing.assert_close(red.tokens.coords[0], torch.tensor([0.0, 0.0, 0.5]))


def test_merged_features_are_size_weighted_means_of_members() -> None:
    tokens = _random_tokens((2, 6, 9), seed=5)
    red = ToMeReducer().reduce(tokens, _ctx(20))
    a = red.assignment
    expected = torch.zeros(red.n_out, tokens.channels).index_add(0, a, tokens.features)
    expected /= torch.bincount(a, minlength=red.n_out)[:, None]
    torch.testing.assert_close(red.tokens.features, expected)
    assert float(red.tokens.sizes.sum()) == tokens.n


def test_full_budget_is_identity_and_inputs_untouched() -> None:
    tokens = _random_tokens((2, 3, 3))
    before = tokens.features.clone()
    red = ToMeReducer().reduce(tokens, _ctx(tokens.n + 3))
    assert torch.equal(red.assignment, torch.arange(tokens.n))
    assert torch.equal(red.tokens.features, tokens.features)
    ToMeReducer().reduce(tokens, _ctx(3))
    assert torch.equal(tokens.features, before)


def test_bfloat16_input_keeps_dtype() -> None:
    tokens = _random_tokens((2, 4, 4))
    tokens = VisualTokens.from_grid(tokens.features.bfloat16(), tokens.grid)
    red = ToMeReducer().reduce(tokens, _ctx(9))
    validate_reduction(tokens, red, 9, "tome")
    assert red.tokens.dtype == torch.bfloat16


def test_config_and_metadata() -> None:
    cfg = ToMeConfig(mode="frame")  # type: ignore[arg-type]
    assert cfg.mode is ToMeMode.FRAME
    red = ToMeReducer(cfg).reduce(_random_tokens((2, 2, 2)), _ctx(3))
    assert red.info["prop_attn"] == 0.0
    with pytest.raises(
        ConfigError, match=r"reducer\.prop_attn=true: .*not implemented"
    ):
        ToMeConfig(prop_attn=True)
    with pytest.raises(ConfigError, match=r"reducer\.mode"):
        ToMeConfig(mode="clip")  # type: ignore[arg-type]
    meta = ToMeReducer.metadata()
    assert meta["exact_budget"] is True
    assert meta["query_agnostic"] is True
    assert meta["stages"] == ["in_llm", "pre_llm"]
    assert meta["needs"] == []
    assert meta["position_policy"] == "reassign"


@parametrize_with_checks(["tome", ToMeReducer(ToMeConfig(mode=ToMeMode.FRAME))])
def test_contract(reducer, check) -> None:  # type: ignore[no-untyped-def]
    check(reducer)


def _static_video(noise: float, seed: int = 1) -> VisualTokens:
    """A static background (every frame the same) with one moving object.

    Background tokens repeat exactly across frames, so their similarities tie; a
    relative ``noise`` of 1e-6 is the size of the differences between CPU
    instruction sets (AVX-512 vs AVX2 kernels) on the same input.
    """
    t, h, w, c = 8, 4, 4, 16
    gen = torch.Generator().manual_seed(0)
    background = torch.randn(h * w, c, generator=gen)
    x = background.repeat(t, 1, 1)  # [HW, C] -> [T, HW, C]
    for f in range(t):  # an object crossing the frame, one patch per frame
        x[f, f % (h * w)] = torch.randn(c, generator=gen)
    jitter = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    x = x * (1 + noise * jitter)
    return VisualTokens.from_grid(x.reshape(t * h * w, c), (t, h, w))


@pytest.mark.parametrize("budget", [96, 48, 20])
def test_float_noise_does_not_change_the_merges(budget: int) -> None:
    clean = ToMeReducer().reduce(_static_video(0.0), _ctx(budget))
    for seed in range(1, 4):
        noisy = ToMeReducer().reduce(_static_video(1e-6, seed), _ctx(budget))
        assert torch.equal(noisy.assignment, clean.assignment), seed
