"""STTM's temporal stage: directed merging of quadtree nodes across adjacent frames.

Paper: https://arxiv.org/abs/2507.07990 (section 3.3). Reference implementation:
https://github.com/HYUNJS/STTM@00736c7 (``token_merging_utils/
quadtree_temporal_merger.py``), read for behaviour only; nothing here is copied.

Candidates are node pairs of frames ``t`` and ``t+1`` whose regions are nested. All
frames share one lattice, so two regions overlap exactly when they are nested, and
the pair is found at the patches they share. Each pair is read once, at the top-left
patch of its smaller node, which makes the search ``O(T*H*W)`` in time and memory
instead of the reference's padded ``[T-1, M, M]`` comparison. A pair whose float32
cosine reaches ``tau_t`` is an edge; labels (node ids, which are in output order)
flow along the edges toward the minimum, so every group merges into its earliest
frame and, within it, its top-left node.

Deviations from reference:
    * ``reference`` mode copies the label propagation loop exactly, including its
      early stop at the first idempotent labelling (which can leave a node that is
      connected to an earlier one unmerged); ``fixed`` mode iterates to the full
      connected components.
    * ``fixed`` mode accumulates merged features in float32 and rounds once; the
      reference accumulates in the model dtype (kept in ``reference`` mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenred_sttm.quadtree import Lattice, Partition, head_dot, unit


def _canonical(part: Partition) -> Tensor:
    """Return ``[T-1, H, W]``: the patches where a nested pair is read.

    A pair of frames ``t`` and ``t+1`` is read at the top-left patch of its smaller
    node (either one when the regions are equal), so each pair appears once.
    """
    area_a, area_b = part.area[:-1], part.area[1:]
    tl_a, tl_b = part.is_top_left[:-1], part.is_top_left[1:]
    return torch.where(area_a >= area_b, tl_b, tl_a)


def candidate_pairs(part: Partition) -> tuple[Tensor, Tensor]:
    """Return ``(dst, src)``: node ids of nested pairs in consecutive frames.

    ``dst`` is the node in frame ``t`` and ``src`` the node in frame ``t+1``; each
    pair appears once, in raster order of its smaller node's top-left patch.
    """
    canonical = _canonical(part)
    return part.node[:-1][canonical], part.node[1:][canonical]


@dataclass(frozen=True)
class PairTables:
    """The cosine of every potential nested pair, for the budget search.

    For frames ``t`` and ``t+1`` and levels ``(la, lb)``, table ``(la, lb)`` holds,
    at the resolution of the finer level ``f = max(la, lb)``, the cosine between the
    level-``la`` node of frame ``t`` and the level-``lb`` node of frame ``t+1`` that
    contain each level-``f`` node. Built once, it turns every later cut of the tree
    into index arithmetic; the values are bit-identical to
    :func:`pair_similarity` on the same nodes.

    Attributes:
        flat: ``[S]`` float32, all tables concatenated, each ``[T-1, h_f, w_f]``.
        offset: ``[L, L]`` start of table ``(la, lb)`` in ``flat``.
    """

    flat: Tensor
    offset: Tensor


def _at_level(u: Tensor, lattice: Lattice, fine: int, coarse: int) -> Tensor:
    """Spread ``[T', h_c, w_c, C]`` level-``coarse`` values over level ``fine``.

    Returns a new tensor when the levels differ, else ``u`` itself.
    """
    if fine == coarse:
        return u
    ys, xs = lattice.ancestors(fine, coarse)
    return u[:, ys[:, None], xs[None, :]]


def build_pair_tables(
    levels: list[Tensor], lattice: Lattice, head_dim: int | None
) -> PairTables:
    """Compute every level pair's cross-frame cosines (one pass per level pair)."""
    units = [unit(v, head_dim, temporal=True) for v in levels]  # [T, h, w, C] f32
    n_lv = len(levels)
    parts = []
    for la in range(n_lv):
        for lb in range(n_lv):
            fine = max(la, lb)
            ua = _at_level(units[la][:-1], lattice, fine, la)
            ub = _at_level(units[lb][1:], lattice, fine, lb)
            # Multiply in place into whichever operand is a fresh gather.
            if la != fine:
                prod = ua.mul_(ub)
            elif lb != fine:
                prod = ub.mul_(ua)
            else:
                prod = ua * ub
            parts.append(head_dot(prod, head_dim).reshape(-1))
            del prod, ua, ub
    counts = torch.tensor([p.numel() for p in parts], device=levels[0].device)
    offset = (torch.cumsum(counts, 0) - counts).reshape(n_lv, n_lv)
    return PairTables(torch.cat(parts), offset)


def table_pairs(
    tables: PairTables, part: Partition, lattice: Lattice
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(dst, src, sims)`` of the nested pairs, looked up in the tables.

    Same pairs, in the same order, as :func:`candidate_pairs`.
    """
    t, y, x = torch.nonzero(_canonical(part), as_tuple=True)
    la, lb = part.level[t, y, x], part.level[t + 1, y, x]
    fine = torch.maximum(la, lb)
    sizes = torch.tensor(lattice.sizes, device=t.device)  # [L, 2]
    h, w = sizes[fine, 0], sizes[fine, 1]
    iy, ix = lattice.anc_y[fine, y], lattice.anc_x[fine, x]
    index = tables.offset[la, lb] + (t * h + iy) * w + ix
    return part.node[t, y, x], part.node[t + 1, y, x], tables.flat[index]


def pair_similarity(
    feats: Tensor, dst: Tensor, src: Tensor, head_dim: int | None, *, owned: bool
) -> Tensor:
    """Return ``[P]`` float32 cosines of node pairs, normalised as the reference does.

    Each vector is divided by ``norm + 1e-8``.

    Args:
        feats: ``[Nn, C]`` node features.
        dst: ``[P]`` first node of each pair.
        src: ``[P]`` second node of each pair.
        head_dim: Per-head similarity width, or None.
        owned: ``feats`` is a temporary that may be normalised in place.
    """
    u = unit(feats, head_dim, temporal=True, owned=owned)  # [Nn, C] float32
    prod = u.index_select(0, dst)
    prod.mul_(u.index_select(0, src))
    sims: Tensor = head_dot(prod, head_dim)
    return sims


def propagate(
    dst: Tensor, src: Tensor, n: int, *, exhaustive: bool
) -> tuple[Tensor, int]:
    """Label nodes by the minimum id reachable along the edges.

    Each round scatters the smaller label of every edge onto both ends and then
    jumps pointers once (``rep = rep[rep]``).

    Args:
        dst: ``[E]`` earlier-frame end of each edge.
        src: ``[E]`` later-frame end of each edge.
        n: Number of nodes.
        exhaustive: Iterate until a round changes nothing (connected components);
            False stops at the first idempotent labelling, exactly as the reference.

    Returns:
        ``[n]`` representative of each node (the minimum id of its group, which is
        itself a member) and the number of rounds run.
    """
    rep = torch.arange(n, device=dst.device)
    rounds = 0
    while True:
        low = torch.minimum(rep[dst], rep[src])
        nxt = rep.scatter_reduce(0, dst, low, reduce="amin")
        nxt = nxt.scatter_reduce(0, src, low, reduce="amin")
        nxt = nxt[nxt]
        rounds += 1
        if exhaustive:
            done = torch.equal(nxt, rep)
        else:
            done = torch.equal(nxt, nxt[nxt])
        rep = nxt
        if done:
            return rep, rounds


def aggregate(
    feats: Tensor,
    weights: Tensor,
    rep: Tensor,
    *,
    acc_dtype: torch.dtype,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Average every group into its representative, in node order.

    Args:
        feats: ``[Nn, C]`` node values (means, or sums for area weighting); a
            temporary that is overwritten when it already has ``acc_dtype``.
        weights: ``[Nn]`` divisor contribution of each node: 1 for plain means over
            the members, the node's patch count for area-weighted means.
        rep: ``[Nn]`` representative of each node.
        acc_dtype: Accumulator dtype (the reference uses the model dtype).
        out_dtype: Output dtype.

    Returns:
        ``[N', C]`` merged features and ``[N']`` ids of the representatives, both in
        increasing id order (the output order).
    """
    n = feats.shape[0]
    idx = torch.arange(n, device=rep.device)
    keep = torch.nonzero(rep == idx).squeeze(1)
    if keep.shape[0] == n:  # nothing merged: each node is its own group
        if not bool((weights != 1).any()):
            return feats.to(out_dtype), keep
        return (feats.to(acc_dtype) / weights[:, None]).to(out_dtype), keep
    # A representative is its group's smallest id, so starting from its own row and
    # adding the other members in id order gives the reference's sums
    # (zeros + members in id order) without a zero-filled accumulator.
    acc = feats.to(acc_dtype)
    others = torch.nonzero(rep != idx).squeeze(1)
    acc.index_add_(0, rep[others], acc.index_select(0, others))
    denom = weights.clone().index_add_(0, rep[others], weights[others])
    out = acc.index_select(0, keep)
    del acc
    out.div_(denom.index_select(0, keep)[:, None])
    return out.to(out_dtype), keep
