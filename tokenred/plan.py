"""What the runner asks the insertion engine to apply: a reducer, where, how much.

Re-exported by :mod:`tokenred.adapter`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenred.errors import ConfigError, ContractError
from tokenred.tokens import PositionPolicy, Stage

if TYPE_CHECKING:
    from tokenred.arch import ArchSpec
    from tokenred.reducer import TokenReducer


BUDGET_HINT = (
    "give a fraction of the visual tokens in (0, 1] such as 0.3, an integer "
    "token count >= 1 such as 64, or a fraction of the unreduced prefill FLOPs in "
    "(0, 1] such as budget.flops=0.7"
)
BUDGET_KEYS = ("ratio", "tokens", "flops")


def budget_error(what: str) -> ConfigError:
    """Return the one-line budget error: what is wrong, then the valid forms."""
    return ConfigError(f"budget: {what}; {BUDGET_HINT}")


def check_budget(ratio: object, tokens: object, flops: object = None) -> None:
    """Validate a budget: exactly one of ratio, tokens and flops, each in range.

    The one budget check: config files, flags, overrides and a
    :class:`BudgetSpec` built in code all end here, so every path gives the same
    message.

    Raises:
        ConfigError: One line saying what is wrong and what is valid.
    """
    values = {"ratio": ratio, "tokens": tokens, "flops": flops}
    given = [f"budget.{k}={v}" for k, v in values.items() if v is not None]
    if len(given) > 1:
        raise budget_error(f"both {' and '.join(given)} are set")
    if not given:
        raise budget_error("none of budget.ratio, budget.tokens, budget.flops is set")
    for key in ("ratio", "flops"):
        value = values[key]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise budget_error(f"{key} {value!r} is not a number")
        if not 0 < value <= 1:
            raise budget_error(f"{key} {value} is outside (0, 1]")
        return
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        raise budget_error(f"token count {tokens!r} is not an integer")
    if tokens < 1:
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


@dataclass(frozen=True)
class BudgetCost:
    """What a FLOPs budget needs to become a token count for one sample.

    The insertion engine fills it: it knows the unreduced sequence and the layer,
    the adapter knows the architecture.

    Attributes:
        arch: The language model's shape.
        length: Unreduced prefill length (text + visual tokens).
        layer: Decoder layer the reduced tokens enter (0 before the LLM).
    """

    arch: ArchSpec
    length: int
    layer: int


def flops_unreachable(flops: float, low: float, where: str) -> ConfigError:
    """Return the one-line error of a FLOPs budget below the reachable range."""
    return ConfigError(
        f"budget.flops={flops} cannot be reached {where}: the decoder layers before "
        f"the insertion point run at full length, so the reachable range is "
        f"[{low:.3f}, 1]; raise budget.flops or reduce at an earlier layer"
    )


def check_flops_reachable(flops: float, layer: int, num_layers: int) -> None:
    """Reject a FLOPs budget below what layer ``K`` of ``L`` can ever reach.

    Layers ``< K`` always process the unreduced sequence, so even with no visual
    token kept the prefill costs about ``K/L`` of the unreduced one (the infimum
    as the text shrinks). Checked before any weights load; each sample's own
    range is checked again when its budget resolves.

    Raises:
        ConfigError: One line giving the reachable range.
    """
    low = layer / num_layers if num_layers > 0 else 0.0
    if flops < low:
        where = f"at insertion.layer={layer} of a {num_layers}-layer LLM"
        raise flops_unreachable(flops, low, where)


@dataclass
class BudgetSpec:
    """How many visual tokens a reducer may keep: a ratio, a count or FLOPs.

    ``ratio`` is a fraction of ``N``, ``tokens`` a count, ``flops`` a fraction of
    the unreduced prefill FLOPs; exactly one is set. A ``flops`` budget is
    compute-matched: it resolves per sample to the largest token count whose
    analytic prefill FLOPs are at most ``flops`` of the unreduced prefill of the
    same model, prompt and video, so reducers at different insertion points are
    compared at equal compute.
    """

    ratio: float | None = None
    tokens: int | None = None
    flops: float | None = None

    def __post_init__(self) -> None:
        """Check that exactly one field is set and in range."""
        check_budget(self.ratio, self.tokens, self.flops)

    @property
    def unit(self) -> str:
        """``"ratio"``, ``"tokens"`` or ``"flops"``: the field that is set."""
        if self.tokens is not None:
            return "tokens"
        return "flops" if self.flops is not None else "ratio"

    def resolve(self, n: int, cost: BudgetCost | None = None) -> int:
        """Return the token budget for ``n`` visual tokens, in ``[1, max(n, 1)]``.

        Ratios round half up, so ``0.25 * 10`` gives 3: a budget never rounds to 0.
        A FLOPs budget needs ``cost`` (the engine passes it).

        Raises:
            ConfigError: A FLOPs budget this sample cannot reach at this layer.
            ContractError: A FLOPs budget resolved without a cost (framework bug).
        """
        if self.flops is not None:
            return self._resolve_flops(n, cost)
        if self.tokens is not None:
            value = self.tokens
        else:
            value = math.floor(float(self.ratio or 0.0) * n + 0.5)
        return max(1, min(int(value), max(n, 1)))

    def clamp_note(self, n: int) -> str | None:
        """Say how the budget is clamped for ``n`` visual tokens, or None if it is not.

        A ratio that rounds to no token keeps one; a count above ``n`` keeps them
        all, so the run is unreduced on that video while labelled with the budget.
        Both are legal (a sweep may cross them) but never silent: the runner warns.
        """
        if self.tokens is not None and self.tokens > n:
            return (
                f"budget tokens={self.tokens} exceeds the {n} visual tokens of a "
                "video: every token is kept there (unreduced at this budget)"
            )
        if self.ratio is not None and math.floor(self.ratio * n + 0.5) < 1:
            return (
                f"budget ratio={self.ratio} of {n} visual tokens rounds to 0 tokens: "
                "1 token is kept"
            )
        return None

    def _resolve_flops(self, n: int, cost: BudgetCost | None) -> int:
        from tokenred.measure.flops import flops_range, tokens_for_flops

        if cost is None:
            msg = "a FLOPs budget was resolved without the sample's cost (engine bug)"
            raise ContractError(msg)
        flops = float(self.flops or 0.0)
        kept = tokens_for_flops(
            cost.arch, flops, length=cost.length, n_visual=n, layer=cost.layer
        )
        if kept is None:
            low, _ = flops_range(
                cost.arch, length=cost.length, n_visual=n, layer=cost.layer
            )
            where = f"at layer {cost.layer} for a prompt of {cost.length} tokens"
            raise flops_unreachable(flops, low, where)
        return max(1, kept)

    def describe(self) -> str:
        """Return ``"ratio=0.25"``, ``"tokens=64"`` or ``"flops=0.7"`` for logs."""
        if self.tokens is not None:
            return f"tokens={self.tokens}"
        if self.flops is not None:
            return f"flops={self.flops}"
        return f"ratio={self.ratio}"


@dataclass
class ReductionPlan:
    """What the framework applies to one sample; built by the runner.

    Attributes:
        reducer: The reducer instance.
        stage: ``PRE_LLM`` (projected features) or ``IN_LLM`` (decoder layer K).
        layer: 0 for ``PRE_LLM``; the decoder layer K >= 1 for ``IN_LLM``.
        budget: Resolves to a token count given ``N``.
        positions: Position policy, resolved by the runner from
            ``insertion.positions`` or the model's default; the same for every
            reducer of a study. None (plans built in code) takes the adapter's
            default.
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
