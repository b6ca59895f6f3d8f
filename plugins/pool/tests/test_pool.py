from __future__ import annotations

import pytest
import torch
from tokenred_pool.pooling import cell_labels, frame_quotas
from tokenred_pool.reducer import PoolReducer

from tokenred import ReduceContext, VisualTokens, validate_reduction
from tokenred.testing import parametrize_with_checks


def _ctx(budget: int) -> ReduceContext:
    return ReduceContext(budget=budget, generator=torch.Generator().manual_seed(0))


def _ramp(grid: tuple[int, int, int]) -> VisualTokens:
    """Features linear in (t, y, x): channel k = a_k t + b_k y + c_k x + d_k."""
    t, h, w = grid
    base = VisualTokens.from_grid(torch.zeros(t * h * w, 1), grid)
    coef = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.5, -2.0, 3.0, 7.0],
        ]
    )
    feats = base.coords @ coef[:, :3].T + coef[:, 3]  # [N, 3] -> [N, 4]
    return VisualTokens.from_grid(feats, grid)


def test_constant_video_pools_to_the_constant() -> None:
    grid = (5, 7, 6)
    value = torch.linspace(-1.0, 2.0, 16)
    tokens = VisualTokens.from_grid(value.expand(5 * 7 * 6, 16).clone(), grid)
    for budget in (1, 3, 5, 17, 49, 101, 209):
        red = PoolReducer().reduce(tokens, _ctx(budget))
        validate_reduction(tokens, red, budget, "pool")
        assert red.n_out == budget
        torch.testing.assert_close(red.tokens.features, value.expand(budget, 16))


def test_two_by_two_pooling_of_a_ramp() -> None:
    # Raster-index ramp on 4x4: 2x2 cells average to 2.5, 4.5, 10.5, 12.5.
    tokens = VisualTokens.from_grid(torch.arange(16.0)[:, None], (1, 4, 4))
    red = PoolReducer().reduce(tokens, _ctx(4))
    assert red.tokens.features[:, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    assert red.tokens.sizes.tolist() == [4.0, 4.0, 4.0, 4.0]
    assert red.assignment.reshape(4, 4).tolist() == [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 3, 3],
        [2, 2, 3, 3],
    ]


@pytest.mark.parametrize("grid", [(4, 7, 5), (2, 14, 14), (3, 6, 9)])
def test_ramp_pools_to_its_cell_averages(grid: tuple[int, int, int]) -> None:
    """Averaging a linear function over a cell gives its value at the centroid."""
    tokens = _ramp(grid)
    t, h, w = grid
    for budget in (1, t - 1, t, 2 * t + 1, (t * h * w) // 4, t * h * w - 1):
        if budget < 1:
            continue
        red = PoolReducer().reduce(tokens, _ctx(budget))
        validate_reduction(tokens, red, budget, "pool")
        out = red.tokens
        expected = torch.cat([out.coords, torch.ones(out.n, 1)], 1) @ torch.tensor(
            [
                [1.0, 0.0, 0.0, 0.5],
                [0.0, 1.0, 0.0, -2.0],
                [0.0, 0.0, 1.0, 3.0],
                [0.0, 0.0, 0.0, 7.0],
            ]
        )
        torch.testing.assert_close(out.features, expected)
        # Each output is the plain mean of its members.
        a = red.assignment
        mean = torch.zeros(out.n, 4).index_add(0, a, tokens.features)
        torch.testing.assert_close(out.features, mean / out.sizes[:, None])


def test_cells_are_rectangles_within_one_frame() -> None:
    grid = (3, 14, 14)
    red = PoolReducer().reduce(_ramp(grid), _ctx(3 * 59 + 1))
    labels = red.assignment.reshape(3, 14, 14)
    coords = VisualTokens.from_grid(torch.zeros(3 * 196, 1), grid).coords
    for cell in range(red.n_out):
        members = coords[red.assignment == cell]
        assert members[:, 0].unique().numel() == 1  # one frame
        span = members.max(0).values - members.min(0).values + 1
        assert int(span[1] * span[2]) == members.shape[0]  # a full rectangle
    per_frame = [int(labels[i].unique().numel()) for i in range(3)]
    assert per_frame == [59, 59, 60]
    assert set(red.tokens.sizes.tolist()) <= {1.0, 2.0, 4.0}


def test_divisible_budget_is_plain_average_pooling() -> None:
    grid = (2, 14, 14)
    tokens = _ramp(grid)
    red = PoolReducer().reduce(tokens, _ctx(2 * 49))
    assert torch.all(red.tokens.sizes == 4.0)
    pooled = torch.nn.functional.avg_pool2d(
        tokens.to_grid().permute(0, 3, 1, 2),
        2,  # [T, H, W, C] -> [T, C, H, W]
    )
    # [T, C, 7, 7] -> [T*49, C]
    expected = pooled.permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(red.tokens.features, expected)


def test_budget_below_frame_count_pools_whole_frames() -> None:
    tokens = VisualTokens.from_grid(
        torch.arange(4.0).repeat_interleave(4)[:, None], (4, 2, 2)
    )
    red = PoolReducer().reduce(tokens, _ctx(2))
    assert red.assignment.tolist() == [0] * 8 + [1] * 8
    assert red.tokens.features[:, 0].tolist() == [0.5, 2.5]


def test_quotas_and_labels() -> None:
    assert frame_quotas(10, 4, torch.device("cpu")).tolist() == [2, 3, 2, 3]
    labels = cell_labels(torch.tensor([1, 5, 20]), 4, 5)
    for i, q in enumerate([1, 5, 20]):
        assert labels[i].unique().tolist() == list(range(q))


def test_reduced_input_pools_in_sequence_order() -> None:
    feats = torch.arange(6.0)[:, None]
    tokens = VisualTokens(
        features=feats,
        coords=torch.zeros(6, 3),
        sizes=torch.tensor([1.0, 3.0, 1.0, 1.0, 2.0, 2.0]),
        grid=(1, 2, 5),
    )
    red = PoolReducer().reduce(tokens, _ctx(3))
    validate_reduction(tokens, red, 3, "pool")
    assert red.assignment.tolist() == [0, 0, 1, 1, 2, 2]
    # Size-weighted: (0*1 + 1*3) / 4.
    assert red.tokens.features[0, 0].item() == pytest.approx(0.75)


def test_full_budget_identity() -> None:
    tokens = _ramp((2, 3, 3))
    red = PoolReducer().reduce(tokens, _ctx(100))
    assert torch.equal(red.assignment, torch.arange(18))
    assert torch.equal(red.tokens.features, tokens.features)


@parametrize_with_checks(["pool"])
def test_contract(reducer, check) -> None:  # type: ignore[no-untyped-def]
    check(reducer)
