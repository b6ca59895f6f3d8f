"""Builtin reducers ``none`` and ``random``: the floor every study needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from tokenred.errors import ConfigError
from tokenred.hookspecs import hookimpl
from tokenred.reducer import BASELINE_REDUCER, ReducerConfig, TokenReducer
from tokenred.tokens import Reduction

if TYPE_CHECKING:
    from tokenred.tokens import ReduceContext, VisualTokens


class NoneReducer(TokenReducer):
    """Keep every token: the unreduced baseline every comparison is made against.

    The runner resolves the budget of ``none`` to ``N``; under a smaller budget (the
    contract suite) it keeps the first ``budget`` tokens so the contract still holds.
    """

    name = BASELINE_REDUCER
    exact_budget = True
    paper = "https://arxiv.org/abs/2507.07990"
    reference = "https://github.com/HYUNJS/STTM@00736c7"

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        """Return the first ``min(budget, N)`` tokens (all of them at full budget)."""
        n = min(ctx.budget, tokens.n)
        keep = torch.arange(n, device=tokens.device)
        return Reduction.from_keep_index(tokens, keep)


@dataclass
class RandomConfig(ReducerConfig):
    """Config of the ``random`` reducer."""

    name: str = "random"
    per_frame: bool = field(
        default=False,
        metadata={
            "help": "stratify by frame: each frame keeps its share of the budget "
            "(remainders go to random frames)"
        },
    )

    def __post_init__(self) -> None:
        """Validate field types that OmegaConf cannot."""
        if not isinstance(self.per_frame, bool):
            msg = f"reducer.per_frame: expected true or false, got {self.per_frame!r}"
            raise ConfigError(msg)


class RandomReducer(TokenReducer):
    """Random pruning: keep a seeded uniform sample of the tokens, without replacement.

    With ``per_frame=true`` every frame keeps ``budget // T`` tokens and the remainder
    goes to frames drawn at random, so the temporal coverage is even.
    """

    name = "random"
    Config = RandomConfig
    exact_budget = True
    paper = "https://arxiv.org/abs/2507.07990"
    reference = "https://github.com/HYUNJS/STTM@00736c7"

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        """Keep ``min(budget, N)`` tokens drawn with ``ctx.generator``."""
        n, k = tokens.n, min(ctx.budget, tokens.n)
        cfg: Any = self.config
        if cfg.per_frame and tokens.is_original():
            keep = _stratified(tokens, k, ctx.generator)
        else:
            perm = torch.randperm(n, generator=ctx.generator, device="cpu")
            keep = perm[:k]
        return Reduction.from_keep_index(
            tokens, keep.to(tokens.device), info={"kept": float(k)}
        )


def _stratified(tokens: VisualTokens, k: int, gen: torch.Generator) -> torch.Tensor:
    """Pick ``k`` indices with each frame's count within one of ``k / T``."""
    t, h, w = tokens.grid
    per = h * w
    # A random score per token; ranking within each frame gives a uniform sample.
    scores = torch.rand(t, per, generator=gen)
    rank = scores.argsort(dim=1).argsort(dim=1)  # [T, HW] rank of each token
    quota = torch.full((t,), k // t, dtype=torch.long)
    extra = torch.randperm(t, generator=gen)[: k - int(quota.sum())]
    quota[extra] += 1
    quota = quota.clamp(max=per)
    mask = rank < quota[:, None]  # [T, HW]
    return torch.nonzero(mask.reshape(-1)).squeeze(1)


@hookimpl
def register_reducers(register: Any) -> None:
    """Register ``none`` and ``random``."""
    register(NoneReducer)
    register(RandomReducer)
