"""The :class:`TokenReducer` interface and its config base class.

A reducer is a pure tensor function of (tokens, context, config): it must not mutate
its inputs, touch the global RNG, call model code, read files or environment
variables, print, or keep state between calls. Everything else (where it runs,
positions, masks, the KV cache, measurement) belongs to the framework.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tokenred.errors import UsageError
from tokenred.tokens import Need, PositionPolicy, Stage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tokenred.tokens import ReduceContext, Reduction, VisualTokens


BASELINE_REDUCER = "none"
"""Name of the keep-everything reducer: the unreduced baseline of every study."""


@dataclass
class ReducerConfig:
    """Base class of every reducer's typed config.

    Subclasses add their own fields, each with ``metadata={"help": ...}``; the CLI
    help and the docs are generated from that metadata.
    """

    name: str = field(
        default=BASELINE_REDUCER, metadata={"help": "registered reducer name"}
    )


class TokenReducer(ABC):
    """Base class of all visual-token reducers.

    Subclasses set the class attributes below and implement :meth:`reduce`. The first
    line of the class docstring is the one-line description ``tokenred list`` shows.
    """

    name: ClassVar[str]
    """Registry id, matching ``^[a-z][a-z0-9_]*$``."""
    Config: ClassVar[type[ReducerConfig]] = ReducerConfig
    """Typed config dataclass (a subclass of :class:`ReducerConfig`)."""
    stages: ClassVar[frozenset[Stage]] = frozenset({Stage.PRE_LLM, Stage.IN_LLM})
    """Insertion stages the reducer supports."""
    needs: ClassVar[frozenset[Need]] = frozenset()
    """Optional context the reducer needs (attention scores, query, keys)."""
    exact_budget: ClassVar[bool] = True
    """True when the output always has exactly ``min(budget, N)`` tokens."""
    query_agnostic: ClassVar[bool] = True
    """True when the output does not depend on the text query (KV-cache reuse)."""
    position_policy: ClassVar[PositionPolicy] = PositionPolicy.SURVIVE
    """Preferred position policy on 1-D RoPE models (M-RoPE adapters fall back to
    ``survive`` where ``reassign`` is meaningless)."""
    paper: ClassVar[str] = ""
    """URL of the paper."""
    reference: ClassVar[str] = ""
    """URL@commit of the reference implementation."""

    def __init__(self, config: ReducerConfig | None = None) -> None:
        """Store the typed config (defaults when None)."""
        self.config = config if config is not None else self.Config(name=self.name)

    @classmethod
    def description(cls) -> str:
        """Return the first line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""

    @classmethod
    def metadata(cls) -> dict[str, object]:
        """Return the declared metadata as plain JSON-ready values."""
        return {
            "name": cls.name,
            "description": cls.description(),
            "stages": sorted(s.value for s in cls.stages),
            "needs": sorted(n.value for n in cls.needs),
            "exact_budget": cls.exact_budget,
            "query_agnostic": cls.query_agnostic,
            "position_policy": cls.position_policy.value,
            "paper": cls.paper,
            "reference": cls.reference,
            "config": cls.Config.__name__,
        }

    @classmethod
    def calibrate(
        cls,
        config: ReducerConfig,
        token_sets: Sequence[VisualTokens],
        target_ratio: float,
        *,
        head_dim: int | None = None,
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """Fit the reducer's own parameters on a subset so it averages a budget.

        Threshold-driven reducers (STTM) override this to do what the paper did by
        hand: pick thresholds on a few videos so that the *average* kept ratio
        meets ``target_ratio``. ``tokenred calibrate`` collects ``token_sets`` (the
        original visual tokens at the configured insertion point) and prints the
        result as config overrides.

        Args:
            config: The reducer's config (the starting point).
            token_sets: Original visual tokens of the calibration videos.
            target_ratio: Target average ``N_out / N_in`` in ``(0, 1]``.
            head_dim: The model's attention head width.

        Returns:
            ``(overrides, info)``: config fields to set, and diagnostics such as
            the achieved average ratio.

        Raises:
            UsageError: The reducer has nothing to calibrate (the default).
        """
        del config, token_sets, target_ratio, head_dim
        msg = (
            f"reducer '{cls.name}' has no calibration: it meets every budget per "
            "sample by itself; use --budget instead"
        )
        raise UsageError(msg)

    @abstractmethod
    def reduce(self, tokens: VisualTokens, ctx: ReduceContext) -> Reduction:
        """Reduce one sample's visual tokens to at most ``ctx.budget`` tokens.

        Args:
            tokens: ``N`` visual tokens with coordinates and sizes.
            ctx: Budget, stage, generator and any declared needs.

        Returns:
            The reduced tokens, ordered by earliest source, and the assignment.
        """
