"""Composite clips for the demo model: several questions about one video (issue 22).

With ``data.questions_per_video=K`` the synthetic benchmark puts the events of K
questions of distinct types into one clip (:meth:`SceneBuilder.build_many`). A model
trained on one-question clips is at chance there: each one-question scene holds the
objects of its question plus one or two companions of the other colour group, so
"the answer-coloured object" or "the only distractor-coloured object" points at
the evidence without reading the question. A composite clip has the objects of all
its questions at once, and only the question says which to read.

This module builds the second-stage training data: composite clips of the ``train``
split (every K in a list), their grounding and probe targets per question, and a
composite held-out set. The targets follow :mod:`demo_model.grounding` (the cells of
the object or objects a question names), with one refinement: a fifth question asks
about a second mover of the *same* colour, told apart only by its shape, so the
cells of a direction question are those of the mover whose shape it names. That
needs the sprites' positions, which the annotation does not record; they are taken
from the generator itself (the scene is rebuilt from its seed, and checked against
the annotation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from demo_model.grounding import COLOR_IDS, IGNORE, relevant_cells
from tokenred.builtin.synthetic import (
    SyntheticConfig,
    SyntheticDataset,
    composite_scene,
)
from tokenred.builtin.synthetic_render import COLORS, SHAPES, Scene
from tokenred.data import Sample


@dataclass
class Pool:
    """Training or evaluation questions with their videos and per-question targets.

    Several questions may share a video: ``frames`` and ``labels`` are per video,
    ``video`` maps each question to its row, ``cells`` and ``probes`` are per
    question.
    """

    samples: list[Sample]
    frames: np.ndarray
    """[V, T, S, S, 3] uint8 decoded frames."""
    video: np.ndarray
    """[n] int64 row of each question's video in ``frames``."""
    labels: np.ndarray
    """[V, T, g, g] uint8 colour labels of each video (see ``colour_labels``)."""
    cells: np.ndarray
    """[n, T, g, g] bool grounding cells of each question."""
    probes: np.ndarray
    """[n, T, g, g, 3] int64 probe targets (row, column, shape) of each question."""

    def question_frames(self, idx: np.ndarray) -> np.ndarray:
        """``[B]`` question indices -> their videos' frames ``[B, T, S, S, 3]``."""
        return np.asarray(self.frames[self.video[idx]])


def rebuild_scene(cfg: SyntheticConfig, split: str, index: int) -> Scene:
    """Rebuild the composite scene of video ``index`` as the generator laid it out.

    :func:`tokenred.builtin.synthetic.composite_scene` is what the generator
    renders, so the sprites are those of the clip.
    """
    return composite_scene(cfg, split, index)[0]


def sprite_cells(
    scene: Scene, color: str, shape: str, indices: np.ndarray, size: int, grid: int
) -> np.ndarray:
    """``[T, g, g]`` bool cells overlapped by the visible sprite of colour and shape.

    ``indices``: the ``[T]`` source frames the decoder sampled.
    """
    rgb = COLORS[color]
    found = [s for s in scene.sprites if s.color == rgb and s.shape == shape]
    if len(found) != 1:
        msg = f"composite: {len(found)} sprites are {color} {shape}s, expected 1"
        raise ValueError(msg)
    sprite = found[0]
    cell = size // grid
    edges = np.arange(grid) * cell  # [g] first pixel of each cell row/column
    xy = sprite.xy[indices]  # [T, 2]
    x0, y0 = np.round(xy[:, 0])[:, None], np.round(xy[:, 1])[:, None]  # [T, 1]
    # A cell [e, e + cell) overlaps the sprite's box [x0, x0 + size).
    cols = (edges[None] < x0 + sprite.size) & (edges[None] + cell > x0)  # [T, g]
    rows = (edges[None] < y0 + sprite.size) & (edges[None] + cell > y0)  # [T, g]
    shown = np.asarray(sprite.visible[indices])[:, None, None]  # [T, 1, 1]
    out: np.ndarray = rows[:, :, None] & cols[:, None, :] & shown  # [T, g, g]
    return out


def question_targets(
    labels: np.ndarray,
    sample: Sample,
    scene: Scene | None,
    indices: np.ndarray,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Grounding cells ``[T, g, g]`` and shape targets ``[T, g, g]`` of one question.

    Colours tell every object of a composite clip apart except the two movers of a
    five-question clip; a direction question's cells are therefore restricted to
    the sprite of the named shape (when ``scene`` is given).
    """
    task, state = str(sample.meta["task"]), dict(sample.meta.get("state", {}))
    cells = relevant_cells(labels, task, state)
    if task == "direction" and scene is not None:
        grid = labels.shape[-1]
        mine = sprite_cells(
            scene, str(state["color"]), str(state["shape"]), indices, size, grid
        )
        cells = cells & mine
    shapes = np.full(labels.shape, IGNORE, np.int64)
    if task.startswith("needle") or task == "direction":
        own = cells if task == "direction" else labels == COLOR_IDS[state["color"]]
        shapes[own] = SHAPES.index(str(state["shape"]))
    elif task == "count":
        shapes[labels == COLOR_IDS[str(state["color"])]] = SHAPES.index("circle")
    return cells, shapes


def build_pool(
    cfg: SyntheticConfig,
    samples: Sequence[Sample],
    frames: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
) -> Pool:
    """Targets of every question of a composite split.

    Args:
        cfg: The split's dataset config (``questions_per_video`` > 1).
        samples: Its questions, in annotation order (K per video).
        frames: ``[V, T, S, S, 3]`` decoded frames, one row per video.
        labels: ``[V, T, g, g]`` colour labels of those frames.
        indices: ``[T]`` source frames the decoder sampled.
    """
    k = cfg.questions_per_video
    g = labels.shape[-1]
    rows = np.broadcast_to(np.arange(g)[:, None], (g, g))  # [g, g]
    cols = np.broadcast_to(np.arange(g)[None, :], (g, g))  # [g, g]
    video = np.arange(len(samples), dtype=np.int64) // k
    cells, probes = [], []
    scene: Scene | None = None
    for i, s in enumerate(samples):
        v = int(video[i])
        if i % k == 0:
            scene = rebuild_scene(cfg, cfg.split, v)
            check(scene, samples[i : i + k], v)
        c, shape = question_targets(labels[v], s, scene, indices, cfg.size)
        probe = np.empty((*c.shape, 3), np.int64)  # [T, g, g, 3]
        probe[..., 0], probe[..., 1], probe[..., 2] = rows, cols, shape
        cells.append(c)
        probes.append(probe)
    return Pool(list(samples), frames, video, labels, np.stack(cells), np.stack(probes))


def check(scene: Scene, samples: Sequence[Sample], index: int) -> None:
    """Refuse a rebuilt scene that is not the annotated one (a generator change)."""
    want = [dict(s.meta.get("state", {})) for s in samples]
    first = want[0] if want else {}
    if scene.state != first:
        msg = f"composite: rebuilt video {index} does not match its annotation"
        raise ValueError(msg)


def composite_config(split: str, k: int, n: int, root: str | None) -> SyntheticConfig:
    """Dataset config of ``n`` composite videos of ``k`` questions in ``split``."""
    return SyntheticConfig(split=split, num_videos=n, questions_per_video=k, root=root)


def load_split(cfg: SyntheticConfig) -> tuple[list[Sample], SyntheticDataset]:
    """Generate (or reuse) a composite split and return its questions."""
    dataset = SyntheticDataset(cfg)
    return dataset.load(), dataset


def concat_pools(pools: Sequence[Pool]) -> Pool:
    """Join pools into one (video rows re-indexed)."""
    offsets = np.cumsum([0, *(len(p.frames) for p in pools)])[:-1]
    return Pool(
        [s for p in pools for s in p.samples],
        np.concatenate([np.asarray(p.frames) for p in pools]),
        np.concatenate([p.video + o for p, o in zip(pools, offsets)]),
        np.concatenate([p.labels for p in pools]),
        np.concatenate([p.cells for p in pools]),
        np.concatenate([p.probes for p in pools]),
    )
