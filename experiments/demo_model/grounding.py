"""Training targets of the demo model: what visual tokens show, what a question asks.

A 0.4M-parameter LLM trained from scratch does not find the handful of relevant
tokens among 1,024 by itself within a CPU budget: with a near-uniform attention the
answer position sees the mean of the video, in which a needle is 0.5 % of the
signal, and the answer loss stays at ln 4 for thousands of steps (docs/demo-model.md
has the failed runs). Two kinds of auxiliary targets, both derived from the training
split only, remove that plateau:

* a per-token colour label (from the decoded pixels), so the visual states say what
  they show;
* grounding targets for a few attention heads at the answer position: at layer 0
  the question's words (what is asked), at layer 1 the visual tokens the question is
  about (the brief object, the lamp, the moving object, the two objects), over all
  frames and, for two heads, over the first and second half of the video (so time
  is readable).

Grounding alone makes the answer read the right tokens, but not what they hold:
with it the colour needle and order reach 96-100 % while direction, count and shape
stay near chance, because what layer 1 reads (the visual states after layer 0) does
not carry position or shape. :func:`probe_labels` gives those states per-token
targets for a linear probe: the token's grid row and column (direction compares the
object's mean position in the two halves) and, for objects whose shape the
annotation records, that shape.

The model at evaluation is an ordinary checkpoint: nothing here runs outside
training (the probe's weights are not saved).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tokenred.builtin.synthetic_render import COLORS, SHAPES
from tokenred.data import Sample

COLOR_IDS: dict[str, int] = {c: i + 1 for i, c in enumerate(COLORS)}
"""Label of each palette colour in :func:`colour_labels` (0 = no object)."""


def colour_labels(frames: np.ndarray, grid: int = 8) -> np.ndarray:
    """Label each cell of a ``grid x grid`` split of every frame with its object colour.

    ``[n, T, S, S, 3]`` uint8 -> ``[n, T, grid, grid]`` uint8: 0 = no saturated
    object, ``1 + i`` = the ``i``-th synthetic colour. Derived from the decoded pixels
    (saturated pixels snapped to the nearest palette colour), so it needs no access
    to the generator's scene description.
    """
    palette = np.array(list(COLORS.values()), np.int32)  # [P, 3]
    n, t, size = frames.shape[0], frames.shape[1], frames.shape[2]
    cell = size // grid
    out = np.zeros((n, t, grid, grid), np.uint8)
    for i in range(n):
        px = np.asarray(frames[i], np.int32)  # [T, S, S, 3]
        sat = px.max(-1) - px.min(-1) > 80  # [T, S, S]
        dist = ((px[..., None, :] - palette) ** 2).sum(-1)  # [T, S, S, P]
        hot = np.eye(len(palette), dtype=np.int32)[dist.argmin(-1)] * sat[..., None]
        # [T, S, S, P] -> [T, g, cell, g, cell, P] -> per-cell counts [T, g, g, P]
        counts = hot[:, : grid * cell, : grid * cell].reshape(
            t, grid, cell, grid, cell, -1
        )
        counts = counts.sum((2, 4))
        label = counts.argmax(-1) + 1
        out[i] = np.where(counts.max(-1) >= cell, label, 0)
    return out


def relevant_cells(labels: np.ndarray, task: str, state: dict) -> np.ndarray:
    """Return the ``[T, g, g]`` bool cells a question of ``task`` is about.

    Args:
        labels: ``[T, g, g]`` colour labels of the video.
        task: The sample's ``task_type``.
        state: The generator's ground truth stored in the annotation.
    """
    if task == "order":
        colours = [state["first"], state["second"]]
    else:
        colours = [state["color"]]
    ids = [COLOR_IDS[c] for c in colours]
    cells = np.isin(labels, ids)  # [T, g, g]
    if task == "count":
        # The lamp sits still: its cells in every frame, lit or dark.
        cells = np.broadcast_to(cells.any(0), cells.shape).copy()
    return cells


def relevance(labels: np.ndarray, samples: Sequence[Sample]) -> np.ndarray:
    """``[n, T, g, g]`` labels -> ``[n, T, g, g]`` bool relevant cells per sample."""
    return np.stack(
        [
            relevant_cells(lab, str(s.meta["task"]), dict(s.meta.get("state", {})))
            for lab, s in zip(labels, samples)
        ]
    )


IGNORE = -100
"""Probe label of a token without a target (``cross_entropy``'s ``ignore_index``)."""


def shape_targets(labels: np.ndarray, task: str, state: dict) -> np.ndarray:
    """Return ``[T, g, g]`` shape indices of the tokens of the object a question names.

    The annotation records the shape of the needle, of the moving object and of the
    lamp (always a circle, lit cells only); every other token is :data:`IGNORE`.
    """
    out = np.full(labels.shape, IGNORE, np.int64)
    if task.startswith("needle") or task == "direction":
        shape = str(state["shape"])
    elif task == "count":
        shape = "circle"
    else:
        return out
    out[labels == COLOR_IDS[str(state["color"])]] = SHAPES.index(shape)
    return out


def probe_labels(labels: np.ndarray, samples: Sequence[Sample]) -> np.ndarray:
    """Per-token probe targets: ``[n, T, g, g]`` colours -> ``[n, T, g, g, 3]`` int64.

    The last axis is (grid row, grid column, shape); row and column are defined for
    every token, shape as in :func:`shape_targets`.
    """
    n, t, g = labels.shape[:3]
    rows = np.broadcast_to(np.arange(g)[:, None], (g, g))  # [g, g]
    cols = np.broadcast_to(np.arange(g)[None, :], (g, g))  # [g, g]
    out = np.empty((n, t, g, g, 3), np.int64)
    out[..., 0] = rows
    out[..., 1] = cols
    out[..., 2] = np.stack(
        [
            shape_targets(lab, str(s.meta["task"]), dict(s.meta.get("state", {})))
            for lab, s in zip(labels, samples)
        ]
    )
    return out


@dataclass(frozen=True)
class HeadTargets:
    """Which attention heads are grounded, and on what."""

    question_layer: int = 0
    question_head: int = 0
    video_layer: int = 1
    all_frames: tuple[int, ...] = (0, 1)
    first_half: int = 2
    second_half: int = 3


def video_targets(cells: np.ndarray, heads: HeadTargets) -> tuple[Tensor, Tensor]:
    """Target attention distributions of the video heads over the visual tokens.

    ``[B, T, g, g]`` bool -> targets ``[B, H', T*g*g]`` (rows sum to 1, or 0 where
    the head has nothing to look at, e.g. a needle in the other half) and the
    ``[H']`` head indices.
    """
    b, t = cells.shape[:2]
    flat = torch.from_numpy(cells.reshape(b, t, -1)).float()  # [B, T, g*g]
    half = torch.arange(t) < t // 2  # [T]
    masks = [flat] * len(heads.all_frames)
    masks += [flat * half[None, :, None], flat * ~half[None, :, None]]
    # [H', B, T, g*g] -> [B, H', T*g*g]
    stacked = torch.stack(masks).permute(1, 0, 2, 3).reshape(b, len(masks), -1)
    total = stacked.sum(-1, keepdim=True)
    index = torch.tensor([*heads.all_frames, heads.first_half, heads.second_half])
    return stacked / total.clamp(min=1.0), index


def attention_loss(attn: Tensor, target: Tensor, offset: int) -> Tensor:
    """Cross-entropy of target distributions against attention rows.

    Args:
        attn: ``[B, H', K]`` attention probabilities of the answer position over all
            K keys (prefix and question).
        target: ``[B, H', N]`` distributions over the N keys starting at ``offset``
            (rows of zeros are skipped).
        offset: Key index of the first targeted token.
    """
    n = target.shape[-1]
    logp = attn[..., offset : offset + n].clamp(min=1e-9).log()  # [B, H', N]
    per_row = -(target * logp).sum(-1)  # [B, H']
    used = target.sum(-1) > 0
    return per_row[used].mean() if bool(used.any()) else per_row.sum() * 0.0


def question_span(suffix: Sequence[int], question: Sequence[int]) -> tuple[int, int]:
    """Return ``(start, end)`` of the question's token ids inside the prompt suffix."""
    n = len(question)
    for i in range(len(suffix) - n + 1):
        if list(suffix[i : i + n]) == list(question):
            return i, i + n
    msg = "grounding: the question's tokens are not in the prompt"
    raise ValueError(msg)
