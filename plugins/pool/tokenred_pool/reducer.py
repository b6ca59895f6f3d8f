"""The ``pool`` reducer: per-frame average pooling to an exact budget.

Paper: https://arxiv.org/abs/2507.07990 (STTM, Table 5 single-granularity ablation:
a fixed coarser grid per frame). Reference: https://github.com/HYUNJS/STTM@00736c7
(token_merging_monkey_patch/pyrd_attn_monkey_patch.py).

Deviations from reference:
    - See :mod:`tokenred_pool.pooling`: area averaging instead of interpolation,
      an exact budget through near-uniform mixed cell sizes, temporal pooling below
      one token per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from tokenred import PositionPolicy, ReducerConfig, Reduction, TokenReducer
from tokenred_pool.pooling import grid_assignment, sequence_assignment

if TYPE_CHECKING:
    from tokenred import ReduceContext, VisualTokens


@dataclass
class PoolConfig(ReducerConfig):
    """Config of the ``pool`` reducer (the budget alone sets the pooled grid)."""

    name: str = field(default="pool", metadata={"help": "registered reducer name"})


class PoolReducer(TokenReducer):
    """Uniform spatial average pooling of every frame down to the token budget.

    Each frame gets an equal share of the budget and is cut into near-equal
    rectangular cells whose tokens are the exact means of their patches, so the
    output has exactly ``min(budget, N)`` tokens.
    """

    name = "pool"
    Config = PoolConfig
    exact_budget = True
    query_agnostic = True
    position_policy = PositionPolicy.REASSIGN
    paper: ClassVar[str] = "https://arxiv.org/abs/2507.07990"
    reference: ClassVar[str] = "https://github.com/HYUNJS/STTM@00736c7"

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        """Average-pool ``tokens`` into exactly ``min(budget, N)`` cells."""
        n, budget = tokens.n, max(1, min(ctx.budget, tokens.n))
        if budget >= n:
            keep = torch.arange(n, device=tokens.device)
            return Reduction.from_keep_index(tokens, keep)
        if tokens.is_original():
            label = grid_assignment(tokens.grid, budget, tokens.device)
        else:
            label = sequence_assignment(n, budget, tokens.device)
        return Reduction.from_assignment(tokens, label, mean="size")
