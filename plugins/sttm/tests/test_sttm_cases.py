"""Hand-checkable STTM cases: geometry, collapse, checkerboards, switches."""

from __future__ import annotations

import pytest
import torch
from sttm_inputs import blocky_video, checkerboard
from tokenred_sttm.merge import (
    MergeOptions,
    evaluate,
    pair_similarities,
    prepare,
    sttm_merge,
    with_cache,
)
from tokenred_sttm.quadtree import (
    build_lattice,
    compact,
    level_sizes,
    node_features,
    partition,
)
from tokenred_sttm.temporal import (
    candidate_pairs,
    pair_keys,
    propagate,
    propagate_count,
)

CPU = torch.device("cpu")


def test_level_sizes_match_the_paper_grids() -> None:
    assert level_sizes(14, 14) == [(2, 2), (4, 4), (7, 7), (14, 14)]
    assert level_sizes(20, 36) == [(2, 3), (3, 5), (5, 9), (10, 18), (20, 36)]
    assert level_sizes(1, 1) == [(1, 1)]  # the reference loops forever here


def test_root_cells_of_a_14x14_grid() -> None:
    lat = build_lattice(14, 14, 1, spatial=True, reference=True, device=CPU)
    assert lat.sizes == ((4, 4), (7, 7), (14, 14))
    heights = (lat.end_y[0] - lat.start_y[0]).unique_consecutive().tolist()
    # root rows cover finest rows 0-1, 2-5, 6-9, 10-13
    assert lat.start_y[0].unique().tolist() == [0, 2, 6, 10]
    assert heights == [2, 4]


@pytest.mark.parametrize("reference", [True, False])
@pytest.mark.parametrize("shape", [(4, 14, 14), (3, 20, 36), (2, 7, 5)])
def test_identical_constant_frames_collapse_to_first_root_level(
    shape: tuple[int, int, int], reference: bool
) -> None:
    t, h, w = shape
    v = torch.randn(8, generator=torch.Generator().manual_seed(1))
    grid = v.expand(t, h, w, 8).clone()
    out = sttm_merge(grid, 0.85, 0.55, MergeOptions(reference=reference))
    root_h, root_w = level_sizes(h, w)[1]
    assert out.features.shape[0] == root_h * root_w, "one token per root node"
    assert bool((out.tlbr[:, 0] == 0).all()), "all tokens live in the first frame"
    assert int(out.sizes.sum()) == t * h * w
    torch.testing.assert_close(out.features, v.expand_as(out.features))


@pytest.mark.parametrize(("h", "w", "block"), [(14, 14, 2), (20, 36, 4), (7, 5, 1)])
def test_checkerboard_keeps_every_patch_but_the_reference_top_left_block(
    h: int, w: int, block: int
) -> None:
    t = 2
    grid = checkerboard(h, w)[None].expand(t, h, w, 8).clone()
    no_temporal = 1.5
    fixed = sttm_merge(grid, 0.85, no_temporal, MergeOptions(reference=False))
    assert fixed.features.shape[0] == t * h * w, "fixed mode keeps every patch"
    ref = sttm_merge(grid, 0.85, no_temporal, MergeOptions(reference=True))
    merged = ref.tlbr[ref.sizes > 1].tolist()
    if block == 1:
        assert merged == []
    else:  # the root (0, 0) node always stops in reference mode
        assert merged == [[f, 0, 0, block, block] for f in range(t)]
    assert ref.features.shape[0] == t * (h * w - block * block + 1)


@pytest.mark.parametrize("reference", [True, False])
def test_tau_t_above_one_means_no_temporal_merge(reference: bool) -> None:
    grid = blocky_video((4, 14, 14), seed=3)
    got = sttm_merge(grid, 0.8, 1.01, MergeOptions(reference=reference))
    spatial_only = sttm_merge(
        grid, 0.8, 0.0, MergeOptions(reference=reference, temporal=False)
    )
    assert got.features.shape[0] == got.n_spatial
    assert torch.equal(got.assignment, spatial_only.assignment)
    assert torch.equal(got.features, spatial_only.features)
    # Just above 1 the cosines are still computed: even identical frames stay apart.
    same = grid[:1].expand(4, -1, -1, -1).contiguous()
    again = sttm_merge(same, 0.8, 1.0005, MergeOptions(reference=reference))
    assert again.rounds == 1 and again.features.shape[0] == again.n_spatial


@pytest.mark.parametrize("reference", [True, False])
def test_tau_s_above_one_is_the_spatial_identity(reference: bool) -> None:
    grid = blocky_video((3, 7, 5), seed=4)
    got = sttm_merge(grid, 1.01, 2.0, MergeOptions(reference=reference))
    assert got.n_spatial == grid.shape[0] * 35
    assert torch.equal(got.assignment, torch.arange(grid.shape[0] * 35))
    assert torch.equal(got.features, grid.reshape(-1, 8))
    off = sttm_merge(grid, 0.5, 2.0, MergeOptions(reference=reference, spatial=False))
    assert torch.equal(off.features, got.features)


def test_propagation_early_stop_versus_components() -> None:
    dst, src = torch.tensor([0, 3]), torch.tensor([5, 5])
    rep, _ = propagate(dst, src, 6, exhaustive=False)
    assert rep.tolist() == [0, 1, 2, 3, 4, 0], "reference leaves node 3 unmerged"
    rep, _ = propagate(dst, src, 6, exhaustive=True)
    assert rep.tolist() == [0, 1, 2, 0, 4, 0]


def test_propagation_follows_chains_to_the_earliest_frame() -> None:
    dst, src = torch.tensor([2, 1, 0]), torch.tensor([3, 2, 1])
    for exhaustive in (False, True):
        rep, _ = propagate(dst, src, 5, exhaustive=exhaustive)
        assert rep.tolist() == [0, 0, 0, 0, 4]


def _propagate_per_round(
    dst: torch.Tensor, src: torch.Tensor, n: int, exhaustive: bool
) -> tuple[list[int], int]:
    """The labelling tested after every round, as the reference loop does."""
    rep = torch.arange(n)
    rounds = 0
    while True:
        low = torch.minimum(rep[dst], rep[src])
        nxt = rep.scatter_reduce(0, dst, low, reduce="amin")
        nxt = nxt.scatter_reduce(0, src, low, reduce="amin")
        nxt = nxt[nxt]
        rounds += 1
        done = torch.equal(nxt, rep) if exhaustive else torch.equal(nxt, nxt[nxt])
        rep = nxt
        if done:
            return rep.tolist(), rounds


@pytest.mark.parametrize("exhaustive", [False, True])
def test_blockwise_propagation_equals_testing_every_round(exhaustive: bool) -> None:
    # Random forests of chains and merges between "frames"; every block size must
    # give the labelling, round count and group count of the per-round loop.
    gen = torch.Generator().manual_seed(11)
    for trial in range(30):
        n = int(torch.randint(1, 60, (1,), generator=gen))
        e = int(torch.randint(0, 3 * n, (1,), generator=gen))
        a = torch.randint(0, n, (e,), generator=gen)
        b = torch.randint(0, n, (e,), generator=gen)
        dst, src = torch.minimum(a, b), torch.maximum(a, b)
        want, rounds = _propagate_per_round(dst, src, n, exhaustive)
        for first in (1, 2, 3, 5, 8, 40):
            rep, got_rounds, n_out = propagate_count(
                dst, src, n, exhaustive=exhaustive, first_check=first
            )
            assert rep.tolist() == want, (trial, first)
            assert got_rounds == rounds, (trial, first)
            assert n_out == sum(r == i for i, r in enumerate(want))


def test_compact_equals_nonzero() -> None:
    gen = torch.Generator().manual_seed(2)
    for n in (0, 1, 7, 100):
        for p in (0.0, 0.3, 1.0):
            mask = torch.rand(n, generator=gen) < p
            got = compact(mask, int(mask.sum()))
            assert torch.equal(got, torch.nonzero(mask).squeeze(1))


@pytest.mark.parametrize("tau_s", [0.5, 0.8, 0.9, 0.97])
def test_candidate_pairs_are_exactly_the_nested_pairs(tau_s: float) -> None:
    grid = blocky_video((3, 10, 18), seed=7)
    prep = prepare(grid, MergeOptions(reference=False))
    part = partition(prep.pscores, prep.lattice, tau_s)
    dst, src = candidate_pairs(part)
    got = set(zip(dst.tolist(), src.tolist()))
    box = part.tlbr.tolist()
    want = set()
    for a, ba in enumerate(box):
        for b, bb in enumerate(box):
            if bb[0] != ba[0] + 1:
                continue
            inner = (
                bb[1] <= ba[1] and bb[2] <= ba[2] and ba[3] <= bb[3] and ba[4] <= bb[4]
            )
            outer = (
                ba[1] <= bb[1] and ba[2] <= bb[2] and bb[3] <= ba[3] and bb[4] <= ba[4]
            )
            if inner or outer:
                want.add((a, b))
    assert got == want
    assert len(dst) == len(got), "each pair is listed once"
    assert len(dst) <= 2 * part.n_nodes, "pair count stays linear in the nodes"


def test_single_frame_and_single_token() -> None:
    one = torch.randn(1, 1, 1, 4)
    out = sttm_merge(one, 0.8, 0.5)
    assert torch.equal(out.features, one.reshape(1, 4))
    frame = blocky_video((1, 14, 14), seed=9)
    out = sttm_merge(frame, 0.8, 0.5)
    assert out.rounds == 0 and out.features.shape[0] == out.n_spatial


@pytest.mark.parametrize("reference", [True, False])
@pytest.mark.parametrize("head_dim", [None, 4])
def test_pair_cache_matches_the_direct_cosines(
    reference: bool, head_dim: int | None
) -> None:
    grid = blocky_video((4, 10, 18), seed=12)
    opts = MergeOptions(reference=reference, head_dim=head_dim, root_level=0)
    prep = prepare(grid, opts)
    fast = with_cache(prep)
    seen: set[int] = set()
    for tau_s, tau_t in ((0.5, 0.3), (0.8, 0.6), (0.9, 0.8), (0.97, 0.9), (0.8, 0.6)):
        part = partition(prep.pscores, prep.lattice, tau_s)
        feats = node_features(prep.levels, prep.lattice, part, prep.level_dtype)
        dst, src = candidate_pairs(part)
        u = feats.float() / (feats.float().norm(dim=-1, keepdim=True) + 1e-8)
        if head_dim is None:
            want = (u[dst] * u[src]).sum(-1)
            torch.testing.assert_close(pair_similarities(prep, part)[2], want)
        _, _, direct = pair_similarities(prep, part)
        cdst, csrc, cached = pair_similarities(fast, part)
        assert torch.equal(dst, cdst) and torch.equal(src, csrc)
        assert torch.equal(direct, cached), "cached cosines are not bit-identical"
        keys = pair_keys(part, prep.lattice)
        assert keys.unique().numel() == keys.numel(), "a key names two pairs"
        seen |= set(keys.tolist())
        a, b = evaluate(prep, tau_s, tau_t), evaluate(fast, tau_s, tau_t)
        assert torch.equal(a.rep, b.rep) and a.n_out == b.n_out
    assert fast.cache is not None
    filled = set(torch.nonzero(~torch.isnan(fast.cache)).squeeze(1).tolist())
    assert seen <= filled, "a cut's cosine was not cached"


@pytest.mark.parametrize("reference", [True, False])
def test_sparse_walk_equals_dense_scores(reference: bool) -> None:
    grid = blocky_video((3, 20, 36), seed=4)
    opts = MergeOptions(reference=reference, root_level=1)
    dense = prepare(grid, opts)
    for tau_s in (0.6, 0.85, 0.95):
        sparse = prepare(grid, opts, reach=tau_s)
        a = evaluate(dense, tau_s, 0.6)
        b = evaluate(sparse, tau_s, 0.6)
        assert torch.equal(a.part.node, b.part.node)
        assert torch.equal(a.rep, b.rep)
        touched = int(torch.isfinite(sparse.pscores).sum())
        assert touched <= int(torch.isfinite(dense.pscores).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooling_is_bit_identical_to_padded_avg_pool(dtype: torch.dtype) -> None:
    # The reference pools with avg_pool2d; an odd side acts as a zero-padded border.
    from tokenred_sttm.quadtree import _pool

    for h, w in ((14, 14), (7, 7), (5, 9), (10, 18), (2, 7), (1, 4)):
        x = torch.randn(3, h, w, 16, generator=torch.Generator().manual_seed(h * w))
        x = x.to(dtype)
        xc = torch.nn.functional.pad(
            x.permute(0, 3, 1, 2).float(), (w % 2, 0, h % 2, 0)
        )
        sums = torch.nn.functional.avg_pool2d(xc, 2, 2, divisor_override=1)
        rows = torch.tensor([1.0] * (h % 2) + [2.0] * (h // 2))
        cols = torch.tensor([1.0] * (w % 2) + [2.0] * (w // 2))
        means = sums / (rows[:, None] * cols[None, :])
        for want, is_sum in ((sums, True), (means, False)):
            got = _pool(x, sums=is_sum, dtype=dtype)
            assert torch.equal(got, want.permute(0, 2, 3, 1).to(dtype)), (h, w, is_sum)
