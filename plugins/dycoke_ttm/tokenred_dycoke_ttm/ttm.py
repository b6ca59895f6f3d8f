"""DyCoke's temporal token merging (TTM) stage, query-agnostic.

Paper: Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video Large
Language Models", CVPR 2025, https://arxiv.org/abs/2411.15024. Original code:
https://github.com/KD-TAO/DyCoke@26dc6f4 (llava/model/llava_arch.py ``dycole_ttm``).

Reference (as the STTM paper ran "DyCoke-stage1"): https://github.com/HYUNJS/STTM@00736c7
(token_merging_utils/dycoke_merger.py ``dycoke_ttm``, applied at decoder layer 2 by
token_merging_monkey_patch/dycoke_stage1_attn_monkey_patch.py).

The reference works on groups of four frames. In each pair ``(2i, 2i+1)`` the odd
frame keeps the ``int((1 - prune_ratio) * HW)`` tokens *least* cosine-similar to the
same patch position of the even frame; then frame ``4i+2`` is pruned the same way
against frame ``4i`` (for ``i`` in ``range(0, T - 4, 4)``, which skips the last
group when ``T`` is a multiple of four). Frames ``4i`` are always kept whole. The
similarities compare original (unpruned) features, so every pruned frame ``t`` simply
has a reference frame ``ref(t)`` and a score per patch.

Budget mapping. With ``A`` whole ("anchor") frames and ``P`` pruned frames, the
reference keeps ``A * HW + P * int((1 - prune_ratio) * HW)`` tokens. For a budget
``B >= A * HW`` every pruned frame keeps ``q = (B - A*HW) // P`` tokens by the
reference rule and the remaining ``(B - A*HW) - qP`` are the least similar of the
rest over all pruned frames (a global top-k), so the count is exact and equal to the
reference when ``B`` comes from a prune ratio.

Deviations from reference:
    - The keep count comes from the budget (above) instead of ``prune_ratio``.
    - Kept tokens are ordered by position; the reference orders each pruned frame's
      tokens by ``topk`` order (least similar first).
    - Similarities are rounded to :data:`tokenred.determinism.SCORE_GRID` (~1e-3)
      and ties are broken by position (stable sort). Without the rounding, the
      static-background patches (similarity 1.0 up to float noise) were ranked by
      that noise, and the answers changed between machines.
    - ``T <= 4`` and ``T = 1`` work (the reference stacks an empty list and fails).
    - ``reference_groups=false`` also prunes the last group's frame ``4i+2``.
    - Below the reference's floor (``B < A * HW``, under ~25% of the tokens) the
      anchor frames are pruned too, by the same rule one level up: frame ``4i``
      against frame ``4i - 4`` (a tail frame ``4i+2`` against ``4i``), and the first
      frame last, keeping evenly spaced patches when even it does not fit. The
      reference cannot reach such budgets at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenred import stable_scores

PRUNED, ANCHOR, FIRST = 1, 2, 3
"""Frame levels, filled from the highest (kept first) to the lowest."""


def frame_plan(
    frames: int, reference_groups: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Return ``([T] level, [T] reference frame)`` of every frame (-1: none).

    Args:
        frames: ``T``.
        reference_groups: Reproduce the reference's ``range(0, T - 4, 4)``.
        device: Device of the results.
    """
    t = torch.arange(frames, device=device)
    odd = t % 2 == 1
    two = t % 4 == 2
    if reference_groups:
        two = two & (t < frames - 2)
    # where() rather than mask assignment: a boolean index would sync on CUDA.
    level = torch.where(odd | two, PRUNED, ANCHOR)
    level[0] = FIRST
    ref = torch.where(t % 4 == 0, t - 4, t - 2)  # anchors: one level up
    ref = torch.where(odd, t - 1, ref)
    ref[0] = -1
    return level, ref


def similarity_to_reference(x: Tensor, ref: Tensor) -> Tensor:
    """Return ``[T, HW]`` the cosine similarity of every patch to its reference.

    Rounded to the :func:`~tokenred.determinism.stable_scores` grid.

    Args:
        x: ``[T, HW, C]`` features.
        ref: ``[T]`` reference frame of each frame; -1 gives similarity 0.
    """
    x32 = x.to(torch.float32)
    partner = x32.index_select(0, ref.clamp_min(0))  # [T, HW, C]
    # On a fixed grid: static-background patches tie at 1.0 up to float noise,
    # which differs between CPUs and GPUs; the stable sorts then order them by
    # position, the same everywhere.
    sim = stable_scores(F.cosine_similarity(x32, partner, dim=-1))  # [T, HW]
    return torch.where(ref[:, None] >= 0, sim, torch.zeros_like(sim))


def fill_by_dissimilarity(sim: Tensor, count: int) -> Tensor:
    """Keep ``count`` patches of some frames, least similar first.

    Every frame keeps ``count // F`` patches by its own ranking (the reference rule);
    the remainder goes to the least similar of the other patches over all frames.

    Args:
        sim: ``[F, HW]`` similarity of each patch to its reference.
        count: Patches to keep, ``0 <= count <= F * HW``.

    Returns:
        ``[F, HW]`` bool keep mask.
    """
    f, per = sim.shape
    q, extra = divmod(count, f)
    order = torch.sort(sim, dim=1, stable=True).indices  # ascending similarity
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(per, device=sim.device).expand(f, per))
    keep = rank < q
    if extra:
        rest = sim.masked_fill(keep, float("inf")).reshape(-1)  # [F*HW]
        pick = torch.sort(rest, stable=True).indices[:extra]
        keep = keep.reshape(-1).index_fill(0, pick, True).reshape(f, per)
    return keep


def evenly_spaced(per: int, count: int, device: torch.device) -> Tensor:
    """Return a ``[HW]`` mask of ``count`` evenly spaced patches (raster order)."""
    keep = torch.zeros(per, dtype=torch.bool, device=device)
    idx = ((2 * torch.arange(count, device=device) + 1) * per) // (2 * count)
    return keep.index_fill(0, idx, True)


def ttm_keep_mask(
    x: Tensor, budget: int, reference_groups: bool = True
) -> tuple[Tensor, dict[str, float]]:
    """Select exactly ``budget`` patches of a ``[T, HW, C]`` video.

    Args:
        x: ``[T, HW, C]`` features of the original grid.
        budget: Tokens to keep, ``1 <= budget <= T * HW``.
        reference_groups: See :func:`frame_plan`.

    Returns:
        ``([T, HW] keep mask, info)`` with the equivalent reference ``prune_ratio``
        of the pruned frames and whether the budget was below the reference floor.
    """
    frames, per, _ = x.shape
    level, ref = frame_plan(frames, reference_groups, x.device)
    sim = similarity_to_reference(x, ref)
    keep = torch.zeros(frames, per, dtype=torch.bool, device=x.device)
    # The plan depends on T alone: count each level's frames on the host, and take
    # the frames themselves from a stable sort by level on the device, so no
    # data-dependent size (nonzero) makes the host wait for the device.
    host_level = frame_plan(frames, reference_groups, torch.device("cpu"))[0].tolist()
    by_level = torch.sort(level, descending=True, stable=True).indices  # [T]
    left, start = budget, 0
    kept_pruned, n_pruned = 0, 0
    for lvl in (FIRST, ANCHOR, PRUNED):  # levels, not tokens; FIRST sorts first
        count = host_level.count(lvl)
        frames_at = by_level[start : start + count]  # ascending frame index
        start += count
        size = count * per
        take = min(left, size)
        if lvl == FIRST and take < size:
            keep[0] = evenly_spaced(per, take, x.device)
        elif size:
            keep[frames_at] = fill_by_dissimilarity(sim[frames_at], take)
        if lvl == PRUNED:
            kept_pruned, n_pruned = take, size
        left -= take
    below = float(budget < frames * per - n_pruned)
    ratio = 1.0 - kept_pruned / n_pruned if n_pruned else 0.0
    return keep, {"prune_ratio": ratio, "below_floor": below}
