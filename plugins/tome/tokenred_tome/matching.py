"""Bipartite soft matching (ToMe) over the visual tokens of a video.

Paper: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023,
https://arxiv.org/abs/2210.09461. Video adaptation as run by the STTM paper
(Hyun et al., ICCV 2025, https://arxiv.org/abs/2507.07990).

Reference: https://github.com/HYUNJS/STTM@00736c7
(token_merging_utils/tome_token_merger.py, ``tome_per_video`` / ``tome_per_frame``),
itself derived from https://github.com/facebookresearch/ToMe (tome/merge.py).

One round splits the current sequence alternately into sets A (even positions) and
B (odd positions), links every A token to its most cosine-similar B token, and merges
the ``r`` best-linked A tokens into their B partners with size-weighted averages.
Rounds repeat, each removing at most half of the tokens, until exactly ``target``
tokens remain. Between rounds the sequence is kept in the reference's internal order
(unmerged A tokens sorted by link strength, then the B tokens), because the next
round's even/odd split depends on it.

Deviations from reference:
    - Similarities and running averages are computed in float32 whatever the input
      dtype (the reference works in the model dtype, bf16 in the paper's runs).
    - Similarities are rounded to :data:`tokenred.determinism.SCORE_GRID` (~1e-3)
      before links are chosen and ranked, and ties are broken by position (first
      best B token, stable sort of link strengths); the reference ranks raw values
      and its ``argsort`` leaves tie order unspecified. Without the rounding,
      near-duplicate background tokens are ordered by float noise, and the answers
      changed between machines.
    - Zero-norm features are given cosine 0 (the reference divides by zero).
    - The similarity rows are computed in chunks to bound memory; the values are
      identical.
    - This module returns only the assignment of every input token to its merged
      group. The caller builds the output with size-weighted means of the *original*
      tokens (equal to the reference's cascaded weighted means up to rounding) and
      orders outputs by earliest source, not in the reference's internal order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokenred import stable_scores

_EPS = 1e-12
_ROW_CHUNK = 4096


def _best_links(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Return the best cosine similarity of each A token to B and the B index.

    Args:
        a: ``[G, nA, C]`` unit-norm float32 metric of set A.
        b: ``[G, nB, C]`` unit-norm float32 metric of set B.

    Returns:
        ``([G, nA], [G, nA])`` best score (on the :func:`stable_scores` grid) and the
        index of the B token reaching it (the first one on ties, as ``torch.max``
        does).
    """
    maxes, idxs = [], []
    bt = b.transpose(1, 2)  # [G, nB, C] -> [G, C, nB]
    for start in range(0, a.shape[1], _ROW_CHUNK):
        scores = a[:, start : start + _ROW_CHUNK] @ bt  # [G, chunk, nB]
        # Near-duplicate tokens (static backgrounds) tie up to float noise, which
        # differs between CPUs and GPUs: rank on a fixed grid, first index on ties.
        m, i = stable_scores(scores).max(dim=-1)
        maxes.append(m)
        idxs.append(i)
    return torch.cat(maxes, dim=1), torch.cat(idxs, dim=1)


def bipartite_round(x: Tensor, sizes: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """Run one round of bipartite soft matching on every group at once.

    Args:
        x: ``[G, n, C]`` float32 features of the current tokens.
        sizes: ``[G, n]`` float32 patch counts of the current tokens.
        r: Tokens to remove per group, ``1 <= r <= n // 2``.

    Returns:
        ``(x', sizes', new_pos)``: ``[G, n - r, C]`` size-weighted merged features,
        ``[G, n - r]`` summed sizes, and ``[G, n]`` the position each current token
        takes in the new sequence.
    """
    g, n, c = x.shape
    dev = x.device
    metric = x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    n_a = (n + 1) // 2
    # Alternating split: even positions form A (merge sources), odd ones B.
    node_max, node_idx = _best_links(metric[:, ::2], metric[:, 1::2])  # [G, nA]
    order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n_a, device=dev).expand(g, n_a))
    n_unm = n_a - r
    # New sequence = [unmerged A in link order, B in place]; merged A go to their B.
    pos_a = torch.where(rank < r, n_unm + node_idx, rank - r)  # [G, nA]
    new_pos = torch.empty(g, n, dtype=torch.long, device=dev)
    new_pos[:, ::2] = pos_a
    new_pos[:, 1::2] = n_unm + torch.arange(n // 2, device=dev)
    n_new = n - r
    new_sizes = torch.zeros(g, n_new, dtype=x.dtype, device=dev)
    new_sizes = new_sizes.scatter_add(1, new_pos, sizes)
    acc = torch.zeros(g, n_new, c, dtype=x.dtype, device=dev)
    acc = acc.scatter_add(1, new_pos[..., None].expand(g, n, c), x * sizes[..., None])
    return acc / new_sizes[..., None], new_sizes, new_pos


def merge_to_target(
    x: Tensor, sizes: Tensor, target: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Merge every group down to exactly ``target`` tokens.

    Each round removes ``min(n - target, n // 2)`` tokens, as the reference does.

    Args:
        x: ``[G, n0, C]`` float32 features.
        sizes: ``[G, n0]`` float32 patch counts.
        target: Tokens to keep per group, ``1 <= target``.

    Returns:
        ``(x', sizes', slot, rounds)``: the merged ``[G, target', C]`` features and
        ``[G, target']`` sizes with ``target' = min(target, n0)``, ``[G, n0]`` the
        slot of every input token in the merged sequence, and the number of rounds.
    """
    g, n0, _ = x.shape
    slot = torch.arange(n0, device=x.device).expand(g, n0)
    rounds = 0
    while x.shape[1] > target:
        n = x.shape[1]
        x, sizes, new_pos = bipartite_round(x, sizes, min(n - target, n // 2))
        slot = new_pos.gather(1, slot)  # [G, n0] position after this round
        rounds += 1
    return x, sizes, slot, rounds


def tome_video(features: Tensor, sizes: Tensor, target: int) -> tuple[Tensor, int]:
    """Match over all tokens of the video at once (the paper's ``video`` version).

    Args:
        features: ``[N, C]`` token features in sequence order.
        sizes: ``[N]`` patch counts (1 for original tokens).
        target: Output token count.

    Returns:
        ``([N] group label of every token, rounds)``.
    """
    # [N, C] -> [1, N, C]: the whole video is one matching group.
    x = features.to(torch.float32)[None]
    _, _, slot, rounds = merge_to_target(x, sizes.to(torch.float32)[None], target)
    return slot[0], rounds


def tome_frames(
    features: Tensor, sizes: Tensor, frames: int, target: int
) -> tuple[Tensor, int]:
    """Match within each frame separately (the paper's ``frame`` version).

    Every frame is merged to ``ceil(target / frames)`` tokens (at least one). When
    that overshoots the target, the remaining merges run as video-level rounds over
    the concatenated frame outputs.

    Args:
        features: ``[T*HW, C]`` original tokens, frame by frame.
        sizes: ``[T*HW]`` patch counts.
        frames: ``T``.
        target: Output token count, ``1 <= target``.

    Returns:
        ``([T*HW] group label of every token, rounds)``.
    """
    n, c = features.shape
    per = n // frames
    # [T*HW, C] -> [T, HW, C]: each frame is its own matching group.
    x = features.to(torch.float32).reshape(frames, per, c)
    s = sizes.to(torch.float32).reshape(frames, per)
    per_target = max(1, math.ceil(target / frames))
    x, s, slot, rounds = merge_to_target(x, s, per_target)
    kept = x.shape[1]
    # [T, HW] local slots -> [T*HW] slots in the concatenated sequence.
    offsets = torch.arange(frames, device=x.device)[:, None] * kept
    label = (slot + offsets).reshape(-1)
    if frames * kept > target:
        # [T, kept, C] -> [1, T*kept, C]: remainder merges across frames.
        _, _, slot2, extra = merge_to_target(
            x.reshape(1, frames * kept, c), s.reshape(1, -1), target
        )
        label = slot2[0][label]
        rounds += extra
    return label, rounds
