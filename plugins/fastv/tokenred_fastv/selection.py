"""FastV: keep the visual tokens that the last query token attends to most.

Paper: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play
Inference Acceleration for Large Vision-Language Models", ECCV 2024,
https://arxiv.org/abs/2403.06764. Original code: https://github.com/pkunlp-icler/FastV.

Reference (as the STTM paper ran it): https://github.com/HYUNJS/STTM@00736c7
(llava/model/framefusion/models/qwen2/modeling_qwen2_baseline.py,
``replace_Qwen2_fastv``): at decoder layer K the attention that the last prompt token
paid to the visual tokens at layer K-1 is averaged over heads, and the
``round(N * (1 - R))`` highest-scoring visual tokens are kept at their original
positions; the rest are evicted from the sequence and the KV cache of layers >= K.

Deviations from reference:
    - The kept count is the token budget ``min(budget, N)``; the reference keeps
      ``round(N * (1 - R))`` for evict ratio ``R``.
    - Ties in the score are broken by position (earliest first) with a stable sort;
      ``topk`` leaves tie order unspecified.
    - The head mean is computed in float32.
    - With ``last_query_only=false`` the scores average over every query row the
      adapter supplies (not part of the reference).
"""

from __future__ import annotations

import torch
from torch import Tensor


def attention_scores(attention: Tensor, last_query_only: bool = True) -> Tensor:
    """Return ``[N]`` the head-averaged attention each visual token receives.

    Args:
        attention: ``[heads, Q, N]`` attention of the last ``Q`` query positions at
            layer K-1 to the visual tokens.
        last_query_only: Use only the last query row (FastV), else the mean of all.
    """
    att = attention.to(torch.float32)
    rows = att[:, -1, :] if last_query_only else att.mean(dim=1)  # [heads, N]
    return rows.mean(dim=0)


def top_tokens(scores: Tensor, k: int) -> Tensor:
    """Return the indices of the ``k`` highest scores, earliest first on ties.

    Args:
        scores: ``[N]`` per-token scores.
        k: How many to keep, ``0 <= k <= N``.

    Returns:
        ``[k]`` indices in score order.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]
