"""The ``tome`` reducer: ToMe bipartite soft matching adapted to video tokens.

Paper: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023,
https://arxiv.org/abs/2210.09461; run as a video-LLM baseline by the STTM paper
(https://arxiv.org/abs/2507.07990, §4.2, ``--sa_tome_ver video``).

Reference: https://github.com/HYUNJS/STTM@00736c7
(token_merging_utils/tome_token_merger.py, token_merging_monkey_patch/
tome_attn_monkey_patch.py).

Deviations from reference:
    - The target is the token budget ``min(budget, N)`` instead of
      ``ceil(N * (1 - prune_ratio))``; set the budget to that value to reproduce a
      paper setting.
    - Outputs are ordered by their earliest source token (the tokenred contract);
      the reference emits [unmerged A tokens in similarity order, then B tokens],
      which is not spatial order. Under ``reassign`` positions this changes which
      position each merged token gets.
    - ``frame`` mode on budgets that are not a multiple of ``T``: every frame is
      merged to ``ceil(budget / T)`` tokens and the few remaining merges run as
      video-level rounds; the reference gives every frame the same count.
    - ``frame`` mode on tokens that are not the original grid falls back to
      ``video`` mode (frames no longer have equal token counts).
    - See :mod:`tokenred_tome.matching` for numerical deviations (float32, tie
      order).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from tokenred import ConfigError, PositionPolicy, ReducerConfig, Reduction, TokenReducer
from tokenred_tome.matching import tome_frames, tome_video

if TYPE_CHECKING:
    from tokenred import ReduceContext, VisualTokens


class ToMeMode(str, enum.Enum):
    """Which tokens take part in one matching."""

    VIDEO = "video"
    """All ``T*H*W`` tokens of the video at once (the STTM paper's baseline)."""
    FRAME = "frame"
    """Each frame's ``H*W`` tokens separately."""


@dataclass
class ToMeConfig(ReducerConfig):
    """Config of the ``tome`` reducer."""

    name: str = field(default="tome", metadata={"help": "registered reducer name"})
    mode: ToMeMode = field(
        default=ToMeMode.VIDEO,
        metadata={
            "help": "video: match over all T*H*W tokens at once (paper baseline); "
            "frame: match within each frame"
        },
    )
    prop_attn: bool = field(
        default=False,
        metadata={
            "help": "ToMe's proportional attention (log(size) added to the attention "
            "logits of merged tokens); must stay false: no adapter implements it, "
            "and the STTM paper's baseline ran without it"
        },
    )

    def __post_init__(self) -> None:
        """Coerce the mode from its string form and validate types."""
        try:
            self.mode = ToMeMode(self.mode)
        except ValueError as exc:
            choices = ", ".join(m.value for m in ToMeMode)
            msg = f"reducer.mode: '{self.mode}' is not one of {choices}"
            raise ConfigError(msg) from exc
        if not isinstance(self.prop_attn, bool):
            msg = f"reducer.prop_attn: expected true or false, got {self.prop_attn!r}"
            raise ConfigError(msg)
        if self.prop_attn:
            # Accepting it would record a setting that changes nothing.
            msg = (
                "reducer.prop_attn=true: proportional attention is not implemented by "
                "the model adapters; leave it false (the STTM paper's ToMe baseline "
                "ran without it)"
            )
            raise ConfigError(msg)


class ToMeReducer(TokenReducer):
    """ToMe: merge the most similar token pairs by bipartite soft matching.

    Rounds of alternating A/B matching with cosine similarity on the features, each
    removing at most half of the tokens, until exactly ``min(budget, N)`` remain.
    Merged features are size-weighted means and output ``sizes`` carry the patch
    counts; proportional attention (``prop_attn``) is not implemented.
    """

    name = "tome"
    Config = ToMeConfig
    exact_budget = True
    query_agnostic = True
    position_policy = PositionPolicy.REASSIGN
    paper: ClassVar[str] = "https://arxiv.org/abs/2210.09461"
    reference: ClassVar[str] = "https://github.com/HYUNJS/STTM@00736c7"

    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        """Merge ``tokens`` down to exactly ``min(budget, N)`` tokens."""
        cfg = self.config
        if not isinstance(cfg, ToMeConfig):
            msg = f"reducer 'tome' needs a ToMeConfig, got {type(cfg).__name__}"
            raise ConfigError(msg)
        target = max(1, min(ctx.budget, tokens.n))
        info = {"prop_attn": float(cfg.prop_attn)}
        if target >= tokens.n:
            keep = torch.arange(tokens.n, device=tokens.device)
            return Reduction.from_keep_index(tokens, keep, info={**info, "rounds": 0.0})
        per_frame = cfg.mode is ToMeMode.FRAME and tokens.is_original()
        if per_frame:
            label, rounds = tome_frames(
                tokens.features, tokens.sizes, tokens.grid[0], target
            )
        else:
            label, rounds = tome_video(tokens.features, tokens.sizes, target)
        info["rounds"] = float(rounds)
        return Reduction.from_assignment(tokens, label, mean="size", info=info)
