"""Deterministic synthetic videos for the STTM tests."""

from __future__ import annotations

import torch
from torch import Tensor


def blocky_video(
    grid: tuple[int, int, int],
    channels: int = 8,
    *,
    seed: int = 0,
    block: int = 3,
    noise: float = 0.15,
    drift: float = 0.1,
) -> Tensor:
    """Return ``[T, H, W, C]`` float32: constant blocks, slow drift, small noise.

    Blocks give the spatial stage parents worth keeping, the drift makes adjacent
    frames similar but not identical, and the noise breaks ties.
    """
    t, h, w = grid
    gen = torch.Generator().manual_seed(seed)
    nb_y, nb_x = -(-h // block), -(-w // block)
    palette = torch.randn(nb_y * nb_x, channels, generator=gen)
    ids = (torch.arange(h)[:, None] // block) * nb_x + torch.arange(w)[None, :] // block
    base = palette[ids]  # [H, W, C]
    steps = drift * torch.randn(t, 1, 1, channels, generator=gen).cumsum(0)
    eps = noise * torch.randn(t, h, w, channels, generator=gen)
    return base[None] + steps + eps


def checkerboard(h: int, w: int, channels: int = 8) -> Tensor:
    """Return ``[H, W, C]``: a checkerboard at every scale (cells 1, 2, 4, ...).

    Channel ``k + 1`` holds a +-1 checkerboard with cells of ``2**k`` patches,
    scaled by ``2**-k``; channel 0 is a small constant. Any group of sibling nodes
    then differs from its mean in the finest checkerboard it spans, so no parent is
    similar to all of its children at ``tau_s = 0.85``.
    """
    y = torch.arange(h)[:, None]
    x = torch.arange(w)[None, :]
    out = torch.zeros(h, w, channels)
    out[..., 0] = 0.05
    for k in range(channels - 1):
        sign = ((y // 2**k + x // 2**k) % 2).float() * 2 - 1
        out[..., k + 1] = sign * 2.0**-k
    return out
