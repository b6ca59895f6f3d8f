"""Training targets of the demo model (experiments/demo_model/grounding.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from demo_model.grounding import (
    COLOR_IDS,
    IGNORE,
    HeadTargets,
    attention_loss,
    colour_labels,
    probe_labels,
    question_span,
    relevant_cells,
    video_targets,
)
from tokenred.builtin.synthetic import SyntheticConfig, make_sample


def _sample(task: str) -> tuple[dict, np.ndarray]:
    cfg = SyntheticConfig()
    for i in range(64):
        record, frames = make_sample(cfg, "train", i)
        if record["task_type"] == task:
            return record, frames[::2]  # the 16 sampled frames, one per slot
    raise AssertionError(task)


def test_colour_labels_find_the_needle_in_its_slot_only() -> None:
    record, frames = _sample("needle_color")
    labels = colour_labels(frames[None])[0]  # [T, 8, 8]
    needle = COLOR_IDS[record["state"]["color"]]
    frames_with = np.flatnonzero((labels == needle).any((1, 2)))
    assert frames_with.tolist() == [record["state"]["slot"]]
    persistent = [COLOR_IDS[c] for c in record["state"]["persistent"]]
    assert all((labels == p).any((1, 2)).all() for p in persistent)


@pytest.mark.parametrize("task", ["needle_color", "direction", "count", "order"])
def test_relevant_cells_follow_the_question(task: str) -> None:
    record, frames = _sample(task)
    labels = colour_labels(frames[None])[0]
    cells = relevant_cells(labels, task, record["state"])
    assert cells.shape == labels.shape and cells.any()
    per_frame = cells.any((1, 2))
    if task == "needle_color":
        assert per_frame.sum() == 1
    if task == "count":  # the lamp's cells in every frame, lit or dark
        assert per_frame.all() and (cells == cells[0]).all()
    if task == "direction":  # the mover's cells change position
        assert per_frame.all() and not (cells == cells[0]).all()
    if task == "order":
        t1 = record["state"]["slots"][0]
        assert not per_frame[:t1].any() and per_frame[t1:].all()


def test_video_targets_are_distributions_per_head() -> None:
    cells = np.zeros((2, 4, 2, 2), bool)
    cells[0, 0, 0, 0] = cells[0, 3, 1, 1] = True  # one cell per half
    cells[1, 1, :, :] = True  # first half only
    heads = HeadTargets()
    dist, index = video_targets(cells, heads)
    assert index.tolist() == [0, 1, 2, 3] and dist.shape == (2, 4, 16)
    sums = dist.sum(-1)
    torch.testing.assert_close(sums[0], torch.ones(4))
    torch.testing.assert_close(sums[1], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert dist[0, 2].nonzero().flatten().tolist() == [0]  # first half: frame 0
    assert dist[0, 3].nonzero().flatten().tolist() == [15]  # second half: frame 3


def test_attention_loss_is_the_cross_entropy_on_used_rows() -> None:
    attn = torch.softmax(torch.randn(2, 3, 10), -1)
    target = torch.zeros(2, 3, 6)
    target[0, 0, :2] = 0.5
    target[1, 2, 5] = 1.0
    got = attention_loss(attn, target, offset=4)
    want = -(0.5 * attn[0, 0, 4:6].log().sum() + attn[1, 2, 9].log()) / 2
    torch.testing.assert_close(got, want)
    assert float(attention_loss(attn, torch.zeros(2, 3, 6), 4)) == 0.0


def test_question_span() -> None:
    assert question_span([5, 1, 2, 3, 9], [2, 3]) == (2, 4)
    with pytest.raises(ValueError, match="not in the prompt"):
        question_span([1, 2], [3])


@pytest.mark.parametrize("task", ["needle_color", "direction", "count", "order"])
def test_probe_labels_give_grid_positions_and_the_named_shape(task: str) -> None:
    from tokenred.builtin.synthetic_render import SHAPES
    from tokenred.data import Sample

    record, frames = _sample(task)
    labels = colour_labels(frames[None])  # [1, T, 8, 8]
    meta = {"task": task, "state": record["state"]}
    sample = Sample("x", "x", "v.mp4", "q", (), "A", "q", meta)
    probes = probe_labels(labels, [sample])[0]  # [T, 8, 8, 3]
    assert probes.shape == (*labels.shape[1:], 3)
    assert probes[3, 5, 2, 0] == 5 and probes[3, 5, 2, 1] == 2  # row, column
    shapes = probes[..., 2]
    if task == "order":  # the annotation names no shape
        assert (shapes == IGNORE).all()
        return
    named = "circle" if task == "count" else record["state"]["shape"]
    target = labels[0] == COLOR_IDS[record["state"]["color"]]
    assert target.any()
    assert (shapes[target] == SHAPES.index(named)).all()
    assert (shapes[~target] == IGNORE).all()
