"""Uniform-stride sampling: keep every k-th visual token.

The simplest data-independent pruner: with ``N`` tokens and budget ``B`` it keeps
the tokens at ``floor(i * N / B)`` (or the centre of each stride with
``center=true``), ``i = 0..B-1``, so the kept tokens are spread evenly over the
raster order (frames first, then rows, then columns).

Paper: none; uniform subsampling is the classic downsampling baseline.
Reference: none; written for tokenred as the plugin template.

Deviations from reference:
    - Not applicable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tokenred import ConfigError, ReducerConfig, Reduction, Stage, TokenReducer

if TYPE_CHECKING:
    from tokenred import ReduceContext, VisualTokens


@dataclass
class StrideConfig(ReducerConfig):
    """Config of ``template_stride``."""

    name: str = field(
        default="template_stride", metadata={"help": "registered reducer name"}
    )
    center: bool = field(
        default=False,
        metadata={
            "help": "keep the token at the centre of each stride instead of its start"
        },
    )

    def __post_init__(self) -> None:
        """Reject a bad value with one line naming the key (how every reducer does).

        The CLI's loader already type-checks ``reducer.center=...``; this also
        catches configs built in code, e.g. ``StrideConfig(center="yes")``.
        """
        if not isinstance(self.center, bool):
            msg = f"reducer.center: expected true or false, got {self.center!r}"
            raise ConfigError(msg)


def stride_indices(
    n: int, k: int, *, center: bool, device: torch.device
) -> torch.Tensor:
    """Return ``k`` distinct, sorted indices spread evenly over ``range(n)``.

    Args:
        n: Number of tokens.
        k: Number to keep, ``1 <= k <= n``.
        center: Offset each pick by half a stride.
        device: Device of the result.
    """
    i = torch.arange(k, device=device, dtype=torch.float64)
    offset = 0.5 if center else 0.0
    # The stride n / k >= 1, so the floors are strictly increasing: no duplicates.
    return torch.floor((i + offset) * n / k).to(torch.long)


class StrideReducer(TokenReducer):
    """Uniform stride: keep every k-th token so exactly min(budget, N) remain."""

    name = "template_stride"
    Config = StrideConfig
    stages = frozenset({Stage.PRE_LLM, Stage.IN_LLM})
    exact_budget = True
    query_agnostic = True
    paper = "https://en.wikipedia.org/wiki/Downsampling_(signal_processing)"
    reference = "none: written for tokenred as the plugin template"

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        """Keep ``min(budget, N)`` evenly spaced tokens."""
        config = self.config
        assert isinstance(config, StrideConfig)
        k = min(ctx.budget, tokens.n)
        keep = stride_indices(tokens.n, k, center=config.center, device=tokens.device)
        return Reduction.from_keep_index(tokens, keep, info={"stride": tokens.n / k})
