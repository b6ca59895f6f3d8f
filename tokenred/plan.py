"""What the runner asks the insertion engine to apply: a reducer, where, how much.

Re-exported by :mod:`tokenred.adapter`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenred.errors import ConfigError
from tokenred.tokens import PositionPolicy, Stage

if TYPE_CHECKING:
    from tokenred.reducer import TokenReducer


BUDGET_HINT = (
    "give a fraction of the visual tokens in (0, 1] such as 0.3, or an integer "
    "token count >= 1 such as 64"
)


def budget_error(what: str) -> ConfigError:
    """Return the one-line budget error: what is wrong, then the valid forms."""
    return ConfigError(f"budget: {what}; {BUDGET_HINT}")


def check_budget(ratio: object, tokens: object) -> None:
    """Validate a budget pair: exactly one of ratio and tokens, each in range.

    The one budget check: config files, flags, overrides and a
    :class:`BudgetSpec` built in code all end here, so every path gives the same
    message.

    Raises:
        ConfigError: One line saying what is wrong and what is valid.
    """
    if ratio is not None and tokens is not None:
        raise budget_error(
            f"both budget.ratio={ratio} and budget.tokens={tokens} are set"
        )
    if ratio is None and tokens is None:
        raise budget_error("neither budget.ratio nor budget.tokens is set")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float):
            raise budget_error(f"ratio {ratio!r} is not a number")
        if not 0 < ratio <= 1:
            raise budget_error(f"ratio {ratio} is outside (0, 1]")
    elif isinstance(tokens, bool) or not isinstance(tokens, int):
        raise budget_error(f"token count {tokens!r} is not an integer")
    elif tokens < 1:
        raise budget_error(f"token count {tokens} must be >= 1")


def check_insertion(stage: Stage, layer: int) -> None:
    """Validate an insertion point: layer 0 for ``pre_llm``, K >= 1 for ``in_llm``.

    The one stage/layer check, shared by the config and the plan.

    Raises:
        ConfigError: One line naming the bad pair and the fix.
    """
    if layer < 0:
        msg = f"insertion.layer must be >= 0, got {layer}"
        raise ConfigError(msg)
    if stage == Stage.PRE_LLM and layer != 0:
        msg = (
            f"insertion.layer={layer} needs insertion.stage=in_llm; "
            "pre_llm reduction always uses layer 0"
        )
        raise ConfigError(msg)
    if stage == Stage.IN_LLM and layer < 1:
        msg = (
            "insertion.stage=in_llm needs insertion.layer >= 1 (the decoder layer "
            "the reduced tokens enter), e.g. insertion.layer=2"
        )
        raise ConfigError(msg)


@dataclass
class BudgetSpec:
    """How many visual tokens a reducer may keep: a ratio of ``N`` or a count.

    Exactly one of ``ratio`` and ``tokens`` is set.
    """

    ratio: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        """Check that exactly one field is set and in range."""
        check_budget(self.ratio, self.tokens)

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
        """Normalise enums and check the stage/layer pair."""
        self.stage = Stage(self.stage)
        if self.positions is not None:
            self.positions = PositionPolicy(self.positions)
        check_insertion(self.stage, self.layer)

    @property
    def label(self) -> str:
        """The reducer's name and origin for messages."""
        return self.origin or getattr(self.reducer, "name", type(self.reducer).__name__)
