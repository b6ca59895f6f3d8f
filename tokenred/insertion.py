"""The model-agnostic insertion engine: run a reducer and splice its result back.

Two insertion points share one set of helpers:

* ``pre_llm``: the reducer sees the projected visual features; the adapter builds a
  shorter input sequence (``N'`` visual rows) and runs the unmodified LLM on it.
* ``in_llm`` at layer ``K >= 1``: :class:`LayerReduction` registers forward
  pre-hooks (``with_kwargs=True``) on the existing decoder layers. Layer ``K``'s
  hook reduces the hidden states; layers ``>= K`` get gathered or recomputed rotary
  embeddings and masks. No forward is copied and no module replaced; detaching the
  hooks restores the model exactly.

Positions follow a :class:`~tokenred.PositionPolicy`:

* ``survive``: each output keeps its representative's (earliest source's) original
  position; text keeps its own. Decoding continues from the original sequence.
* ``reassign`` (1-D RoPE only): the reduced sequence is re-indexed contiguously and
  decoding continues from the reduced length. Deviation from the reference (STTM on
  LLaVA), whose decode positions continue from the *unreduced* length.
* ``merged``: a merged token sits at the size-weighted mean of its sources'
  positions. As rotary angles are linear in the position, this is the weighted
  average of the sources' angles; cos/sin are taken of that average angle.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tokenred._capture import last_query_attention, visual_keys
from tokenred.errors import CompatibilityError, ContractError
from tokenred.measure.latency import phase
from tokenred.splicing import (
    Layout,
    Spliced,
    build_spliced,
    resolve_policy,
    splice,
)
from tokenred.tokens import (
    Need,
    PositionPolicy,
    ReduceContext,
    Reduction,
    Stage,
    VisualTokens,
    validate_reduction,
)

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from tokenred.plan import BudgetCost, ReductionPlan

log = logging.getLogger(__name__)

__all__ = [
    "LayerReduction",
    "Layout",
    "Spliced",
    "build_spliced",
    "layer_lengths",
    "reduce_pre_llm",
    "resolve_policy",
    "run_reducer",
    "sample_generator",
    "scrub_position_ids",
    "splice",
]

Rotary = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``rotary(x, positions [A, L]) -> (cos, sin)``, each ``[1, L, head_dim]``."""


def sample_generator(seed: int, sample_id: str) -> torch.Generator:
    """Return a CPU generator seeded from ``(seed, sample_id)``.

    Hashing makes the stream independent of sample order and of Python's hash seed.
    """
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def run_reducer(
    plan: ReductionPlan,
    tokens: VisualTokens,
    *,
    head_dim: int | None,
    attention: Tensor | None = None,
    query: Tensor | None = None,
    keys: Tensor | None = None,
    cost: BudgetCost | None = None,
) -> tuple[Reduction, int]:
    """Build the context, call the reducer under the ``reducer`` phase and validate.

    The budget is resolved here, once per reduction, from the tokens the reducer
    actually sees; the reducer receives it and the run records it (returned next to
    the reduction), so the two can never disagree. A FLOPs budget needs ``cost``
    (the architecture, the unreduced length and the layer), which the adapter's
    prefill passes.

    The phase reports to the timer the measurement protocol made active (see
    :func:`tokenred.measure.latency.timing`); outside a measurement it costs nothing.

    Returns:
        The validated reduction and the token budget it was given.

    Raises:
        ContractError: If the reducer's result breaks the contract.
    """
    needs = plan.reducer.needs
    ctx = ReduceContext(
        budget=plan.budget.resolve(tokens.n, cost),
        generator=sample_generator(plan.seed, plan.sample_id),
        stage=plan.stage,
        layer=plan.layer,
        attention=attention if Need.ATTENTION in needs else None,
        query=query if Need.QUERY in needs else None,
        keys=keys if Need.KEYS in needs else None,
        head_dim=head_dim,
        sample_id=plan.sample_id,
    )
    with phase("reducer"):
        result = plan.reducer.reduce(tokens, ctx)
    checked = validate_reduction(tokens, result, ctx.budget, reducer=plan.label)
    return checked, ctx.budget


def layer_lengths(
    num_layers: int, layer: int, length: int, reduced: int, n_in: int, n_out: int
) -> tuple[list[int], list[int]]:
    """Return per-layer (sequence, visual) lengths: unreduced below ``layer``."""
    seq = [length] * layer + [reduced] * (num_layers - layer)
    vis = [n_in] * layer + [n_out] * (num_layers - layer)
    return seq, vis


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    hs: Tensor = args[0] if args else kwargs["hidden_states"]
    if hs.shape[0] != 1:
        msg = (
            f"in-LLM reduction runs one sample at a time, got a batch of {hs.shape[0]};"
            " call the adapter per sample"
        )
        raise CompatibilityError(msg)
    return hs


def _replace_hidden(
    args: tuple[Any, ...], kwargs: dict[str, Any], hs: Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (hs, *args[1:]), kwargs
    kwargs["hidden_states"] = hs
    return args, kwargs


def _check_mask(mask: Any) -> Tensor | None:
    if mask is None or isinstance(mask, Tensor):
        return mask
    msg = (
        f"in-LLM reduction cannot reshape an attention mask of type "
        f"{type(mask).__name__}; use model.attn_implementation=sdpa, eager or "
        "flash_attention_2"
    )
    raise CompatibilityError(msg)


class LayerReduction:
    """Forward pre-hooks that reduce at decoder layer K and keep later layers right.

    Use as a context manager around each forward: hooks exist only inside it. The
    first forward (the prefill) reduces; later forwards (question suffix, decode
    steps) only fix positions and masks of layers ``>= K``.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        rotary: Rotary,
        *,
        plan: ReductionPlan,
        layout: Layout,
        policy: PositionPolicy,
        head_dim: int,
        cost: BudgetCost | None = None,
    ) -> None:
        """Prepare hooks for ``plan`` on ``layers``; nothing is registered yet."""
        if not 1 <= plan.layer < len(layers):
            msg = (
                f"insertion.layer={plan.layer} is outside 1..{len(layers) - 1} for a "
                f"model with {len(layers)} decoder layers"
            )
            raise CompatibilityError(msg)
        self.layers = list(layers)
        self.rotary = rotary
        self.plan = plan
        self.layout = layout
        self.policy = policy
        self.head_dim = head_dim
        self.cost = cost
        self.k = plan.layer
        self.reduction: Reduction | None = None
        self.spliced: Spliced | None = None
        self.budget: int | None = None
        self.prefill_len = layout.length
        self.positions: Tensor | None = None
        self._handles: list[RemovableHandle] = []
        self._upper: dict[str, Any] = {}
        self._captured: dict[str, Tensor] = {}

    def fork(self) -> LayerReduction:
        """Return a detached copy sharing the recorded reduction (for KV reuse)."""
        twin = LayerReduction(
            self.layers,
            self.rotary,
            plan=self.plan,
            layout=self.layout,
            policy=self.policy,
            head_dim=self.head_dim,
            cost=self.cost,
        )
        twin.reduction, twin.spliced = self.reduction, self.spliced
        twin.budget = self.budget
        twin.prefill_len = self.prefill_len
        return twin

    def step(self, positions: Tensor) -> LayerReduction:
        """Declare the lower-layer positions ``[A, q]`` of the next forward."""
        self.positions = positions
        return self

    def __enter__(self) -> LayerReduction:
        """Register one pre-hook per decoder layer from K-1 on."""
        for idx in range(self.k - 1, len(self.layers)):
            hook = self._make_hook(idx)
            self._handles.append(
                self.layers[idx].register_forward_pre_hook(hook, with_kwargs=True)
            )
        return self

    def __exit__(self, *exc: object) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._upper = {}

    def _make_hook(self, idx: int) -> Callable[..., Any]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            hs = _hidden(args, kwargs)
            if idx == self.k - 1:
                if self.spliced is None:
                    self._capture(module, hs, kwargs)
                return args, kwargs
            if idx == self.k:
                if self.spliced is None:
                    hs = self._reduce(hs, kwargs)
                else:
                    self._after(hs, kwargs)
            kwargs.update(self._upper)
            if "position_ids" in kwargs:
                # Layers only use position_embeddings; gapped ids would make
                # flash-attention treat the sequence as packed.
                kwargs["position_ids"] = None
            return _replace_hidden(args, kwargs, hs)

        return hook

    def _capture(self, layer: nn.Module, hs: Tensor, kwargs: dict[str, Any]) -> None:
        needs = self.plan.reducer.needs
        vs, n = self.layout.vis_start, self.layout.n_visual
        cos, sin = kwargs["position_embeddings"]
        if Need.ATTENTION in needs:
            # [B, H, 1, L] -> [H, 1, N] over the visual columns
            attn = last_query_attention(layer, hs, cos, sin)
            self._captured["attention"] = attn[0, :, :, vs : vs + n]
        if Need.KEYS in needs:
            self._captured["keys"] = visual_keys(layer, hs[0, vs : vs + n])

    def _reduce(self, hs: Tensor, kwargs: dict[str, Any]) -> Tensor:
        lay = self.layout
        vs, n = lay.vis_start, lay.n_visual
        tokens = VisualTokens.from_grid(hs[0, vs : vs + n], lay.grid)
        reduction, budget = run_reducer(
            self.plan,
            tokens,
            head_dim=self.head_dim,
            attention=self._captured.get("attention"),
            query=hs[0, lay.query_start :],
            keys=self._captured.get("keys"),
            cost=self.cost,
        )
        sp = build_spliced(lay, tokens, reduction, self.policy)
        out = splice(hs, sp, reduction.tokens.features)
        cos, sin = kwargs["position_embeddings"]
        idx = sp.index.to(hs.device)
        if self.policy is PositionPolicy.SURVIVE:
            pe = (cos.index_select(-2, idx), sin.index_select(-2, idx))
        else:
            pe = self.rotary(out, sp.positions)
        upper: dict[str, Any] = {"position_embeddings": pe}
        mask = _check_mask(kwargs.get("attention_mask"))
        if mask is not None:
            upper["attention_mask"] = mask.index_select(-2, idx).index_select(-1, idx)
        self._upper = upper
        self.reduction, self.spliced, self.budget = reduction, sp, budget
        self._captured = {}
        return out

    def _after(self, hs: Tensor, kwargs: dict[str, Any]) -> None:
        sp = self.spliced
        if sp is None:
            raise ContractError("LayerReduction: no reduction recorded before decode")
        upper: dict[str, Any] = {}
        if sp.shift:
            if self.positions is None:
                msg = "LayerReduction.step(positions) must precede each forward"
                raise ContractError(msg)
            upper["position_embeddings"] = self.rotary(hs, self.positions - sp.shift)
        mask = _check_mask(kwargs.get("attention_mask"))
        if mask is not None:
            # Columns follow cache layer 0 (unreduced); keep the reduced prefix
            # columns and everything appended after the prefill.
            tail = torch.arange(self.prefill_len, mask.shape[-1], device=mask.device)
            cols = torch.cat([sp.index.to(mask.device), tail])
            upper["attention_mask"] = mask.index_select(-1, cols)
        self._upper = upper


def reduce_pre_llm(
    plan: ReductionPlan,
    layout: Layout,
    features: Tensor,
    policy: PositionPolicy,
    *,
    head_dim: int,
    query: Tensor | None,
    cost: BudgetCost | None = None,
) -> tuple[Reduction, Spliced, int]:
    """Reduce projected visual features ``[N, C]`` before the LLM.

    Returns:
        The reduction, its splice into the sequence, and the budget it was given.
    """
    if plan.stage is not Stage.PRE_LLM:
        msg = f"reduce_pre_llm called for stage {plan.stage.value}"
        raise CompatibilityError(msg)
    tokens = VisualTokens.from_grid(features, layout.grid)
    reduction, budget = run_reducer(
        plan, tokens, head_dim=head_dim, query=query, cost=cost
    )
    return reduction, build_spliced(layout, tokens, reduction, policy), budget


def scrub_position_ids(layers: Sequence[nn.Module]) -> list[RemovableHandle]:
    """Drop ``position_ids`` from decoder-layer calls (flash-attention only).

    flash-attention reads gapped position ids (``survive``/``merged`` after
    pre-LLM reduction) as packed sequences; the layers need only the rotary
    embeddings, which are computed from the ids before the layers run.
    """

    def hook(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if "position_ids" in kwargs:
            kwargs["position_ids"] = None
        return args, kwargs

    return [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
