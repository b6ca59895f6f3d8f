"""The contract types a reducer consumes and returns.

A reducer sees one sample (no batch dimension) as :class:`VisualTokens`, plus a
:class:`ReduceContext`, and returns a :class:`Reduction`. The framework runs
:func:`validate_reduction` on every result before it splices tokens back into a model.

Coordinates are ``(t, y, x)`` centroids in units of the original patch grid; sizes say
how many original patches a token stands for. Deriving coordinates and sizes in one
place (:meth:`Reduction.from_assignment`) keeps every merger consistent.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from tokenred.errors import ContractError


class Stage(str, enum.Enum):
    """Where in the model a reducer runs."""

    PRE_LLM = "pre_llm"
    """On the projected visual features, before the first decoder layer."""
    IN_LLM = "in_llm"
    """On the hidden states entering decoder layer K >= 1."""


class Need(str, enum.Enum):
    """Optional context a reducer may declare it needs."""

    ATTENTION = "attention"
    """``[heads, Q, N]`` attention of the last query position(s) at layer K-1."""
    QUERY = "query"
    """``[Q, D]`` hidden states of the text query at the insertion point."""
    KEYS = "keys"
    """``[N, D]`` attention keys of the visual tokens at layer K-1."""


class PositionPolicy(str, enum.Enum):
    """How an adapter assigns rotary positions to reduced visual tokens."""

    REASSIGN = "reassign"
    """Contiguous re-indexing of the reduced sequence (1-D RoPE only)."""
    SURVIVE = "survive"
    """Each output keeps the original position of its earliest source."""
    MERGED = "merged"
    """Size-weighted average of the sources' rotary angles."""


@dataclass(frozen=True)
class VisualTokens:
    """Visual tokens of one video, with their place in the original grid.

    Attributes:
        features: ``[N, C]`` token features (projector outputs or hidden states).
        coords: ``[N, 3]`` float32 ``(t, y, x)`` centroids in original-grid units.
        sizes: ``[N]`` float32 count of original patches each token stands for.
        grid: The original grid ``(T, H, W)``.
    """

    features: Tensor
    coords: Tensor
    sizes: Tensor
    grid: tuple[int, int, int]

    @classmethod
    def from_grid(cls, features: Tensor, grid: tuple[int, int, int]) -> VisualTokens:
        """Wrap original (unreduced) tokens laid out in ``(t, y, x)`` raster order.

        Args:
            features: ``[T*H*W, C]`` features, frame by frame, rows then columns.
            grid: ``(T, H, W)``.

        Raises:
            ContractError: If the feature count does not match the grid.
        """
        t, h, w = (int(g) for g in grid)
        if features.dim() != 2 or features.shape[0] != t * h * w:
            msg = (
                f"VisualTokens.from_grid: features of shape {tuple(features.shape)} do "
                f"not hold T*H*W = {t}*{h}*{w} = {t * h * w} tokens of [N, C]"
            )
            raise ContractError(msg)
        dev = features.device
        tt, yy, xx = torch.meshgrid(
            torch.arange(t, device=dev),
            torch.arange(h, device=dev),
            torch.arange(w, device=dev),
            indexing="ij",
        )
        # [T, H, W] x3 -> [T*H*W, 3]
        coords = torch.stack([tt, yy, xx], dim=-1).reshape(-1, 3).to(torch.float32)
        sizes = torch.ones(t * h * w, dtype=torch.float32, device=dev)
        return cls(features=features, coords=coords, sizes=sizes, grid=(t, h, w))

    @property
    def n(self) -> int:
        """Number of tokens ``N``."""
        return int(self.features.shape[0])

    @property
    def channels(self) -> int:
        """Feature width ``C``."""
        return int(self.features.shape[1])

    @property
    def device(self) -> torch.device:
        """Device of the features."""
        return self.features.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the features."""
        return self.features.dtype

    def is_original(self) -> bool:
        """Whether these are the full, unreduced grid tokens."""
        t, h, w = self.grid
        return self.n == t * h * w and bool(torch.all(self.sizes == 1))

    def to_grid(self) -> Tensor:
        """Return the features as ``[T, H, W, C]`` (original tokens only).

        Raises:
            ContractError: If the tokens are not the full original grid.
        """
        t, h, w = self.grid
        if self.n != t * h * w:
            msg = f"to_grid needs the {t * h * w} original tokens, got {self.n}"
            raise ContractError(msg)
        # [T*H*W, C] -> [T, H, W, C]
        return self.features.reshape(t, h, w, self.channels)


@dataclass(frozen=True)
class ReduceContext:
    """Everything a reducer may know about the call besides the tokens.

    Attributes:
        budget: The maximum number of output tokens (resolved by the runner, >= 1).
        generator: The only random source a reducer may use.
        stage: Insertion stage.
        layer: Decoder layer K the tokens enter (0 for ``PRE_LLM``).
        attention: ``[heads, Q, N]`` attention from the last query position(s) at
            layer K-1 to these tokens; set only for reducers that need it.
        query: ``[Q, D]`` query hidden states; set only when needed.
        keys: ``[N, D]`` keys of the visual tokens; set only when needed.
        head_dim: Attention head width of the model, for per-head similarity.
        sample_id: For logs only.
    """

    budget: int
    generator: torch.Generator
    stage: Stage = Stage.PRE_LLM
    layer: int = 0
    attention: Tensor | None = None
    query: Tensor | None = None
    keys: Tensor | None = None
    head_dim: int | None = None
    sample_id: str = ""

    def require(self, need: Need, reducer: str) -> Tensor:
        """Return the tensor for a declared need, or fail with a clear message.

        Raises:
            ContractError: If the framework did not supply it.
        """
        value: Tensor | None = getattr(self, need.value)
        if value is None:
            msg = (
                f"reducer '{reducer}' needs {need.value} scores at layer {self.layer}, "
                f"but none were provided (stage {self.stage.value}); run it through a "
                "model adapter that supplies them, e.g. insertion.stage=in_llm with "
                "insertion.layer>=1"
            )
            raise ContractError(msg)
        return value


def _group_earliest(assignment: Tensor, n_out: int) -> Tensor:
    """Return ``[n_out]`` the smallest input index mapped to each output."""
    n_in = assignment.shape[0]
    idx = torch.arange(n_in, device=assignment.device)
    kept = assignment >= 0
    first = torch.full((n_out,), n_in, dtype=torch.long, device=assignment.device)
    return first.scatter_reduce(0, assignment[kept], idx[kept], reduce="amin")


@dataclass(frozen=True)
class Reduction:
    """The result of one reducer call.

    Attributes:
        tokens: The reduced tokens, at most ``budget`` of them, ordered by their
            earliest source.
        assignment: ``[N_in]`` int64, the output index of each input token or -1
            where it was dropped.
        info: Diagnostics (floats) copied into the results, e.g. a threshold used.
    """

    tokens: VisualTokens
    assignment: Tensor
    info: Mapping[str, float] = field(default_factory=dict)

    @property
    def n_out(self) -> int:
        """Number of output tokens."""
        return self.tokens.n

    def representatives(self) -> Tensor:
        """Return ``[N_out]`` the earliest source index of each output token.

        Adapters use it for the ``survive`` position policy.
        """
        return _group_earliest(self.assignment, self.n_out)

    @classmethod
    def from_keep_index(
        cls,
        tokens: VisualTokens,
        keep: Tensor,
        info: Mapping[str, float] | None = None,
    ) -> Reduction:
        """Build a pruning result that keeps ``keep`` and drops the rest.

        Args:
            tokens: The input tokens.
            keep: ``[K]`` distinct input indices, in any order; outputs are sorted.
            info: Diagnostics.
        """
        keep_sorted, _ = torch.sort(keep.to(device=tokens.device, dtype=torch.long))
        assignment = torch.full((tokens.n,), -1, dtype=torch.long, device=tokens.device)
        assignment[keep_sorted] = torch.arange(
            keep_sorted.shape[0], device=tokens.device
        )
        out = VisualTokens(
            features=tokens.features.index_select(0, keep_sorted),
            coords=tokens.coords.index_select(0, keep_sorted),
            sizes=tokens.sizes.index_select(0, keep_sorted),
            grid=tokens.grid,
        )
        return cls(tokens=out, assignment=assignment, info=dict(info or {}))

    @classmethod
    def from_assignment(
        cls,
        tokens: VisualTokens,
        assignment: Tensor,
        *,
        features: Tensor | None = None,
        mean: Literal["size", "count"] = "size",
        info: Mapping[str, float] | None = None,
    ) -> Reduction:
        """Build a merging result from an assignment map.

        Output groups are renumbered so that outputs are ordered by their earliest
        source. Coordinates are size-weighted centroids of the sources and sizes are
        summed, whatever the feature mean, so they stay consistent across reducers.

        Args:
            tokens: The input tokens.
            assignment: ``[N_in]`` group label of each input (any non-negative ints,
                need not be contiguous) or -1 to drop it.
            features: Optional ``[N_out, C]`` features to use instead of the mean,
                given in the order of the *sorted distinct labels*; for reducers
                whose merged features are not a plain mean of the inputs (STTM).
            mean: ``"size"`` for size-weighted means (ToMe's ``merge_wavg``) or
                ``"count"`` for plain means over the members.
            info: Diagnostics.
        """
        assignment = assignment.to(device=tokens.device, dtype=torch.long)
        kept = assignment >= 0
        labels, inverse = torch.unique(assignment[kept], return_inverse=True)
        n_out = int(labels.shape[0])
        dense = torch.full_like(assignment, -1)
        dense[kept] = inverse
        # Renumber groups by earliest source so outputs are in sequence order.
        earliest = _group_earliest(dense, n_out)
        order = torch.argsort(earliest)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n_out, device=order.device)
        final = torch.full_like(assignment, -1)
        final[kept] = rank[dense[kept]]

        src = final[kept]
        sizes_in = tokens.sizes[kept]
        sizes = torch.zeros(n_out, dtype=torch.float32, device=tokens.device)
        sizes = sizes.index_add(0, src, sizes_in)
        coords = torch.zeros(n_out, 3, dtype=torch.float32, device=tokens.device)
        coords = coords.index_add(0, src, tokens.coords[kept] * sizes_in[:, None])
        coords = coords / sizes[:, None]
        if features is not None:
            feats = features.index_select(0, order.to(features.device))
        else:
            weight = sizes_in if mean == "size" else torch.ones_like(sizes_in)
            denom = torch.zeros(n_out, dtype=torch.float32, device=tokens.device)
            denom = denom.index_add(0, src, weight)
            acc = torch.zeros(
                n_out, tokens.channels, dtype=torch.float32, device=tokens.device
            )
            acc = acc.index_add(
                0, src, tokens.features[kept].to(torch.float32) * weight[:, None]
            )
            feats = (acc / denom[:, None]).to(tokens.dtype)
        out = VisualTokens(features=feats, coords=coords, sizes=sizes, grid=tokens.grid)
        return cls(tokens=out, assignment=final, info=dict(info or {}))


def validate_reduction(
    tokens: VisualTokens, reduction: object, budget: int, reducer: str = "reducer"
) -> Reduction:
    """Check a reducer's result cheaply; the framework runs this after every call.

    Checks types, device, dtype and width, the budget, that the features are finite,
    the assignment range, that every output has a source, sizes conserved, and the
    output order.

    Args:
        tokens: The input tokens.
        reduction: What the reducer returned.
        budget: The budget it was given.
        reducer: Name (and distribution) for the message.

    Returns:
        The reduction, typed.

    Raises:
        ContractError: Naming the reducer and the violated invariant.
    """

    def fail(what: str) -> ContractError:
        return ContractError(f"reducer '{reducer}' broke the contract: {what}")

    if not isinstance(reduction, Reduction):
        raise fail(f"reduce() returned {type(reduction).__name__}, not a Reduction")
    out = reduction.tokens
    if out.features.dim() != 2 or out.channels != tokens.channels:
        raise fail(
            f"output features have shape {tuple(out.features.shape)}, expected "
            f"[N_out, {tokens.channels}]"
        )
    if out.dtype != tokens.dtype or out.device != tokens.device:
        raise fail(
            f"output is {out.dtype} on {out.device}, input was {tokens.dtype} on "
            f"{tokens.device}"
        )
    n_out = out.n
    if n_out > budget:
        raise fail(f"returned {n_out} tokens for budget {budget}")
    if n_out < 1 and tokens.n > 0:
        raise fail("returned no tokens")
    if tuple(out.coords.shape) != (n_out, 3) or tuple(out.sizes.shape) != (n_out,):
        raise fail("coords must be [N_out, 3] and sizes [N_out]")
    # NaN/Inf would otherwise reach the LLM and come back as empty answers scored as
    # wrong, hiding the bug. A float32 sum propagates any NaN/Inf and is one
    # reduction and one host sync (30x cheaper on CPU than isfinite().all(), which
    # builds an [N, C] bool tensor); the exact check runs only to confirm a hit, so
    # an overflowing sum of huge finite values is not a false alarm.
    total = out.features.sum(dtype=torch.float32)
    if not bool(torch.isfinite(total)) and not bool(torch.isfinite(out.features).all()):
        raise fail("output features contain NaN or Inf")
    a = reduction.assignment
    if a.dtype != torch.long or tuple(a.shape) != (tokens.n,):
        raise fail(f"assignment must be int64 of shape [{tokens.n}]")
    if a.numel() and (int(a.min()) < -1 or int(a.max()) >= n_out):
        raise fail(f"assignment values must lie in [-1, {n_out})")
    kept = a >= 0
    counts = torch.bincount(a[kept], minlength=n_out)
    if n_out and bool((counts == 0).any()):
        raise fail("some output tokens have no source in the assignment")
    summed = torch.zeros(n_out, dtype=torch.float32, device=a.device)
    summed = summed.index_add(0, a[kept], tokens.sizes[kept].to(torch.float32))
    if not torch.allclose(summed, out.sizes.to(torch.float32), rtol=1e-4, atol=1e-3):
        raise fail("output sizes are not the sum of their sources' sizes")
    earliest = reduction.representatives()
    if n_out > 1 and not bool((earliest[1:] > earliest[:-1]).all()):
        raise fail("outputs are not ordered by their earliest source")
    return reduction
