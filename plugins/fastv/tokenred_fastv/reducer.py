"""The ``fastv`` reducer: attention-ranked pruning of visual tokens at layer K.

Paper: https://arxiv.org/abs/2403.06764 (FastV, ECCV 2024); run as a baseline by the
STTM paper (https://arxiv.org/abs/2507.07990, §4.2: K=2, evict ratio 0.5 / 0.7).

Reference: https://github.com/HYUNJS/STTM@00736c7
(llava/model/framefusion/models/qwen2/modeling_qwen2_baseline.py).

Deviations from reference:
    - See :mod:`tokenred_fastv.selection` (budget instead of evict ratio, stable
      tie order, float32 head mean).
    - The attention row comes from the adapter (``ctx.attention``); tokenred's
      adapters capture it under sdpa, while the reference patches in an SDPA
      attention path on LLaVA that also replaces FlashAttention-2 (TTFT caveat in
      the STTM paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from tokenred import (
    ConfigError,
    ContractError,
    Need,
    PositionPolicy,
    ReducerConfig,
    Reduction,
    Stage,
    TokenReducer,
)
from tokenred_fastv.selection import attention_scores, top_tokens

if TYPE_CHECKING:
    from tokenred import ReduceContext, VisualTokens


@dataclass
class FastVConfig(ReducerConfig):
    """Config of the ``fastv`` reducer."""

    name: str = field(default="fastv", metadata={"help": "registered reducer name"})
    last_query_only: bool = field(
        default=True,
        metadata={
            "help": "rank by the attention of the last query token only (FastV); "
            "false averages over every query row the adapter supplies"
        },
    )

    def __post_init__(self) -> None:
        """Validate field types that OmegaConf cannot."""
        if not isinstance(self.last_query_only, bool):
            msg = (
                "reducer.last_query_only: expected true or false, got "
                f"{self.last_query_only!r}"
            )
            raise ConfigError(msg)


class FastVReducer(TokenReducer):
    """FastV: keep the visual tokens the last query token attends to most at layer K-1.

    Needs the ``[heads, Q, N]`` attention of layer K-1 (so it runs inside the LLM at
    K >= 1), keeps exactly ``min(budget, N)`` tokens at their original positions and
    depends on the question, so its KV cache cannot be reused across questions.
    """

    name = "fastv"
    Config = FastVConfig
    stages = frozenset({Stage.IN_LLM})
    needs = frozenset({Need.ATTENTION})
    exact_budget = True
    query_agnostic = False
    position_policy = PositionPolicy.SURVIVE
    paper: ClassVar[str] = "https://arxiv.org/abs/2403.06764"
    reference: ClassVar[str] = "https://github.com/HYUNJS/STTM@00736c7"

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        """Keep the ``min(budget, N)`` tokens with the highest attention scores."""
        cfg = self.config
        if not isinstance(cfg, FastVConfig):
            msg = f"reducer 'fastv' needs a FastVConfig, got {type(cfg).__name__}"
            raise ConfigError(msg)
        attention = ctx.require(Need.ATTENTION, self.name)
        if attention.dim() != 3 or attention.shape[-1] != tokens.n:
            msg = (
                f"reducer 'fastv': ctx.attention has shape {tuple(attention.shape)}, "
                f"expected [heads, Q, {tokens.n}] over the visual tokens; the adapter "
                "must slice the attention row to the visual span"
            )
            raise ContractError(msg)
        k = max(1, min(ctx.budget, tokens.n))
        scores = attention_scores(attention, cfg.last_query_only).to(tokens.device)
        keep = top_tokens(scores, k)
        kept_mass = scores[keep].sum() / scores.sum().clamp_min(1e-12)
        return Reduction.from_keep_index(
            tokens, keep, info={"kept_attention": float(kept_mass)}
        )
