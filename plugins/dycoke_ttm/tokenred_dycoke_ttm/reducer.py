"""The ``dycoke_ttm`` reducer: DyCoke's query-agnostic temporal token pruning stage.

Paper: https://arxiv.org/abs/2411.15024 (DyCoke, CVPR 2025); run by the STTM paper
(https://arxiv.org/abs/2507.07990, §4.2) as "DyCoke-stage1" at decoder layer 2 with
``prune_ratio`` 0.7 (≈48% of tokens) and 0.925 (≈31%).

Reference: https://github.com/HYUNJS/STTM@00736c7
(token_merging_utils/dycoke_merger.py).

Deviations from reference:
    - See :mod:`tokenred_dycoke_ttm.ttm` (budget mapping, output order, ties,
      small ``T``, budgets below the reference floor).
    - The reference only sees the original grid; tokens that are not the original
      grid are rejected with a ``ContractError``.
    - DyCoke's second stage (query-dependent KV pruning during decoding) is not part
      of this reducer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from tokenred import (
    ConfigError,
    ContractError,
    PositionPolicy,
    ReducerConfig,
    Reduction,
    TokenReducer,
)
from tokenred_dycoke_ttm.ttm import ttm_keep_mask

if TYPE_CHECKING:
    from tokenred import ReduceContext, VisualTokens


@dataclass
class DyCokeTTMConfig(ReducerConfig):
    """Config of the ``dycoke_ttm`` reducer."""

    name: str = field(
        default="dycoke_ttm", metadata={"help": "registered reducer name"}
    )
    reference_groups: bool = field(
        default=True,
        metadata={
            "help": "reproduce the reference's frame groups, range(0, T-4, 4), which "
            "keeps the last group's frame 4i+2 whole when T is a multiple of 4; "
            "false prunes it too"
        },
    )

    def __post_init__(self) -> None:
        """Validate field types that OmegaConf cannot."""
        if not isinstance(self.reference_groups, bool):
            msg = (
                "reducer.reference_groups: expected true or false, got "
                f"{self.reference_groups!r}"
            )
            raise ConfigError(msg)


class DyCokeTTMReducer(TokenReducer):
    """DyCoke TTM: drop the patches of later frames that repeat an earlier frame.

    In groups of four frames, frames 1 and 3 are pruned against the frame before
    and frame 2 against frame 0, keeping the tokens least similar to the same patch
    position; frame 0 of each group stays whole. The per-frame keep count is derived
    from the budget, which is met exactly.
    """

    name = "dycoke_ttm"
    Config = DyCokeTTMConfig
    exact_budget = True
    query_agnostic = True
    position_policy = PositionPolicy.REASSIGN
    paper: ClassVar[str] = "https://arxiv.org/abs/2411.15024"
    reference: ClassVar[str] = "https://github.com/HYUNJS/STTM@00736c7"

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        """Keep exactly ``min(budget, N)`` tokens by temporal dissimilarity."""
        cfg = self.config
        if not isinstance(cfg, DyCokeTTMConfig):
            got = type(cfg).__name__
            msg = f"reducer 'dycoke_ttm' needs a DyCokeTTMConfig, got {got}"
            raise ConfigError(msg)
        n, budget = tokens.n, max(1, min(ctx.budget, tokens.n))
        if budget >= n:
            return Reduction.from_keep_index(
                tokens, torch.arange(n, device=tokens.device)
            )
        if not tokens.is_original():
            msg = (
                f"reducer 'dycoke_ttm' needs the original T*H*W grid {tokens.grid}, "
                f"got {n} already-reduced tokens; run it as the only reducer"
            )
            raise ContractError(msg)
        t, h, w = tokens.grid
        # [T*H*W, C] -> [T, H*W, C]
        x = tokens.features.reshape(t, h * w, tokens.channels)
        keep, info = ttm_keep_mask(x, budget, cfg.reference_groups)
        # Exactly `budget` patches are kept: a stable sort puts them first, in
        # order, without the host sync of nonzero. [T, HW] -> [T*HW] -> [B]
        flat = keep.reshape(-1).to(torch.int8)
        index = torch.sort(flat, descending=True, stable=True).indices[:budget]
        return Reduction.from_keep_index(tokens, index, info=info)
