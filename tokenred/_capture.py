"""Attention scores and keys for reducers that declare the need, under any kernel.

sdpa and flash-attention return no attention weights, and switching a whole model
to eager costs ~28x time and ~6x memory at 8k tokens. FastV-style reducers only
need the *last* query's attention row at layer K-1, so it is recomputed from that
layer's own modules on the hidden states entering it: ``O(L * d)`` work instead of
``O(L^2 * d)``. The result matches eager attention's last row to float rounding
(checked in ``tests/adapters/test_attention.py``).

The recompute assumes the Llama/Qwen2 attention layout shared by every supported
family: ``input_layernorm``, ``self_attn.{q_proj,k_proj}``, optional per-head
``q_norm``/``k_norm`` (Qwen3-style), rotate-half RoPE from the layer's
``position_embeddings``, grouped KV heads and ``self_attn.scaling``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tokenred.errors import CompatibilityError


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _attn_parts(layer: nn.Module) -> tuple[Any, Any]:
    attn = getattr(layer, "self_attn", None)
    norm = getattr(layer, "input_layernorm", None)
    needed = ("q_proj", "k_proj", "head_dim", "scaling")
    if attn is None or norm is None or not all(hasattr(attn, a) for a in needed):
        msg = (
            f"cannot recompute attention scores for decoder layer "
            f"{type(layer).__name__}: it lacks input_layernorm or self_attn."
            "{q_proj,k_proj,head_dim,scaling}; reducers that need attention are "
            "unsupported on this model"
        )
        raise CompatibilityError(msg)
    return attn, norm


def _heads(proj: Tensor, head_dim: int, norm: Any) -> Tensor:
    # [B, L, H*hd] -> [B, L, H, hd] -> [B, H, L, hd]
    x = proj.view(*proj.shape[:-1], -1, head_dim)
    if norm is not None:
        x = norm(x)
    return x.transpose(1, 2)


def last_query_attention(
    layer: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor
) -> Tensor:
    """Return ``[B, H, 1, L]`` float32 attention of the last position at ``layer``.

    Args:
        layer: The decoder layer whose attention is wanted (K-1).
        hidden: ``[B, L, D]`` hidden states entering it (prefill, empty cache).
        cos: ``[B, L, hd]`` rotary cosines the layer receives.
        sin: ``[B, L, hd]`` rotary sines.
    """
    attn, norm = _attn_parts(layer)
    hd = int(attn.head_dim)
    x = norm(hidden)
    q = _heads(attn.q_proj(x[:, -1:]), hd, getattr(attn, "q_norm", None))
    k = _heads(attn.k_proj(x), hd, getattr(attn, "k_norm", None))
    # cos/sin [B, L, hd] -> [B, 1, L, hd] broadcast over heads
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    q = q * c[:, :, -1:] + _rotate_half(q) * s[:, :, -1:]
    k = k * c + _rotate_half(k) * s
    groups = q.shape[1] // k.shape[1]
    # [B, KV, L, hd] -> [B, H, L, hd]
    k = k.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * float(attn.scaling)
    # The last query sees every key of a causal prefill: no mask needed.
    probs: Tensor = torch.softmax(scores, dim=-1)
    return probs


def visual_keys(layer: nn.Module, hidden: Tensor) -> Tensor:
    """Return ``[N, KV*hd]`` pre-RoPE keys of ``hidden`` ``[N, D]`` at ``layer``."""
    attn, norm = _attn_parts(layer)
    k: Tensor = attn.k_proj(norm(hidden))
    k_norm = getattr(attn, "k_norm", None)
    if k_norm is not None:
        # [N, KV*hd] -> [N, KV, hd] -> [N, KV*hd]
        k = k_norm(k.view(k.shape[0], -1, int(attn.head_dim))).reshape(k.shape[0], -1)
    return k
