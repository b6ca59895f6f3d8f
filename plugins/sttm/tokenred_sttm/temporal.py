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
    * ``fixed`` mode accumulates merged features in float32 and rounds once (the
      more accurate sum); ``reference`` mode rounds to the model dtype after every
      addition, as the reference's ``index_add_`` with an int32 index does on CPU
      (under bfloat16 the two differ by 1-2 steps of the last bit).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tokenred_sttm.quadtree import (
    Lattice,
    Partition,
    chunk_rows,
    compact,
    head_dot,
    level_tally,
    node_features,
    unit,
)


def candidate_pairs(part: Partition) -> tuple[Tensor, Tensor]:
    """Return ``(dst, src)``: node ids of nested pairs in consecutive frames.

    ``dst`` is the node in frame ``t`` and ``src`` the node in frame ``t+1``; each
    pair appears once, in raster order of its smaller node's top-left patch
    (:attr:`Partition.pair_index`).
    """
    _, h, w = part.node.shape
    at = part.pair_index
    flat = part.node.reshape(-1)  # [T*H*W]
    return flat[at], flat[at + h * w]


def pair_keys(part: Partition, lattice: Lattice) -> Tensor:
    """Return ``[P]`` a key per candidate pair that is the same in every partition.

    A nested pair is fixed by the frame, the levels ``(la, lb)`` of its two nodes
    and the finer node's position, so the key indexes a virtual table of every pair
    the tree could ever form (``(2L - 1)``-ish times the patch count). The budget
    search caches cosines under these keys, so a pair met in several cuts is
    computed once. Same order as :func:`candidate_pairs`.
    """
    sizes = torch.tensor(lattice.sizes, device=part.node.device)  # [L, 2]
    offset = key_offsets(lattice, part.node.shape[0]).to(part.node.device)
    _, hh, ww = part.node.shape
    at = part.pair_index
    t, y, x = at // (hh * ww), (at // ww) % hh, at % ww
    levels = part.level.reshape(-1)  # [T*H*W]
    la, lb = levels[at], levels[at + hh * ww]
    fine = torch.maximum(la, lb)
    h, w = sizes[fine, 0], sizes[fine, 1]
    iy, ix = lattice.anc_y[fine, y], lattice.anc_x[fine, x]
    keys: Tensor = offset[la, lb] + (t * h + iy) * w + ix
    return keys


def _key_starts(lattice: Lattice, t_len: int) -> list[int]:
    """Return the first key of each level pair ``(la, lb)``, row-major, and the end.

    The keys of pair ``(la, lb)`` are ``[T-1, h_f, w_f]`` raster indices at the
    finer level ``f = max(la, lb)``, after the blocks of the earlier level pairs.
    Plain integers: the sizes are known on the host.
    """
    n_lv = lattice.n_levels
    starts = [0]
    for la in range(n_lv):
        for lb in range(n_lv):
            h, w = lattice.sizes[max(la, lb)]
            starts.append(starts[-1] + (t_len - 1) * h * w)
    return starts


def key_offsets(lattice: Lattice, t_len: int) -> Tensor:
    """Return ``[L, L]`` the first key of each level pair ``(la, lb)``."""
    n_lv = lattice.n_levels
    starts = _key_starts(lattice, t_len)[:-1]
    return torch.tensor(starts, dtype=torch.long).reshape(n_lv, n_lv)


def n_pair_keys(lattice: Lattice, t_len: int) -> int:
    """Number of distinct keys :func:`pair_keys` can return."""
    return _key_starts(lattice, t_len)[-1]


def finest_pair_cosines(grid: Tensor, head_dim: int | None) -> Tensor:
    """Return ``[(T-1)*H*W]`` the cosines of each patch with itself one frame later.

    These are the pairs of two finest-level nodes, the bulk of a fine cut's pairs.
    Streams the frames in cache-sized chunks (no gather, no whole-grid copy) and
    does the same arithmetic as :func:`pair_cosines`, so the values are identical.
    """
    t, h, w, c = grid.shape
    out = torch.empty(t - 1, h, w, device=grid.device)
    step = max(1, chunk_rows(c, 1) // (h * w))
    prev: Tensor | None = None
    for lo in range(0, t, step):
        u = unit(grid[lo : lo + step], head_dim, temporal=True)  # [t', H, W, C] f32
        if prev is not None:
            out[lo - 1] = head_dot(prev * u[0], head_dim)
        if u.shape[0] > 1:
            out[lo : lo + u.shape[0] - 1] = head_dot(u[:-1] * u[1:], head_dim)
        prev = u[-1]
    return out.reshape(-1)


def pair_cosines(
    levels: list[Tensor],
    lattice: Lattice,
    part: Partition,
    dst: Tensor,
    src: Tensor,
    head_dim: int | None,
    dtype: torch.dtype,
) -> Tensor:
    """Return ``[P]`` float32 cosines of node pairs, normalised as the reference does.

    Each vector is divided by ``norm + 1e-8``. Pairs are taken in cache-sized
    chunks and only their own nodes are gathered and normalised, once per chunk
    however many of its pairs they are in, so no ``[Nn, C]`` copy of the node
    features is made.

    The distinct nodes of every chunk are found at once, by one sort of
    ``(chunk, node)`` keys, and how many of them sit at each quadtree level is
    read back in one go before the first chunk: that sizes every gather, so the
    chunks themselves read nothing back (a per-chunk ``unique`` would read back
    its size each time).

    Args:
        levels: Level features, root first.
        lattice: The levels' geometry.
        part: The partition the node ids refer to.
        dst: ``[P]`` first node of each pair.
        src: ``[P]`` second node of each pair.
        head_dim: Per-head similarity width, or None.
        dtype: Dtype of the node features (the levels' working dtype).
    """
    n_pairs = dst.shape[0]
    dev = dst.device
    out = torch.empty(n_pairs, device=dev)
    if n_pairs == 0:
        return out
    step = chunk_rows(levels[-1].shape[-1], 2)
    n_chunks = -(-n_pairs // step)
    n_lv, n_nodes = len(levels), part.n_nodes
    chunk = torch.arange(n_pairs, device=dev) // step  # [P]
    key = torch.cat([chunk, chunk]) * n_nodes + torch.cat([dst, src])  # [2P]
    keys, perm = torch.sort(key)
    first = torch.ones_like(keys, dtype=torch.bool)  # [2P] first of its key
    first[1:] = keys[1:] != keys[:-1]
    slot = torch.cumsum(first, 0) - 1  # [2P] index among the distinct keys
    inverse = torch.empty_like(slot).scatter_(0, perm, slot)  # [2P] per end
    node = keys % n_nodes
    level = part.level.reshape(-1)[part.tl_index[node]]
    bins = torch.where(first, (keys // n_nodes) * n_lv + level, n_chunks * n_lv)
    # [chunks, L] distinct nodes of each chunk at each level
    table = level_tally(bins, n_chunks * n_lv + 1)[:-1].reshape(n_chunks, n_lv)
    counts = table.tolist()
    need = node[compact(first, sum(map(sum, counts)))]  # chunk by chunk, sorted
    start = 0
    for k, row in enumerate(counts):
        lo, hi = k * step, min((k + 1) * step, n_pairs)
        stop = start + sum(row)
        feats = node_features(levels, lattice, part, dtype, need[start:stop], row)
        u = unit(feats, head_dim, temporal=True, owned=True)  # [m, C]
        prod = u.index_select(0, inverse[lo:hi] - start)
        prod.mul_(u.index_select(0, inverse[n_pairs + lo : n_pairs + hi] - start))
        out[lo:hi] = head_dot(prod, head_dim)
        start = stop
    return out


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
    rep, rounds, _ = propagate_count(dst, src, n, exhaustive=exhaustive)
    return rep, rounds


def propagate_count(
    dst: Tensor,
    src: Tensor,
    n: int,
    *,
    exhaustive: bool,
    first_check: int = 4,
) -> tuple[Tensor, int, int]:
    """:func:`propagate` that also counts the groups, reading the device rarely.

    Rounds run on the device in blocks, and the host reads back once per block:
    one or a few synchronisations per labelling instead of one per round. Each
    round's labelling is kept (every round makes a fresh tensor anyway), and the
    stop tests of a block are evaluated together at its end, so the labelling
    returned and the round count are those of testing after every round.

    Labels only decrease: each round takes minima, and ``rep[rep] <= rep`` since
    every label is at most its node's id. So two labellings are equal exactly
    when their sums are, which makes the stop tests one sum per round: a round
    changed nothing (exhaustive), or its labelling is idempotent (the reference's
    early stop).

    The first block has ``first_check`` rounds, the second half as many, then
    they double: a good guess costs one read-back and no extra rounds.

    Args:
        dst: ``[E]`` earlier-frame end of each edge.
        src: ``[E]`` later-frame end of each edge.
        n: Number of nodes.
        exhaustive: See :func:`propagate`.
        first_check: Rounds run before the first read-back (at least 1).

    Returns:
        The representatives ``[n]``, the rounds run and the number of groups.
    """
    ids = torch.arange(n, device=dst.device)
    rep = ids
    rounds = 0
    block = max(first_check, 1)
    while True:
        start = rep.sum()[None]  # [1] the labelling before the block
        reps = []
        for _ in range(block):
            low = torch.minimum(rep[dst], rep[src])
            nxt = rep.scatter_reduce(0, dst, low, reduce="amin")
            nxt = nxt.scatter_reduce(0, src, low, reduce="amin")
            rep = nxt[nxt]
            reps.append(rep)
        stacked = torch.stack(reps)  # [B, n] the block's labellings
        sums = stacked.sum(dim=1)  # [B]
        if exhaustive:  # round j changed nothing; later rounds change nothing
            stop = sums == torch.cat([start, sums[:-1]])
            n_out = (rep == ids).sum().expand(block)  # [B] the last round's count
        else:  # round j's labelling is idempotent
            stop = sums == stacked.gather(1, stacked).sum(dim=1)
            n_out = (stacked == ids).sum(dim=1)  # [B]
        read = torch.cat([stop.long(), n_out]).tolist()
        if any(read[:block]):
            j = read.index(1)
            return reps[j], rounds + j + 1, int(read[block + j])
        rounds += block
        block = max(block // 2, 1) if rounds == first_check else 2 * block


def aggregate(
    gather: Callable[[Tensor, list[int]], Tensor],
    weights: Tensor,
    rep: Tensor,
    node_level: Tensor,
    n_levels: int,
    *,
    acc_dtype: torch.dtype,
    out_dtype: torch.dtype,
    stepwise: bool = False,
    unit_weights: bool = False,
) -> tuple[Tensor, Tensor]:
    """Average every group into its representative, in node order.

    Only the representatives' rows (into the output) and the other members' rows
    (to be added) are gathered, once each. How many of each sit at each quadtree
    level is read back from the device in one go; it sizes both gathers.

    Args:
        gather: Returns ``[n, C]`` node values (means, or sums for area
            weighting) of the given node ids, in ``acc_dtype``, as a new tensor,
            given how many of them sit at each level.
        weights: ``[Nn]`` divisor contribution of each node: 1 for plain means over
            the members, the node's patch count for area-weighted means.
        rep: ``[Nn]`` representative of each node.
        node_level: ``[Nn]`` quadtree level of each node.
        n_levels: Number of levels.
        acc_dtype: Accumulator dtype (the reference uses the model dtype).
        out_dtype: Output dtype.
        stepwise: Round the running sums to ``acc_dtype`` after every addition,
            as the reference does. ``index_add_`` on CPU does this with an int32
            index but, with an int64 index, accumulates in float32 and rounds once
            (more accurate, but 1-2 bfloat16 steps away from the reference).
        unit_weights: Every weight is 1 (plain means), so groups of one need no
            division. Dividing by 1 changes no bit either; this only saves a pass.

    Returns:
        ``[N', C]`` merged features and ``[N']`` ids of the representatives, both in
        increasing id order (the output order).
    """
    n = rep.shape[0]
    idx = torch.arange(n, device=rep.device)
    is_rep = rep == idx
    # [2 * L]: representatives per level, then the other members per level
    tally = level_tally(node_level + n_levels * (~is_rep).long(), 2 * n_levels)
    counts = tally.tolist()
    keep_counts, other_counts = counts[:n_levels], counts[n_levels:]
    n_keep = sum(keep_counts)
    keep = compact(is_rep, n_keep)
    out = gather(keep, keep_counts)  # [N', C]
    if n_keep < n:
        others = compact(~is_rep, n - n_keep)
        # A representative is its group's smallest id, so starting from its own
        # row and adding the other members in id order gives the reference's sums
        # (zeros + members in id order) without a zero-filled accumulator.
        slot = torch.full((n,), -1, dtype=torch.long, device=rep.device)
        slot[keep] = torch.arange(keep.shape[0], device=rep.device)
        target = slot[rep[others]]
        index = target.to(torch.int32) if stepwise else target
        out.index_add_(0, index, gather(others, other_counts))
        denom = weights.clone().index_add_(0, rep[others], weights[others])[keep]
        out.div_(denom[:, None])
    elif not unit_weights:
        out.div_(weights[keep][:, None])
    return out.to(out_dtype), keep
