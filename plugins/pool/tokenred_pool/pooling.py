"""Uniform average pooling of each frame to an exact token budget.

Resolution downsampling is the control that published token-reduction comparisons
often omit: every frame is average-pooled to a coarser grid, the way LLaVA-Video's
2x2 spatial pooling or the STTM paper's single-granularity ablation (Table 5,
``--sa_pattern pyrd``) shrink a video. The STTM paper's ablation is the closest
published setting: https://arxiv.org/abs/2507.07990, reference
https://github.com/HYUNJS/STTM@00736c7 (token_merging_monkey_patch/
pyrd_attn_monkey_patch.py).

How the budget ``B`` is met exactly on a ``T x H x W`` grid:

1. Frame ``t`` receives ``q_t = floor((t+1)B/T) - floor(tB/T)`` cells, so quotas
   differ by at most one and sum to ``B``.
2. A frame with ``q`` cells is cut into ``h'`` horizontal bands,
   ``h' = clamp(round(sqrt(q * H / W)), ceil(q / W), min(H, q))`` (the band count of a
   square-ish grid), band ``b`` covering rows ``[ceil(bH/h'), ceil((b+1)H/h'))``.
3. Band ``b`` is cut into ``c_b = floor((b+1)q/h') - floor(bq/h')`` cells along the
   columns, cell ``j`` covering ``[ceil(jW/c_b), ceil((j+1)W/c_b))``.

Every cell is a rectangle of whole patches and its token is the exact mean of those
patches. When ``q = h' * w'`` divides the grid (e.g. 49 cells on 14x14) this is plain
``w' x h'`` average pooling; otherwise neighbouring bands differ by one column, which
is the smallest departure from a uniform grid that hits ``q`` exactly.

Deviations from reference:
    - Average (area) pooling, not ``F.interpolate`` (nearest by default in the
      reference's ablation, bilinear per the paper text), so every output token is
      an honest mean of the patches it replaces and sizes/coords are exact.
    - Partitioning cells (``ceil`` boundaries) rather than
      ``F.adaptive_avg_pool2d``'s overlapping windows, so each patch belongs to
      exactly one output.
    - Budgets below ``T`` pool whole frames: frame ``t`` joins group
      ``floor(tB/T)`` and each group becomes one token (temporal pooling).
    - Tokens that are not the original grid are pooled in sequence order into ``B``
      runs of near-equal length.
"""

from __future__ import annotations

import torch
from torch import Tensor


def frame_quotas(budget: int, frames: int, device: torch.device) -> Tensor:
    """Return ``[T]`` cells per frame, near-equal and summing to ``budget``."""
    t = torch.arange(frames + 1, device=device)
    edges = (t * budget) // frames  # [T+1] cumulative quotas
    return edges[1:] - edges[:-1]


def cell_labels(quotas: Tensor, height: int, width: int) -> Tensor:
    """Label every patch of every frame with its cell, ``0 .. q_t - 1``.

    Args:
        quotas: ``[T]`` cells per frame, each in ``[1, H*W]``.
        height: ``H``.
        width: ``W``.

    Returns:
        ``[T, H, W]`` int64 cell labels in raster order of the cells' top-left corner.
    """
    dev = quotas.device
    q = quotas.to(torch.long)
    ideal = torch.sqrt(q.to(torch.float64) * height / width).round().to(torch.long)
    lo = (q + width - 1) // width  # fewest bands that fit q cells of <= W columns
    hi = torch.clamp(q, max=height)
    bands = torch.minimum(torch.maximum(ideal, lo), hi)  # [T]
    y = torch.arange(height, device=dev)
    band = (y[None, :] * bands[:, None]) // height  # [T, H]
    start = (band * q[:, None]) // bands[:, None]  # [T, H] first cell of the band
    cols = ((band + 1) * q[:, None]) // bands[:, None] - start  # [T, H]
    x = torch.arange(width, device=dev)
    # [T, H, 1] x [1, 1, W] -> [T, H, W]
    return start[:, :, None] + (x[None, None, :] * cols[:, :, None]) // width


def grid_assignment(
    grid: tuple[int, int, int], budget: int, device: torch.device
) -> Tensor:
    """Return ``[T*H*W]`` the output cell of every original token.

    Args:
        grid: ``(T, H, W)``.
        budget: Output tokens, ``1 <= budget < T*H*W``.
        device: Device of the result.
    """
    t, h, w = grid
    frame = torch.arange(t, device=device)
    if budget < t:
        # Fewer cells than frames: whole frames are averaged in time.
        group = (frame * budget) // t  # [T]
        return group[:, None].expand(t, h * w).reshape(-1)
    quotas = frame_quotas(budget, t, device)
    offsets = torch.cumsum(quotas, 0) - quotas  # [T] first label of each frame
    labels = cell_labels(quotas, h, w) + offsets[:, None, None]  # [T, H, W]
    return labels.reshape(-1)  # [T, H, W] -> [T*H*W]


def sequence_assignment(n: int, budget: int, device: torch.device) -> Tensor:
    """Return ``[N]`` labels cutting a sequence into ``budget`` near-equal runs."""
    i = torch.arange(n, device=device)
    return (i * budget) // n
