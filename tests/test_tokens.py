from __future__ import annotations

import dataclasses

import pytest
import torch

from tokenred.errors import ContractError
from tokenred.tokens import (
    Need,
    ReduceContext,
    Reduction,
    Stage,
    VisualTokens,
    validate_reduction,
)


def grid_tokens(t=2, h=2, w=3, c=4) -> VisualTokens:
    feats = torch.arange(t * h * w * c, dtype=torch.float32).reshape(-1, c)
    return VisualTokens.from_grid(feats, (t, h, w))


def test_from_grid_coords_sizes_and_round_trip():
    tok = grid_tokens()
    assert tok.n == 12 and tok.channels == 4 and tok.is_original()
    assert tok.coords[7].tolist() == [1.0, 0.0, 1.0], "raster order is (t, y, x)"
    assert tok.sizes.tolist() == [1.0] * 12
    assert torch.equal(tok.to_grid().reshape(-1, 4), tok.features)
    with pytest.raises(ContractError, match=r"T\*H\*W = 2\*2\*2 = 8"):
        VisualTokens.from_grid(torch.zeros(7, 4), (2, 2, 2))


def test_to_grid_needs_original_tokens():
    tok = grid_tokens()
    kept = Reduction.from_keep_index(tok, torch.tensor([0, 1])).tokens
    assert not kept.is_original()
    with pytest.raises(ContractError, match="needs the 12 original tokens, got 2"):
        kept.to_grid()


def test_from_keep_index_sorts_and_maps():
    tok = grid_tokens()
    red = Reduction.from_keep_index(tok, torch.tensor([5, 0, 9]), info={"k": 3.0})
    assert red.assignment.tolist() == [0, -1, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1]
    assert torch.equal(red.tokens.features, tok.features[[0, 5, 9]])
    assert red.n_out == 3 and red.info == {"k": 3.0}
    assert red.representatives().tolist() == [0, 5, 9]


def test_from_assignment_means_centroids_sizes_and_order():
    tok = grid_tokens(1, 1, 4, c=1)  # features 0, 1, 2, 3; coords x = 0..3
    tok = dataclasses.replace(tok, sizes=torch.tensor([1.0, 3.0, 1.0, 1.0]))
    # Labels are arbitrary ints; group 7 holds inputs 1 and 3, group 2 input 2.
    red = Reduction.from_assignment(tok, torch.tensor([-1, 7, 2, 7]))
    assert red.assignment.tolist() == [-1, 0, 1, 0], "renumbered by earliest source"
    assert red.tokens.sizes.tolist() == [4.0, 1.0]
    # size-weighted: (1*3 + 3*1) / 4 = 1.5
    assert red.tokens.features[:, 0].tolist() == [1.5, 2.0]
    assert red.tokens.coords[0].tolist() == [0.0, 0.0, 1.5]
    count = Reduction.from_assignment(tok, torch.tensor([-1, 7, 2, 7]), mean="count")
    assert count.tokens.features[:, 0].tolist() == [2.0, 2.0]
    custom = torch.tensor([[20.0], [70.0]])  # in sorted-label order: 2, 7
    given = Reduction.from_assignment(tok, torch.tensor([-1, 7, 2, 7]), features=custom)
    assert given.tokens.features[:, 0].tolist() == [70.0, 20.0]
    validate_reduction(tok, red, budget=2)


def test_merging_keeps_the_feature_dtype():
    tok = grid_tokens()
    tok = dataclasses.replace(tok, features=tok.features.to(torch.bfloat16))
    red = Reduction.from_assignment(tok, torch.arange(12) // 2)
    assert red.tokens.dtype == torch.bfloat16 and red.n_out == 6
    validate_reduction(tok, red, budget=6)


def test_require_names_the_missing_need():
    ctx = ReduceContext(budget=4, generator=torch.Generator(), stage=Stage.IN_LLM)
    with pytest.raises(ContractError, match="reducer 'fastv' needs attention"):
        ctx.require(Need.ATTENTION, "fastv")
    att = torch.ones(1, 1, 3)
    assert (
        ctx.__class__(budget=1, generator=ctx.generator, attention=att).require(
            Need.ATTENTION, "x"
        )
        is att
    )


def broken(red: Reduction, **changes) -> Reduction:
    tokens = dataclasses.replace(red.tokens, **changes.pop("tokens", {}))
    return dataclasses.replace(red, tokens=tokens, **changes)


@pytest.mark.parametrize(
    ("mutate", "phrase"),
    [
        (lambda r: "not a reduction", "returned str, not a Reduction"),
        (
            lambda r: broken(r, tokens={"features": r.tokens.features[:, :2]}),
            "[N_out, 4]",
        ),
        (
            lambda r: broken(r, tokens={"features": r.tokens.features.double()}),
            "torch.float64",
        ),
        (lambda r: broken(r, assignment=r.assignment.int()), "must be int64"),
        (
            lambda r: broken(
                r, assignment=torch.where(r.assignment == 2, 5, r.assignment)
            ),
            "must lie in [-1, 3)",
        ),
        (
            lambda r: broken(
                r, assignment=torch.where(r.assignment == 2, -1, r.assignment)
            ),
            "have no source",
        ),
        (
            lambda r: broken(r, tokens={"sizes": r.tokens.sizes * 2}),
            "not the sum of their sources",
        ),
        (
            lambda r: broken(r, tokens={"coords": r.tokens.coords[:2]}),
            "coords must be [N_out, 3]",
        ),
        (
            lambda r: broken(r, tokens={"features": r.tokens.features * torch.nan}),
            "features contain NaN or Inf",
        ),
        (
            lambda r: broken(r, tokens={"features": r.tokens.features / 0.0}),
            "features contain NaN or Inf",
        ),
    ],
)
def test_validate_reduction_names_the_invariant(mutate, phrase):
    tok = grid_tokens()
    red = Reduction.from_keep_index(tok, torch.tensor([1, 4, 8]))
    validate_reduction(tok, red, budget=3, reducer="ok")
    with pytest.raises(ContractError) as excinfo:
        validate_reduction(tok, mutate(red), budget=3, reducer="bad")
    assert str(excinfo.value).startswith("reducer 'bad' broke the contract: ")
    assert phrase in str(excinfo.value)


def test_validate_reduction_budget_and_order():
    tok = grid_tokens()
    red = Reduction.from_keep_index(tok, torch.tensor([1, 4, 8]))
    with pytest.raises(ContractError, match="returned 3 tokens for budget 2"):
        validate_reduction(tok, red, budget=2)
    swapped = broken(
        red, assignment=torch.tensor([-1, 1, -1, -1, 0] + [-1] * 3 + [2] + [-1] * 3)
    )
    with pytest.raises(ContractError, match="not ordered by their earliest source"):
        validate_reduction(tok, swapped, budget=3)


def _naive_from_assignment(tok, assignment):
    """Boolean-compaction formulation of from_assignment (size-weighted means)."""
    kept = assignment >= 0
    labels = torch.unique(assignment[kept])
    groups = [torch.nonzero(assignment == lab).squeeze(1) for lab in labels]
    groups.sort(key=lambda g: int(g.min()))
    final = torch.full_like(assignment, -1)
    feats, sizes = [], []
    for i, g in enumerate(groups):
        final[g] = i
        s = tok.sizes[g]
        feats.append((tok.features[g] * s[:, None]).sum(0) / s.sum())
        sizes.append(s.sum())
    return final, torch.stack(feats), torch.stack(sizes)


@pytest.mark.parametrize("seed", range(5))
def test_from_assignment_matches_the_naive_grouping_with_drops(seed):
    gen = torch.Generator().manual_seed(seed)
    tok = grid_tokens(t=3, h=4, w=4, c=8)
    n = tok.n
    assignment = torch.randint(-1, 9, (n,), generator=gen) * 1000  # sparse labels
    assignment[assignment < 0] = -1
    assignment[0] = 5000  # at least one kept token
    red = Reduction.from_assignment(tok, assignment)
    final, feats, sizes = _naive_from_assignment(tok, assignment)
    assert torch.equal(red.assignment, final)
    assert torch.allclose(red.tokens.features, feats, atol=1e-5)
    assert torch.allclose(red.tokens.sizes, sizes)
    validate_reduction(tok, red, budget=red.n_out)
