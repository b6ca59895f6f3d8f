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

import torch
from torch import Tensor

from tokenred_sttm.quadtree import Partition, head_dot, unit


def candidate_pairs(part: Partition) -> tuple[Tensor, Tensor]:
    """Return ``(dst, src)``: node ids of nested pairs in consecutive frames.

    ``dst`` is the node in frame ``t`` and ``src`` the node in frame ``t+1``; each
    pair appears once, in raster order of its smaller node's top-left patch.
    """
    a, b = part.node[:-1], part.node[1:]  # [T-1, H, W]
    area_a, area_b = part.area[:-1], part.area[1:]
    tl_a, tl_b = part.is_top_left[:-1], part.is_top_left[1:]
    canonical = torch.where(area_a >= area_b, tl_b, tl_a)
    return a[canonical], b[canonical]


def pair_similarity(
    feats: Tensor, dst: Tensor, src: Tensor, head_dim: int | None
) -> Tensor:
    """Return ``[P]`` float32 cosines of node pairs, normalised as the reference does.

    Each vector is divided by ``norm + 1e-8``.

    Args:
        feats: ``[Nn, C]`` node features.
        dst: ``[P]`` first node of each pair.
        src: ``[P]`` second node of each pair.
        head_dim: Per-head similarity width, or None.
    """
    u = unit(feats, head_dim, temporal=True)  # [Nn, C] float32
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
        feats: ``[Nn, C]`` node values (means, or sums for area weighting).
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
    acc = torch.zeros(n, feats.shape[1], dtype=acc_dtype, device=feats.device)
    acc.index_add_(0, rep, feats.to(acc_dtype))
    denom = torch.zeros(n, dtype=weights.dtype, device=feats.device)
    denom.index_add_(0, rep, weights)
    keep = torch.nonzero(rep == torch.arange(n, device=rep.device)).squeeze(1)
    out = acc.index_select(0, keep) / denom.index_select(0, keep)[:, None]
    return out.to(out_dtype), keep
