"""The reduced sequence: which rows survive, and at which positions.

Used by :mod:`tokenred.insertion` for both insertion points; see its docstring for
the position policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokenred.errors import CompatibilityError
from tokenred.tokens import PositionPolicy

if TYPE_CHECKING:
    from tokenred.plan import ReductionPlan
    from tokenred.tokens import Reduction, VisualTokens


def resolve_policy(
    plan: ReductionPlan,
    rope: str,
    default: PositionPolicy = PositionPolicy.SURVIVE,
) -> PositionPolicy:
    """Return the position policy for ``plan`` on a ``rope`` ("1d"/"mrope") model.

    The policy is a study-level control: the plan's (resolved by the runner from
    ``insertion.positions`` or the model's default), else the adapter's
    ``default``. Never the reducer's preference, so reducers compared in one study
    differ in the reducer alone.

    Raises:
        CompatibilityError: For ``reassign`` on an M-RoPE model.
    """
    policy = plan.positions or default
    if rope == "mrope" and policy is PositionPolicy.REASSIGN:
        msg = (
            "insertion.positions=reassign is undefined on an M-RoPE model (its "
            "(t, y, x) ids cannot be re-indexed contiguously); use survive or merged"
        )
        raise CompatibilityError(msg)
    return policy


@dataclass(frozen=True)
class Layout:
    """The unreduced prefill sequence of one sample.

    Attributes:
        positions: ``[A, L]`` the model's own position ids (A=1 for 1-D RoPE, 3 for
            M-RoPE), continuation tokens included.
        vis_start: Row of the first visual token.
        n_visual: Visual tokens ``N`` (reducible rows; newline tokens excluded).
        grid: ``(T, H, W)`` of the visual tokens.
        query_start: First row of the text after the video (for ``Need.QUERY``).
    """

    positions: Tensor
    vis_start: int
    n_visual: int
    grid: tuple[int, int, int]
    query_start: int

    @property
    def length(self) -> int:
        """Sequence length ``L``."""
        return int(self.positions.shape[1])


@dataclass(frozen=True)
class Spliced:
    """Where each row of the reduced sequence comes from, and its position.

    Attributes:
        index: ``[L']`` row of the unreduced sequence behind each reduced row (the
            representative for merged tokens); sorted.
        positions: ``[A, L']`` positions under the policy.
        shift: Tokens removed, when the policy re-indexes (``reassign``); tokens
            after the prefill move down by it. 0 otherwise.
        vis_start: Row of the first visual token.
        n_out: Visual tokens after reduction.
    """

    index: Tensor
    positions: Tensor
    shift: int
    vis_start: int
    n_out: int

    @property
    def length(self) -> int:
        """Reduced length ``L'``."""
        return int(self.index.shape[0])


def build_spliced(
    layout: Layout, tokens: VisualTokens, reduction: Reduction, policy: PositionPolicy
) -> Spliced:
    """Compute the reduced sequence's rows and positions under ``policy``."""
    pos = layout.positions
    dev = pos.device
    vs, n, n_out = layout.vis_start, layout.n_visual, reduction.n_out
    reps = reduction.representatives().to(dev)
    index = torch.cat(
        [
            torch.arange(vs, device=dev),
            vs + reps,
            torch.arange(vs + n, layout.length, device=dev),
        ]
    )
    new = pos.index_select(1, index)
    shift = 0
    if policy is PositionPolicy.REASSIGN:
        shift = n - n_out
        vis = pos[:, vs : vs + 1] + torch.arange(n_out, device=dev)
        new = torch.cat([new[:, :vs], vis, new[:, vs + n_out :] - shift], dim=1)
    elif policy is PositionPolicy.MERGED:
        new = new.to(torch.float32)
        assign = reduction.assignment.to(dev)
        kept = assign >= 0
        weight = tokens.sizes.to(device=dev, dtype=torch.float32)[kept]
        src = pos[:, vs : vs + n].to(torch.float32)[:, kept]
        num = torch.zeros(pos.shape[0], n_out, device=dev).index_add(
            1, assign[kept], src * weight
        )
        den = torch.zeros(n_out, device=dev).index_add(0, assign[kept], weight)
        new[:, vs : vs + n_out] = num / den
    return Spliced(index=index, positions=new, shift=shift, vis_start=vs, n_out=n_out)


def splice(hidden: Tensor, spliced: Spliced, features: Tensor) -> Tensor:
    """Return ``[B, L', D]``: the kept rows with the reduced visual features."""
    out = hidden.index_select(1, spliced.index.to(hidden.device))
    vs = spliced.vis_start
    # [N', D] -> [B, N', D]
    out[:, vs : vs + spliced.n_out] = features.to(out.dtype).unsqueeze(0)
    return out
