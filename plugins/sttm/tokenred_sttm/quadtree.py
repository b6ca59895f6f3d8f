"""STTM's spatial stage: a per-frame quadtree over the patch grid.

Paper: https://arxiv.org/abs/2507.07990 (section 3.2). Reference implementation:
https://github.com/HYUNJS/STTM@00736c7 (``token_merging_utils/quadtree_builder.py`` and
``quadtree_spatial_merger.py``), read for behaviour only; nothing here is copied.

Every frame shares one lattice. A level of size ``n`` pools into ``ceil(n / 2)``
parents; an odd axis makes its first parent a 1-wide border (child ``0`` alone) and
pairs the rest (``[1, 2], [3, 4], ...``). A node is kept, and its subtree pruned, when
its cosine similarity to each of its children reaches ``tau_s``.

Each parent's *stop score* is its minimum similarity to its children. A patch
belongs to the first level, root first, whose ancestor score reaches ``tau_s`` (a
node is reachable exactly when none of its ancestors stopped). For fixed thresholds
only the parents that the walk reaches are scored, like the reference's walk over
the live nodes; the budget search scores them all once, after which re-partitioning
at any ``tau_s`` is a single comparison, and the node count at any ``tau_s`` can be
read off the sorted node intervals (:func:`node_intervals`).

Deviations from reference:
    * ``reference`` mode keeps the two quirks that shape the published numbers: the
      child slots that do not exist on an odd border are *not* masked out of the stop
      test (they read the child at ``(t, 0, 0)``), so the top-left root node, whose
      only child is a copy of itself, always stops; and a grid of width 1 gets no
      spatial levels at all (the pyramid loop compares widths).
    * ``fixed`` mode tests the real children only, and a parent with a single child
      (the same region) defers to that child's own test.
    * A ``root_level`` beyond the deepest level means "no spatial merging" (the
      reference raises ``IndexError``); grids of height or width 1 and grids whose
      two axes differ in parity use the general odd/even rule above (the reference
      crashes on some of them, and its weighted pooling on all mixed-parity ones).
    * Levels are computed in float32 and rounded to the working dtype per level,
      which matches the reference's model-dtype pooling (a float accumulator rounded
      once); ``fixed`` mode keeps float32 levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SPATIAL_EPS = 1e-8
"""Norm clamp of the spatial cosine (``F.cosine_similarity``'s default eps)."""


def level_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Return the quadtree level sizes of an ``h x w`` grid, root first.

    Halves both sides (rounding up) until either side is 2, as the reference does,
    and also stops at ``1 x 1`` (where the reference loops forever).
    """
    sizes = [(h, w)]
    while h != 2 and w != 2 and (h, w) != (1, 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.insert(0, (h, w))
    return sizes


def parent_index(n_child: int, device: torch.device) -> Tensor:
    """Return ``[n_child]`` the parent of each child along one axis.

    An odd axis keeps child 0 alone and pairs ``(1, 2), (3, 4), ...``.
    """
    return (torch.arange(n_child, device=device) + n_child % 2) // 2


@dataclass(frozen=True)
class Lattice:
    """The quadtree levels used for one ``(H, W)`` grid, shared by all frames.

    Attributes:
        sizes: ``(h, w)`` of each used level, root first, finest (the grid) last.
        anc_y: ``[L, H]`` row index, at each level, of the node holding finest row y.
        anc_x: ``[L, W]`` the same for columns.
        start_y: ``[L, H]`` first finest row of that node.
        end_y: ``[L, H]`` one past its last finest row.
        start_x: ``[L, W]`` first finest column of that node.
        end_x: ``[L, W]`` one past its last finest column.
    """

    sizes: tuple[tuple[int, int], ...]
    anc_y: Tensor
    anc_x: Tensor
    start_y: Tensor
    end_y: Tensor
    start_x: Tensor
    end_x: Tensor

    @property
    def n_levels(self) -> int:
        """Number of used levels ``L`` (1 means no spatial merging)."""
        return len(self.sizes)

    def ancestors(self, fine: int, coarse: int) -> tuple[Tensor, Tensor]:
        """Return the level-``coarse`` ancestors of level ``fine``'s rows and columns.

        Returns:
            ``[h_fine]`` row and ``[w_fine]`` column indices at level ``coarse``
            (``coarse <= fine``).
        """
        h, w = self.sizes[fine]
        dev = self.anc_y.device
        first_y = torch.searchsorted(self.anc_y[fine], torch.arange(h, device=dev))
        first_x = torch.searchsorted(self.anc_x[fine], torch.arange(w, device=dev))
        return self.anc_y[coarse][first_y], self.anc_x[coarse][first_x]


def _axis_tables(sizes: list[int], device: torch.device) -> tuple[Tensor, ...]:
    """Return ancestor, start and end tables ``[L, n]`` for one axis."""
    n = sizes[-1]
    anc = [torch.arange(n, device=device)]
    for lvl in range(len(sizes) - 2, -1, -1):
        anc.insert(0, parent_index(sizes[lvl + 1], device)[anc[0]])
    starts, ends = [], []
    for lvl, a in enumerate(anc):
        ids = torch.arange(sizes[lvl], device=device)
        # anc is non-decreasing along the axis, so each node is a contiguous run.
        starts.append(torch.searchsorted(a, ids, right=False)[a])
        ends.append(torch.searchsorted(a, ids, right=True)[a])
    return torch.stack(anc), torch.stack(starts), torch.stack(ends)


def build_lattice(
    h: int,
    w: int,
    root_level: int,
    *,
    spatial: bool,
    reference: bool,
    device: torch.device,
) -> Lattice:
    """Choose the levels from ``root_level`` to the grid and tabulate their regions.

    Args:
        h: Grid height.
        w: Grid width.
        root_level: Index into :func:`level_sizes` of the coarsest level searched
            (0 = the 2-sided level, 1 = the paper's 4x4 root on a 14x14 grid).
        spatial: False disables the spatial stage (a single, finest level).
        reference: Apply the reference's width-based level count (width 1 grids
            get no spatial levels).
        device: Where the tables live.
    """
    sizes = level_sizes(h, w)
    root = min(root_level, len(sizes) - 1)
    used = sizes[root:]
    if not spatial or (reference and w == 1):
        used = sizes[-1:]
    anc_y, start_y, end_y = _axis_tables([s[0] for s in used], device)
    anc_x, start_x, end_x = _axis_tables([s[1] for s in used], device)
    return Lattice(tuple(used), anc_y, anc_x, start_y, end_y, start_x, end_x)


def _pool(x: Tensor, *, sums: bool, dtype: torch.dtype) -> Tensor:
    """Pool one level into its parents: means (or sums) of 1, 2 or 4 children.

    Strided sums straight into the result: no padded copy, one fresh tensor. Each
    2x2 window is summed in the order ``((x00 + x01) + x10) + x11`` and then divided
    by the child count, which is bit-identical to ``avg_pool2d`` (and to zero-padding
    an odd axis in front, which the reference's pooling amounts to).

    Args:
        x: ``[T, h, w, C]`` child level.
        sums: Return sums instead of means (the area-weighted pyramid).
        dtype: Dtype of the result (each level is rounded once, as the reference
            rounds its model-dtype pooling).
    """
    t, h, w, c = x.shape
    oy, ox = h % 2, w % 2  # an odd axis starts with a 1-wide border
    xf = x.float()
    out = xf.new_empty(t, (h + oy) // 2, (w + ox) // 2, c)
    # [T, h', w', C] -> [T, h'/2, 2, w'/2, 2, C] (views of the paired part)
    pairs = xf[:, oy:, ox:].unflatten(1, (-1, 2)).unflatten(3, (-1, 2))
    inner = out[:, oy:, ox:]
    torch.add(pairs[:, :, 0, :, 0], pairs[:, :, 0, :, 1], out=inner)
    inner += pairs[:, :, 1, :, 0]
    inner += pairs[:, :, 1, :, 1]
    if oy:  # top border row: pairs of columns
        row = xf[:, 0, ox:].unflatten(1, (-1, 2))  # [T, w'/2, 2, C]
        torch.add(row[:, :, 0], row[:, :, 1], out=out[:, 0, ox:])
    if ox:  # left border column: pairs of rows
        col = xf[:, oy:, 0].unflatten(1, (-1, 2))  # [T, h'/2, 2, C]
        torch.add(col[:, :, 0], col[:, :, 1], out=out[:, oy:, 0])
    if oy and ox:
        out[:, 0, 0] = xf[:, 0, 0]
    if not sums:
        inner.div_(4)
        if oy:
            out[:, 0, ox:].div_(2)
        if ox:
            out[:, oy:, 0].div_(2)
    return out.to(dtype)


def build_pyramid(
    grid: Tensor, lattice: Lattice, *, sums: bool, dtype: torch.dtype
) -> list[Tensor]:
    """Return the level features, root first; the finest level is ``grid`` itself.

    Args:
        grid: ``[T, H, W, C]`` token features.
        lattice: The levels to build.
        sums: Build sums of the finest patches (``weighted_avg``) instead of means
            of the children.
        dtype: Dtype of the pooled levels.
    """
    levels = [grid]
    for _ in range(lattice.n_levels - 1):
        levels.insert(0, _pool(levels[0], sums=sums, dtype=dtype))
    return levels


def unit(
    x: Tensor, head_dim: int | None, *, temporal: bool, owned: bool = False
) -> Tensor:
    """Return float32 unit vectors of ``x [..., C]``, per head when ``head_dim`` is set.

    The spatial stage divides by ``max(norm, 1e-8)`` (``F.cosine_similarity``) and
    the temporal stage by ``norm + 1e-8``, following the two reference formulas.
    The dot product of two results, summed per head and averaged over heads, is
    their (per-head mean) cosine similarity; see :func:`head_dot`.

    Args:
        x: ``[..., C]`` features, any float dtype.
        head_dim: Head width, or None for the whole vector.
        temporal: Use the temporal stage's normalisation.
        owned: ``x`` may be overwritten (a float32 temporary of the caller); the
            division then happens in place, as it does whenever ``x`` is not float32.
    """
    c = x.shape[-1]
    hd = c if head_dim is None else head_dim
    xf = x.float()
    # [..., C] -> [..., heads, head_dim]
    xh = xf.reshape(*x.shape[:-1], c // hd, hd)
    norm = torch.linalg.vector_norm(xh, dim=-1, keepdim=True)
    norm = norm + SPATIAL_EPS if temporal else norm.clamp_min(SPATIAL_EPS)
    in_place = owned or xf is not x
    out = xh.div_(norm) if in_place else xh / norm
    # [..., heads, head_dim] -> [..., C]
    return out.reshape(x.shape)


def head_dot(prod: Tensor, head_dim: int | None) -> Tensor:
    """Reduce a product of unit vectors ``[..., C]`` to cosines ``[...]``."""
    c = prod.shape[-1]
    hd = c if head_dim is None else head_dim
    # [..., C] -> [..., heads, head_dim]
    out: Tensor = prod.reshape(*prod.shape[:-1], c // hd, hd).sum(-1).mean(-1)
    return out


CHUNK_BYTES = 1 << 22
"""Float32 bytes of child rows scored at once: small enough to stay in cache."""


def chunk_rows(channels: int, per_row: int = 1) -> int:
    """Rows of ``per_row`` vectors of width ``channels`` that fit one chunk."""
    return max(1, CHUNK_BYTES // (4 * channels * per_row))


def _child_slots(
    idx: Tensor, parent_hw: tuple[int, int], child_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Return the flat child index ``[n, 4]`` of parents ``idx`` and slot validity.

    Slots are ordered TL, TR, BL, BR. On an odd child axis the first parent has a
    single child (slot 1 along that axis); its slot 0 does not exist and is given the
    index of the child at ``(t, 0, 0)``, which is what the reference reads there.
    """
    h, w = parent_hw
    hc, wc = child_hw
    t, rem = idx // (h * w), idx % (h * w)
    two = torch.arange(2, device=idx.device)
    ky = 2 * (rem // w)[:, None] + two - hc % 2  # [n, 2] child rows
    kx = 2 * (rem % w)[:, None] + two - wc % 2  # [n, 2] child columns
    valid = (ky >= 0)[:, :, None] & (kx >= 0)[:, None, :]  # [n, 2, 2]
    flat = (t[:, None, None] * hc + ky[:, :, None]) * wc + kx[:, None, :]
    corner = (t * hc * wc)[:, None, None].expand_as(flat)
    flat = torch.where(valid, flat, corner)
    return flat.reshape(-1, 4), valid.reshape(-1, 4)


def score_parents(
    parent: Tensor,
    child: Tensor,
    idx: Tensor,
    head_dim: int | None,
    *,
    read_missing: bool,
) -> Tensor:
    """Return ``[n]`` the stop scores of the level-``parent`` nodes ``idx``.

    A score is the minimum cosine of the parent to its child slots. Children are
    gathered in cache-sized chunks, so only the parents asked for are read and no
    whole-level copy is made.

    Args:
        parent: ``[T, h, w, C]`` parent level.
        child: ``[T, h', w', C]`` child level.
        idx: ``[n]`` flat indices of the parents to score.
        head_dim: Per-head similarity width, or None for the whole vector.
        read_missing: Missing odd-border slots read the child at ``(t, 0, 0)`` (the
            reference); otherwise they are left out, and a parent with a single
            child scores ``-inf`` so that the child (the same region) decides.
    """
    _, h, w, c = parent.shape
    slots, valid = _child_slots(idx, (h, w), (child.shape[1], child.shape[2]))
    pflat, cflat = parent.reshape(-1, c), child.reshape(-1, c)
    out = torch.empty(idx.shape[0], device=parent.device)
    step = chunk_rows(c, 5)
    for lo in range(0, idx.shape[0], step):
        hi = min(lo + step, idx.shape[0])
        # [m*4, C] -> [m, 4, C]: fresh gathers, normalised in place
        rows = cflat.index_select(0, slots[lo:hi].reshape(-1))
        uc = unit(rows, head_dim, temporal=False, owned=True).reshape(hi - lo, 4, c)
        rows = pflat.index_select(0, idx[lo:hi])
        up = unit(rows, head_dim, temporal=False, owned=True)
        sims = head_dot(uc.mul_(up[:, None, :]), head_dim)  # [m, 4]
        if not read_missing:
            sims = sims.masked_fill(~valid[lo:hi], math.inf)
        out[lo:hi] = sims.amin(dim=1)
    if not read_missing:
        single = valid.sum(dim=1) == 1
        out = out.masked_fill(single, -math.inf)
    return out


def stop_scores(
    levels: list[Tensor],
    lattice: Lattice,
    head_dim: int | None,
    *,
    read_missing: bool,
    reach: float | None = None,
    known: list[Tensor] | None = None,
) -> list[Tensor]:
    """Return each non-finest level's stop scores ``[T, h, w]``, root first.

    A parent stops (is kept whole) at threshold ``tau_s`` when its score is at least
    ``tau_s``. The scores do not depend on the threshold, but only the parents that
    the walk can reach need one: with ``reach`` set, a parent below an ancestor
    whose score reaches ``reach`` is never visited for any ``tau_s <= reach`` and is
    left unscored (NaN; it is never read for such ``tau_s``). ``reach=None`` scores
    every parent.

    Args:
        levels: Level features, root first.
        lattice: The levels' geometry.
        head_dim: Per-head similarity width, or None.
        read_missing: See :func:`score_parents`.
        reach: Largest ``tau_s`` the scores must serve, or None for all.
        known: Scores from an earlier call with a smaller ``reach``; only the
            parents they leave unscored and the walk now reaches are scored.

    The root level is scored in full without reading the device; each level
    below reads back once which of its parents the walk reaches.
    """
    t = levels[0].shape[0]
    dev = levels[0].device
    scores: list[Tensor] = []
    alive: Tensor | None = None  # [T, h, w] parents the walk reaches
    for lvl in range(len(levels) - 1):
        h, w = lattice.sizes[lvl]
        if alive is None:  # the root: the walk reaches every parent
            if known is None:
                idx = torch.arange(t * h * w, device=dev)
                score = score_parents(
                    levels[lvl],
                    levels[lvl + 1],
                    idx,
                    head_dim,
                    read_missing=read_missing,
                ).reshape(t, h, w)
            else:  # scored in full by the first call
                score = known[lvl]
        else:
            if known is None:
                score = torch.full((t, h, w), math.nan, device=dev)
            else:
                score = known[lvl].clone()
            todo = torch.isnan(score) & alive
            idx = torch.nonzero(todo.reshape(-1)).squeeze(1)  # one read-back
            if idx.numel():
                score.view(-1)[idx] = score_parents(
                    levels[lvl],
                    levels[lvl + 1],
                    idx,
                    head_dim,
                    read_missing=read_missing,
                )
        scores.append(score)
        if reach is not None:
            go_on = score < reach
        else:
            go_on = torch.ones((t, h, w), dtype=torch.bool, device=dev)
        if alive is not None:
            go_on &= alive
        hc, wc = lattice.sizes[lvl + 1]
        py, px = parent_index(hc, dev), parent_index(wc, dev)
        alive = go_on[:, py][:, :, px]  # [T, h', w']
    return scores


def patch_scores(scores: list[Tensor], lattice: Lattice, t: int) -> Tensor:
    """Spread the level scores to the patches: ``[L-1, T, H, W]`` ancestor scores."""
    h, w = lattice.sizes[-1]
    if not scores:
        return torch.empty(0, t, h, w, device=lattice.anc_y.device)
    rows = [
        s.index_select(1, lattice.anc_y[lvl]).index_select(2, lattice.anc_x[lvl])
        for lvl, s in enumerate(scores)
    ]
    return torch.stack(rows)


@dataclass(frozen=True)
class Partition:
    """The nodes kept by the spatial stage, over all frames.

    Node ids follow the reference's output order: frame, then the raster order of
    each node's top-left patch.

    Attributes:
        node: ``[T, H, W]`` id of the node holding each patch.
        level: ``[T, H, W]`` level that node was kept at.
        is_top_left: ``[T, H, W]`` whether the patch is its node's top-left corner.
        area: ``[T, H, W]`` patch count of the patch's node.
        tl_index: ``[Nn]`` flat patch index of each node's top-left corner.
        tlbr: ``[Nn, 5]`` each node's ``(t, y0, x0, y1, x1)`` in patch units.
        pair_index: ``[P]`` flat index into ``[T-1, H, W]`` of the patches where
            the nested pairs of consecutive frames are read (see
            :func:`pair_patches`), in raster order.
    """

    node: Tensor
    level: Tensor
    is_top_left: Tensor
    area: Tensor
    tl_index: Tensor
    tlbr: Tensor
    pair_index: Tensor

    @property
    def n_nodes(self) -> int:
        """Number of nodes ``Nn``."""
        return int(self.tl_index.shape[0])


def stop_levels(pscores: Tensor, n_levels: int, tau_s: float) -> Tensor:
    """Return ``[T, H, W]`` the level each patch's node is kept at for ``tau_s``.

    A patch joins its first ancestor, root first, whose score reaches ``tau_s``.
    """
    if n_levels == 1:
        return torch.zeros(pscores.shape[1:], dtype=torch.long, device=pscores.device)
    lvl = torch.zeros(pscores.shape[1:], dtype=torch.long, device=pscores.device)
    going = torch.ones(pscores.shape[1:], dtype=torch.bool, device=pscores.device)
    for score in pscores:  # [T, H, W] per level, root first
        going &= score < tau_s
        lvl += going
    return lvl


def partition(pscores: Tensor, lattice: Lattice, tau_s: float) -> Partition:
    """Cut the quadtree at ``tau_s``: each patch joins its first stopping ancestor.

    Args:
        pscores: ``[L-1, T, H, W]`` from :func:`patch_scores`.
        lattice: The levels.
        tau_s: Spatial threshold.
    """
    return partition_at(stop_levels(pscores, lattice.n_levels, tau_s), lattice)


def compact(mask: Tensor, size: int) -> Tensor:
    """Return the indices of the ``True`` entries of ``mask [N]``, in order.

    ``size`` is their number, known on the host, so unlike ``nonzero`` nothing is
    read back from the device: each entry goes to its rank among the ``True`` ones
    (a cumulative sum), the others to a spare slot that is dropped.
    """
    n = mask.shape[0]
    rank = torch.cumsum(mask, 0) - 1
    slot = torch.where(mask, rank, size)
    out = torch.empty(size + 1, dtype=torch.long, device=mask.device)
    out.scatter_(0, slot, torch.arange(n, device=mask.device))
    return out[:size]


def pair_patches(area: Tensor, is_tl: Tensor) -> Tensor:
    """Return ``[T-1, H, W]``: the patches where a nested pair is read.

    A pair of frames ``t`` and ``t+1`` is read at the top-left patch of its smaller
    node (either one when the regions are equal), so each pair appears once.
    """
    return torch.where(area[:-1] >= area[1:], is_tl[1:], is_tl[:-1])


def partition_at(lvl: Tensor, lattice: Lattice) -> Partition:
    """Build the partition whose patches are kept at levels ``lvl [T, H, W]``.

    ``lvl`` must be constant over each node it names (as :func:`stop_levels` is).
    The node and pair counts are read back from the device together, once: they
    size everything after the cut.
    """
    t, h, w = lvl.shape
    dev = lvl.device
    yy = torch.arange(h, device=dev)[None, :, None].expand(t, h, w)
    xx = torch.arange(w, device=dev)[None, None, :].expand(t, h, w)
    y0, y1 = lattice.start_y[lvl, yy], lattice.end_y[lvl, yy]
    x0, x1 = lattice.start_x[lvl, xx], lattice.end_x[lvl, xx]
    is_tl = (y0 == yy) & (x0 == xx)
    area = (y1 - y0) * (x1 - x0)
    at_pair = pair_patches(area, is_tl).reshape(-1)  # [(T-1)*H*W]
    flat_tl = is_tl.reshape(-1)
    n_nodes, n_pairs = torch.stack([flat_tl.sum(), at_pair.sum()]).tolist()
    tt = torch.arange(t, device=dev)[:, None, None]
    tl_flat = ((tt * h + y0) * w + x0).reshape(-1)  # [T*H*W]
    ids = torch.cumsum(flat_tl, 0) - 1
    node = ids[tl_flat].reshape(t, h, w)
    tl_index = compact(flat_tl, n_nodes)
    tlbr = torch.stack(
        [
            tl_index // (h * w),
            y0.reshape(-1)[tl_index],
            x0.reshape(-1)[tl_index],
            y1.reshape(-1)[tl_index],
            x1.reshape(-1)[tl_index],
        ],
        dim=1,
    )
    pair_index = compact(at_pair, n_pairs)
    return Partition(node, lvl, is_tl, area, tl_index, tlbr, pair_index)


def level_tally(keys: Tensor, n_bins: int) -> Tensor:
    """Return ``[n_bins]`` how often each key occurs, without a read-back.

    ``torch.bincount`` reads the largest key back to size its result on CUDA; the
    number of bins is known here, so a scatter into zeros does the same work.
    """
    out = torch.zeros(n_bins, dtype=torch.long, device=keys.device)
    return out.index_add_(0, keys, torch.ones_like(keys))


def node_features(
    levels: list[Tensor],
    lattice: Lattice,
    part: Partition,
    dtype: torch.dtype,
    ids: Tensor | None = None,
    counts: list[int] | None = None,
) -> Tensor:
    """Return ``[n, C]`` the level feature of nodes ``ids`` (default: all, in order).

    The nodes are grouped by level with a stable sort, each level's rows gathered
    in cache-sized pieces. ``counts`` (how many of ``ids`` sit at each level)
    sizes the groups; callers that read it back together with other values pass
    it, else it is read back here, once.
    """
    c = levels[-1].shape[-1]
    tl = part.tl_index if ids is None else part.tl_index[ids]
    box = part.tlbr if ids is None else part.tlbr[ids]
    lvl = part.level.reshape(-1)[tl]
    t, y0, x0 = box[:, 0], box[:, 1], box[:, 2]
    out = levels[-1].new_empty(tl.shape[0], c, dtype=dtype)
    if len(levels) == 1:
        order, counts = torch.arange(tl.shape[0], device=tl.device), [tl.shape[0]]
    else:
        if counts is None:
            counts = level_tally(lvl, len(levels)).tolist()
        order = torch.sort(lvl, stable=True).indices  # by level, then position
    start = 0
    for i, feats in enumerate(levels):
        sel = order[start : start + counts[i]]
        start += counts[i]
        if sel.numel() == 0:
            continue
        h, w = feats.shape[1], feats.shape[2]
        ay = lattice.anc_y[i][y0[sel]]
        ax = lattice.anc_x[i][x0[sel]]
        # [T, h, w, C] -> [T*h*w, C]
        src = (t[sel] * h + ay) * w + ax
        flat = feats.reshape(-1, c)
        step = chunk_rows(c)  # cache-sized pieces: the temporary stays in cache
        for lo in range(0, sel.shape[0], step):
            rows = flat.index_select(0, src[lo : lo + step])
            out.index_copy_(0, sel[lo : lo + step], rows.to(dtype))
    return out


def node_intervals(pscores: Tensor, lattice: Lattice) -> tuple[Tensor, Tensor]:
    """Return ``(low, high)``: each tree node is kept for ``low < tau_s <= high``.

    One entry per node of every level (at its top-left patch): ``low`` is the
    highest score among its ancestors (a node is reached while none of them stops)
    and ``high`` its own score (``inf`` at the finest level, where every reached
    node is kept). The spatial node count at any ``tau_s`` is then the number of
    intervals holding it, which the budget search reads off two sorted arrays
    without cutting the tree (see :func:`count_nodes`).
    """
    n_lv = lattice.n_levels
    _, t, h, w = pscores.shape
    dev = pscores.device
    inf = torch.full((1, t, h, w), math.inf, device=dev)
    # Unscored parents (NaN) lie below a node that stops at every threshold served.
    scored = pscores.nan_to_num(nan=-math.inf)
    high = torch.cat([scored, inf])  # [L, T, H, W]
    low = torch.cat([-inf, scored]).cummax(dim=0).values[:n_lv]
    yy, xx = torch.arange(h, device=dev), torch.arange(w, device=dev)
    tl_y = lattice.start_y == yy  # [L, H]
    tl_x = lattice.start_x == xx  # [L, W]
    tl = (tl_y[:, :, None] & tl_x[:, None, :])[:, None].expand(n_lv, t, h, w)
    return low[tl], high[tl]


def count_nodes(low: Tensor, high: Tensor, taus: Tensor) -> Tensor:
    """Return ``[K]`` the spatial node count at each threshold of ``taus``.

    Counts the intervals ``low < tau <= high`` of :func:`node_intervals`, as
    ``#{high >= tau} - #{min(low, high) >= tau}``.
    """
    hs = torch.sort(high).values
    ms = torch.sort(torch.minimum(low, high)).values
    above_h = hs.shape[0] - torch.searchsorted(hs, taus, right=False)
    above_m = ms.shape[0] - torch.searchsorted(ms, taus, right=False)
    return above_h - above_m
