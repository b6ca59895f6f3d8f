"""What the runner asks the insertion engine to apply: a reducer, where, how much.

Re-exported by :mod:`tokenred.adapter`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenred.errors import CompatibilityError, ConfigError
from tokenred.tokens import PositionPolicy, Stage

if TYPE_CHECKING:
    from tokenred.reducer import TokenReducer


@dataclass
class BudgetSpec:
    """How many visual tokens a reducer may keep: a ratio of ``N`` or a count.

    Exactly one of ``ratio`` and ``tokens`` is set.
    """

    ratio: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        """Check that exactly one field is set and in range."""
        if (self.ratio is None) == (self.tokens is None):
            msg = (
                f"budget: set exactly one of ratio or tokens (got ratio={self.ratio}, "
                f"tokens={self.tokens})"
            )
            raise ConfigError(msg)
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            msg = f"budget.ratio: must lie in (0, 1], got {self.ratio}"
            raise ConfigError(msg)
        if self.tokens is not None and self.tokens < 1:
            msg = f"budget.tokens: must be >= 1, got {self.tokens}"
            raise ConfigError(msg)

    def resolve(self, n: int) -> int:
        """Return the token budget for ``n`` visual tokens, in ``[1, max(n, 1)]``.

        Ratios round half up, so ``0.25 * 10`` gives 3: a budget never rounds to 0.
        """
        if self.tokens is not None:
            value = self.tokens
        else:
            value = math.floor(float(self.ratio or 0.0) * n + 0.5)
        return max(1, min(int(value), max(n, 1)))

    def describe(self) -> str:
        """Return ``"ratio=0.25"`` or ``"tokens=64"`` for logs."""
        if self.tokens is not None:
            return f"tokens={self.tokens}"
        return f"ratio={self.ratio}"


@dataclass
class ReductionPlan:
    """What the framework applies to one sample; built by the runner.

    Attributes:
        reducer: The reducer instance.
        stage: ``PRE_LLM`` (projected features) or ``IN_LLM`` (decoder layer K).
        layer: 0 for ``PRE_LLM``; the decoder layer K >= 1 for ``IN_LLM``.
        budget: Resolves to a token count given ``N``.
        positions: Position policy; None takes the reducer's default (M-RoPE models
            fall back from ``reassign`` to ``survive``).
        seed: Run seed; the reducer's generator is seeded from (seed, sample_id).
        sample_id: Sample id, for seeding and messages.
        origin: ``"name (dist version)"`` of the reducer for error messages.
    """

    reducer: TokenReducer
    stage: Stage = Stage.PRE_LLM
    layer: int = 0
    budget: BudgetSpec = field(default_factory=lambda: BudgetSpec(ratio=1.0))
    positions: PositionPolicy | None = None
    seed: int = 0
    sample_id: str = ""
    origin: str = ""

    def __post_init__(self) -> None:
        """Check the stage/layer pair."""
        self.stage = Stage(self.stage)
        if self.positions is not None:
            self.positions = PositionPolicy(self.positions)
        if self.stage is Stage.PRE_LLM and self.layer != 0:
            msg = (
                f"insertion.layer={self.layer} with stage pre_llm: pre-LLM reduction "
                "runs before layer 0; set insertion.layer=0 or insertion.stage=in_llm"
            )
            raise CompatibilityError(msg)
        if self.stage is Stage.IN_LLM and self.layer < 1:
            msg = (
                f"insertion.layer={self.layer} with stage in_llm: in-LLM reduction "
                "needs K >= 1 (use stage pre_llm for K = 0)"
            )
            raise CompatibilityError(msg)

    @property
    def label(self) -> str:
        """The reducer's name and origin for messages."""
        return self.origin or getattr(self.reducer, "name", type(self.reducer).__name__)
