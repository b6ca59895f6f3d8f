"""The two behaviours of STTM as data: one :class:`Rules` per mode.

``reference`` reproduces the authors' code (https://github.com/HYUNJS/STTM@00736c7),
quirks included, so that published numbers can be reproduced; ``fixed`` corrects
the quirks. Every place where the modes differ reads one field of :class:`Rules`
instead of branching on the mode, so the algorithm modules read as the paper does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class STTMMode(str, enum.Enum):
    """Which behaviour STTM follows."""

    REFERENCE = "reference"
    """The authors' code, quirks included (reproduces published numbers)."""
    FIXED = "fixed"
    """Masked border slots, full connected components, area-weighted means."""


@dataclass(frozen=True)
class Rules:
    """Where the two modes differ.

    Attributes:
        read_missing_slots: The quadtree's stop test reads the child at
            ``(t, 0, 0)`` for a child slot that does not exist on an odd border
            (so the top-left root node always stops); False leaves such slots out.
        width_one_is_flat: A grid of width 1 gets no spatial levels (the
            reference's pyramid loop compares widths).
        early_stop: Label propagation stops at the first idempotent labelling (can
            leave connected nodes apart); False runs to connected components.
        model_dtype: Levels and merge sums are kept in the model dtype and rounded
            after every addition; False keeps float32 and rounds once.
        nonpositive_tau_t_off: ``tau_t <= 0`` switches the temporal stage off.
        weighted_default: Default of ``weighted_avg`` (area-weighted means).
    """

    read_missing_slots: bool
    width_one_is_flat: bool
    early_stop: bool
    model_dtype: bool
    nonpositive_tau_t_off: bool
    weighted_default: bool

    def level_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Dtype of pooled levels and merge accumulators for a model dtype."""
        return dtype if self.model_dtype else torch.float32

    def temporal_off(self, tau_t: float) -> bool:
        """Whether ``tau_t`` itself switches the temporal stage off."""
        return self.nonpositive_tau_t_off and tau_t <= 0


REFERENCE = Rules(
    read_missing_slots=True,
    width_one_is_flat=True,
    early_stop=True,
    model_dtype=True,
    nonpositive_tau_t_off=True,
    weighted_default=False,
)
FIXED = Rules(
    read_missing_slots=False,
    width_one_is_flat=False,
    early_stop=False,
    model_dtype=False,
    nonpositive_tau_t_off=False,
    weighted_default=True,
)


def rules_of(reference: bool) -> Rules:
    """Return the rules of ``reference`` (True) or ``fixed`` (False) mode."""
    return REFERENCE if reference else FIXED
