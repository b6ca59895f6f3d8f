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
    """Return ``[n_out]`` the smallest input index mapped to each output.

    Dropped inputs (-1) and out-of-range labels go to an extra bucket that is cut
    off, so no boolean compaction makes the host wait for the device.
    """
    n_in = assignment.shape[0]
    dev = assignment.device
    idx = torch.arange(n_in, device=dev)
    valid = (assignment >= 0) & (assignment < n_out)
    bucket = torch.where(valid, assignment, n_out)
    first = torch.full((n_out + 1,), n_in, dtype=torch.long, device=dev)
    return first.scatter_reduce(0, bucket, idx, reduce="amin")[:n_out]


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
        dev, n_in = tokens.device, assignment.shape[0]
        kept = assignment >= 0
        # Dropped inputs get a sentinel label above every real one, and one extra
        # sentinel is appended, so the sentinel is always the last distinct label:
        # unique's output size (the output count) is the only host sync, and
        # dropped rows land in an extra bucket ``n_out`` that is cut off below
        # instead of being compacted away with boolean indexing.
        sentinel = torch.iinfo(torch.long).max
        padded = torch.cat(
            [
                torch.where(kept, assignment, sentinel),
                assignment.new_full((1,), sentinel),
            ]
        )
        labels, inverse = torch.unique(padded, return_inverse=True)
        n_out = int(labels.shape[0]) - 1
        dense = torch.where(kept, inverse[:n_in], -1)
        # Renumber groups by earliest source so outputs are in sequence order.
        earliest = _group_earliest(dense, n_out)
        order = torch.argsort(earliest)
        rank = torch.empty(n_out + 1, dtype=torch.long, device=dev)
        rank[order] = torch.arange(n_out, device=dev)
        rank[n_out] = -1
        final = rank[inverse[:n_in]]  # [N_in]; the sentinel maps to -1

        src = torch.where(kept, final, n_out)  # dropped rows -> bucket n_out
        sizes_in = torch.where(kept, tokens.sizes.to(torch.float32), 0.0)
        sizes = torch.zeros(n_out + 1, dtype=torch.float32, device=dev)
        sizes = sizes.index_add(0, src, sizes_in)[:n_out]
        coords = torch.zeros(n_out + 1, 3, dtype=torch.float32, device=dev)
        coords = coords.index_add(0, src, tokens.coords * sizes_in[:, None])[:n_out]
        coords = coords / sizes[:, None]
        if features is not None:
            feats = features.index_select(0, order.to(features.device))
        else:
            weight = sizes_in if mean == "size" else kept.to(torch.float32)
            denom = torch.zeros(n_out + 1, dtype=torch.float32, device=dev)
            denom = denom.index_add(0, src, weight)[:n_out]
            acc = torch.zeros(
                n_out + 1, tokens.channels, dtype=torch.float32, device=dev
            )
            acc = acc.index_add(
                0, src, tokens.features.to(torch.float32) * weight[:, None]
            )[:n_out]
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
    # wrong, hiding the bug. A float32 sum propagates any NaN/Inf in one reduction
    # (30x cheaper on CPU than isfinite().all(), which builds an [N, C] bool tensor)
    # and is read back with the other flags below; the exact check runs only to
    # confirm a hit, so an overflowing sum of huge finite values is no false alarm.
    total = out.features.sum(dtype=torch.float32)
    a = reduction.assignment
    if a.dtype != torch.long or tuple(a.shape) != (tokens.n,):
        raise fail(f"assignment must be int64 of shape [{tokens.n}]")
    # Every value check is computed on the device and read back in one transfer
    # (one host sync per reduction instead of one per check). Out-of-range labels
    # go to an extra bucket so the scatter ops stay in bounds until reported.
    dev = a.device
    valid = (a >= 0) & (a < n_out)
    bucket = torch.where(valid, a, n_out)
    counts = torch.bincount(bucket, minlength=n_out + 1)[:n_out]
    weight = torch.where(valid, tokens.sizes.to(torch.float32), 0.0)
    summed = torch.zeros(n_out + 1, dtype=torch.float32, device=dev)
    summed = summed.index_add(0, bucket, weight)[:n_out]
    earliest = _group_earliest(a, n_out)
    no_bool = torch.zeros((), dtype=torch.bool, device=dev)
    flags = torch.stack(
        [
            (a < -1).any() | (a >= n_out).any(),
            (counts == 0).any() if n_out else no_bool,
            ~torch.isclose(
                summed, out.sizes.to(torch.float32), rtol=1e-4, atol=1e-3
            ).all(),
            (earliest[1:] <= earliest[:-1]).any() if n_out > 1 else no_bool,
            ~torch.isfinite(total),
        ]
    ).tolist()
    if flags[4] and not bool(torch.isfinite(out.features).all()):
        raise fail("output features contain NaN or Inf")
    if flags[0]:
        raise fail(f"assignment values must lie in [-1, {n_out})")
    if flags[1]:
        raise fail("some output tokens have no source in the assignment")
    if flags[2]:
        raise fail("output sizes are not the sum of their sources' sizes")
    if flags[3]:
        raise fail("outputs are not ordered by their earliest source")
    return reduction
