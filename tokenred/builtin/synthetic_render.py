"""Procedural scenes of the synthetic benchmark: sprites on a drifting background.

A scene is a background (two large muted regions whose boundary drifts a few pixels,
plus an optional static block) and a list of :class:`Sprite` objects, each a
saturated shape with a per-frame position and visibility. Events are placed on a
lattice of ``slots`` equal time slots; a slot spans ``source_frames // slots``
frames, so sampling ``slots`` uniform frames sees every slot exactly once.

Every task has a closed answer set listed in a fixed order (:data:`OPTIONS`), as in
closed-vocabulary video QA: the letter of an answer is the same in every question of
a task. That keeps the benchmark solvable by the tiny demo model trained on CPU (a
model of that size does not learn to match shuffled option text to the video within
the training budget; see docs/demo-model.md) while every answer still depends on the
video. Every question builder takes a seeded ``numpy`` generator and the answer
position, and returns the sprites, the question, the options and a compact
``state`` (the ground truth, stored in the annotation for analysis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (165, 55, 215),
    "cyan": (40, 205, 215),
}
"""Saturated object colours, far from every background tone."""
ANSWER_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
"""The colours that are answers: the brief object of a needle question and the two
objects of an order question have one of them; everything else in those videos
has one of the other colours."""
DISTRACTOR_COLORS: tuple[str, ...] = tuple(c for c in COLORS if c not in ANSWER_COLORS)
"""The other colours: the moving object of a direction question and the lamp of a
count question have one of them (and the other object in those videos an answer
colour), so an object's colour never names the answer of a question that is not
about colour."""

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
COUNTS: tuple[str, ...] = ("1", "2", "3", "4")
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (96, 104, 112),
    (112, 100, 88),
    (84, 100, 84),
    (104, 96, 112),
    (120, 118, 110),
    (72, 80, 92),
)
"""Muted tones (channel spread <= 24) for the large uniform regions."""
LIGHT_OFF = (40, 40, 40)
FLASH_SLOTS = 2
"""Slots one flash of a count question lasts: with two, each extra flash adds an
eighth of the video to the lamp's lit time, a step the demo model can read."""
TRAVEL = 0.5
"""Distance a direction question's object travels, as a fraction of the frame side."""

QUESTIONS: dict[str, str] = {
    "needle_color": "What color was the object that appeared briefly?",
    "direction": "Which direction does the {color} {shape} move?",
    "count": "How many times does the {color} light flash?",
    "order": "Which object appears first?",
}
TASKS: tuple[str, ...] = ("needle", "direction", "count", "order")
"""The four balanced question types."""
MAX_QUESTIONS = 5
"""Most questions one video can carry: one per task, plus a second mover (its
direction question names its shape, which tells the two movers apart)."""
OPTIONS: dict[str, tuple[str, ...]] = {
    "needle_color": ANSWER_COLORS,
    "direction": DIRECTIONS,
    "count": COUNTS,
    "order": tuple(f"the {c} object" for c in ANSWER_COLORS),
}
"""The fixed options of every task, in the order they are listed (A-D)."""


@dataclass
class Sprite:
    """One object: a coloured shape with a position and visibility per frame."""

    color: tuple[int, int, int]
    shape: str
    size: int
    xy: np.ndarray
    """[F, 2] float top-left (x, y) per frame."""
    visible: np.ndarray
    """[F] bool."""


@dataclass
class Scene:
    """Everything needed to render one video, plus the question about it."""

    sprites: list[Sprite]
    sky: tuple[int, int, int]
    ground: tuple[int, int, int]
    horizon: np.ndarray
    """[F] int row of the sky/ground boundary (drifts slowly)."""
    block: tuple[int, int, int, int, tuple[int, int, int]] | None
    """Static rectangle (x, y, w, h, colour) or None."""
    task: str
    question: str
    options: list[str]
    answer: int
    state: dict[str, Any]


@dataclass
class Question:
    """One question about a scene that carries several (``build_many``)."""

    task: str
    question: str
    options: list[str]
    answer: int
    state: dict[str, Any]


Built = tuple[list[Sprite], str, str, list[str], dict[str, Any]]
"""(sprites, task name, question, options, state) of one question builder."""


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Return the [size, size] bool mask of a shape."""
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)  # [size, size] each
    masks = {
        "square": np.ones((size, size), dtype=bool),
        "circle": (x - c) ** 2 + (y - c) ** 2 <= (size / 2.0) ** 2,
        "triangle": np.abs(x - c) <= (y + 1.0) / size * (size / 2.0),
        "cross": (np.abs(x - c) < size / 6.0) | (np.abs(y - c) < size / 6.0),
    }
    if shape not in masks:
        msg = f"unknown shape {shape!r}"
        raise ValueError(msg)
    mask: np.ndarray = masks[shape]
    return mask


def render(scene: Scene, frames: int, size: int) -> np.ndarray:
    """Render a scene to [F, S, S, 3] uint8 RGB frames."""
    rows = np.arange(size)[None, :, None]  # [1, S, 1]
    sky = (rows < scene.horizon[:, None, None])[..., None]  # [F, S, 1, 1]
    out = np.where(sky, np.array(scene.sky), np.array(scene.ground))  # [F, S, 1, 3]
    video = np.broadcast_to(out, (frames, size, size, 3)).astype(np.uint8).copy()
    if scene.block is not None:
        bx, by, bw, bh, color = scene.block
        video[:, by : by + bh, bx : bx + bw] = color
    for sprite in scene.sprites:
        mask = shape_mask(sprite.shape, sprite.size)
        for t in np.flatnonzero(sprite.visible):
            x, y = np.round(sprite.xy[t]).astype(int)
            region = video[t, y : y + sprite.size, x : x + sprite.size]
            region[mask[: region.shape[0], : region.shape[1]]] = sprite.color
    return video


class SceneBuilder:
    """Build one question's scene with a seeded generator.

    Args:
        rng: The per-video generator.
        frames: Source frames of the video (a multiple of ``slots``).
        slots: Number of equal event slots.
        size: Frame side in pixels.
    """

    def __init__(self, rng: np.random.Generator, frames: int, slots: int, size: int):
        """Store the geometry; pick the background."""
        self.rng, self.frames, self.slots, self.size = rng, frames, slots, size
        self.per_slot = frames // slots
        self.obj = max(8, round(size * 0.2))
        self.taken: list[tuple[float, float, float, float]] = []

    def build(self, task: str, answer: int) -> Scene:
        """Return the scene of ``task`` with the correct option at ``answer``."""
        builders = {
            "needle": self._needle,
            "direction": self._direction,
            "count": self._count,
            "order": self._order,
        }
        sprites, name, question, options, state = builders[task](answer)
        return Scene(
            sprites, *self._background(), name, question, options, answer, state
        )

    def build_many(
        self, tasks: list[str], answers: list[int]
    ) -> tuple[Scene, list[Question]]:
        """Return one scene carrying the events of several questions, and those.

        Video-MME asks three questions about each video; this asks one question
        per task of ``tasks`` about one clip. The objects keep the colour rules of
        the single-question scenes: answer colours go to the brief object and the
        two order objects only, distractor colours to the lamp and the movers, so
        no object's colour answers a question that is not about it. A needle shows
        after the first order object appears, so that "appears first" stays
        unambiguous. The single-question companions are left out: the other
        questions' objects take their place.

        Args:
            tasks: Task of each question (each task once, except ``direction``,
                which may repeat: its question names colour and shape).
            answers: Correct option of each question; a needle and an order
                question must have different answers (their colours differ).

        Raises:
            ValueError: For inconsistent tasks or answers (a generator bug).
        """
        at = {t: [i for i, x in enumerate(tasks) if x == t] for t in TASKS}
        if len(tasks) != len(answers) or sum(map(len, at.values())) != len(tasks):
            msg = f"build_many: bad tasks {tasks} for answers {answers}"
            raise ValueError(msg)
        if any(len(at[t]) > 1 for t in ("needle", "count", "order")):
            msg = f"build_many: only direction may repeat, got {tasks}"
            raise ValueError(msg)
        needle = [ANSWER_COLORS[answers[i]] for i in at["needle"]]
        lamp_color, mover_color = self._colors(2, ANSWER_COLORS)
        sprites: list[Sprite] = []
        out: dict[int, Question] = {}
        state: dict[str, Any]
        # The movers' long boxes go first, while the frame is still empty.
        shapes = [s for s in SHAPES if s != "circle"]  # the lamp is a circle
        picked = self.rng.choice(len(shapes), size=len(at["direction"]), replace=False)
        for i, j in zip(at["direction"], picked):
            shape, direction = shapes[int(j)], DIRECTIONS[answers[i]]
            sprites.append(self._mover(mover_color, shape, direction))
            text = QUESTIONS["direction"].format(color=mover_color, shape=shape)
            state = {"color": mover_color, "shape": shape, "direction": direction}
            opts = list(OPTIONS["direction"])
            out[i] = Question("direction", text, opts, answers[i], state)
        after = 1
        for i in at["order"]:
            first = ANSWER_COLORS[answers[i]]
            if first in needle:
                msg = f"build_many: needle and order share the answer {first}"
                raise ValueError(msg)
            second = self._colors(1, (first, *needle, *DISTRACTOR_COLORS))[0]
            # Both stay >= 3 slots, so neither looks like the brief needle.
            t1 = int(self.rng.integers(0, self.slots - 6))
            t2 = int(self.rng.integers(t1 + 2, self.slots - 3))
            for c, t in ((first, t1), (second, t2)):
                shown = self._slot_mask(list(range(t, self.slots)))
                sprites.append(self._static(c, self._shape(), shown))
            state = {"first": first, "second": second, "slots": [t1, t2]}
            opts = list(OPTIONS["order"])
            out[i] = Question("order", QUESTIONS["order"], opts, answers[i], state)
            after = t1 + 1
        for i in at["needle"]:
            color, shape = ANSWER_COLORS[answers[i]], self._shape()
            slot = int(self.rng.integers(after, self.slots - 1))
            sprites.append(self._static(color, shape, self._slot_mask([slot])))
            state = {"slot": slot, "color": color, "shape": shape, "persistent": []}
            text, opts = QUESTIONS["needle_color"], list(OPTIONS["needle_color"])
            out[i] = Question("needle_color", text, opts, answers[i], state)
        for i in at["count"]:
            lamp, slots = self._lamp(lamp_color, answers[i] + 1)
            sprites += lamp
            text = QUESTIONS["count"].format(color=lamp_color)
            state = {"color": lamp_color, "slots": slots}
            out[i] = Question("count", text, list(OPTIONS["count"]), answers[i], state)
        questions = [out[i] for i in range(len(tasks))]
        q = questions[0]
        scene = Scene(
            sprites,
            *self._background(),
            q.task,
            q.question,
            q.options,
            q.answer,
            q.state,
        )
        return scene, questions

    # -- helpers -------------------------------------------------------------------

    def _background(self) -> tuple[Any, Any, np.ndarray, Any]:
        rng, s = self.rng, self.size
        i, j = rng.choice(len(BACKGROUNDS), size=2, replace=False)
        base = rng.integers(s // 3, 2 * s // 3)
        drift = rng.integers(-4, 5)
        horizon = (base + np.round(np.linspace(0, drift, self.frames))).astype(int)
        block: tuple[int, int, int, int, tuple[int, int, int]] | None = None
        if rng.random() < 0.5:
            k = int(rng.choice([b for b in range(len(BACKGROUNDS)) if b not in (i, j)]))
            bw, bh = (
                int(rng.integers(s // 5, s // 3)),
                int(rng.integers(s // 5, s // 3)),
            )
            bx, by = int(rng.integers(0, s - bw)), int(rng.integers(0, s - bh))
            block = (bx, by, bw, bh, BACKGROUNDS[k])
        return BACKGROUNDS[i], BACKGROUNDS[j], horizon, block

    def _colors(self, n: int, exclude: tuple[str, ...] = ()) -> list[str]:
        pool = [c for c in COLORS if c not in exclude]
        return [pool[i] for i in self.rng.choice(len(pool), size=n, replace=False)]

    def _shape(self) -> str:
        return SHAPES[int(self.rng.integers(len(SHAPES)))]

    def _place(self, w: float, h: float) -> tuple[float, float]:
        """Pick a top-left corner for a w x h box that overlaps nothing placed."""
        margin = 3
        for _ in range(200):
            x = float(self.rng.integers(margin, self.size - int(w) - margin + 1))
            y = float(self.rng.integers(margin, self.size - int(h) - margin + 1))
            if all(
                x + w + margin <= ax
                or ax + aw + margin <= x
                or y + h + margin <= ay
                or ay + ah + margin <= y
                for ax, ay, aw, ah in self.taken
            ):
                self.taken.append((x, y, w, h))
                return x, y
        # Crowded (several questions' objects): pick among every free corner.
        xs = np.arange(margin, self.size - int(w) - margin + 1, dtype=np.float64)
        ys = np.arange(margin, self.size - int(h) - margin + 1, dtype=np.float64)
        gx, gy = (g.ravel() for g in np.meshgrid(xs, ys))  # [C] each
        free = np.ones(gx.shape, bool)  # [C]
        for ax, ay, aw, ah in self.taken:
            free &= (
                (gx + w + margin <= ax)
                | (ax + aw + margin <= gx)
                | (gy + h + margin <= ay)
                | (ay + ah + margin <= gy)
            )
        if free.any():
            k = int(self.rng.choice(np.flatnonzero(free)))
            x, y = float(gx[k]), float(gy[k])
            self.taken.append((x, y, w, h))
            return x, y
        msg = "synthetic scene: no free space for another object; use a larger size"
        raise RuntimeError(msg)

    def _static(
        self, color: str, shape: str, visible: np.ndarray | None = None
    ) -> Sprite:
        x, y = self._place(self.obj, self.obj)
        vis = np.ones(self.frames, bool) if visible is None else visible
        xy = np.tile([x, y], (self.frames, 1)).astype(np.float64)  # [F, 2]
        return Sprite(COLORS[color], shape, self.obj, xy, vis)

    def _slot_mask(self, slots: list[int]) -> np.ndarray:
        vis = np.zeros(self.frames, bool)
        for s in slots:
            vis[s * self.per_slot : (s + 1) * self.per_slot] = True
        return vis

    def _flash_slots(self, n: int) -> list[int]:
        """Pick the lit slots of ``n`` flashes of :data:`FLASH_SLOTS` slots each.

        Consecutive flashes have at least one dark slot between them.
        """
        span = FLASH_SLOTS
        # Stars and bars: n sorted distinct starts q_i from range(slots - n*span + 1),
        # spread to q_i + i*span, leave >= 1 dark slot between flashes.
        pick = np.sort(self.rng.choice(self.slots - n * span + 1, n, replace=False))
        starts = [int(q) + i * span for i, q in enumerate(pick)]
        return [s + k for s in starts for k in range(span)]

    # -- the four question types ---------------------------------------------------

    def _needle(self, answer: int) -> Built:
        persist = self._colors(int(self.rng.integers(1, 3)), ANSWER_COLORS)
        sprites = [self._static(c, self._shape()) for c in persist]
        slot = int(self.rng.integers(1, self.slots - 1))
        task, color, shape = "needle_color", ANSWER_COLORS[answer], self._shape()
        sprites.append(self._static(color, shape, self._slot_mask([slot])))
        state = {"slot": slot, "color": color, "shape": shape, "persistent": persist}
        return sprites, task, QUESTIONS[task], list(OPTIONS[task]), state

    def _pair(self) -> tuple[str, str]:
        """Return (distractor colour, answer colour): see :data:`DISTRACTOR_COLORS`."""
        color = self._colors(1, ANSWER_COLORS)[0]
        return color, self._colors(1, DISTRACTOR_COLORS)[0]

    def _direction(self, answer: int) -> Built:
        color, other = self._pair()
        shape, direction = self._shape(), DIRECTIONS[answer]
        mover = self._mover(color, shape, direction)
        sprites = [mover, self._static(other, self._shape())]
        question = QUESTIONS["direction"].format(color=color, shape=shape)
        state = {"color": color, "shape": shape, "direction": direction}
        return sprites, "direction", question, list(OPTIONS["direction"]), state

    def _mover(self, color: str, shape: str, direction: str) -> Sprite:
        """Return an object crossing :data:`TRAVEL` of the frame in ``direction``."""
        travel = round(self.size * TRAVEL)
        dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[
            direction
        ]
        w, h = self.obj + abs(dx) * travel, self.obj + abs(dy) * travel
        x, y = self._place(w, h)
        start = np.array([x + (travel if dx < 0 else 0), y + (travel if dy < 0 else 0)])
        frac = np.linspace(0.0, 1.0, self.frames)[:, None]  # [F, 1]
        xy = start + frac * travel * np.array([dx, dy])  # [F, 2]
        return Sprite(COLORS[color], shape, self.obj, xy, np.ones(self.frames, bool))

    def _count(self, answer: int) -> Built:
        color, other = self._pair()
        lamp, slots = self._lamp(color, answer + 1)
        sprites = [*lamp, self._static(other, self._shape())]
        question = QUESTIONS["count"].format(color=color)
        state = {"color": color, "slots": slots}
        return sprites, "count", question, list(OPTIONS["count"]), state

    def _lamp(self, color: str, flashes: int) -> tuple[list[Sprite], list[int]]:
        """Return the dark and lit sprites of a lamp flashing ``flashes`` times."""
        slots = self._flash_slots(flashes)
        lamp = self._static(color, "circle", self._slot_mask(slots))
        off = Sprite(LIGHT_OFF, "circle", self.obj, lamp.xy, ~lamp.visible)
        return [off, lamp], slots

    def _order(self, answer: int) -> Built:
        first = ANSWER_COLORS[answer]
        second = self._colors(1, (first, *DISTRACTOR_COLORS))[0]
        t1 = int(self.rng.integers(0, self.slots - 4))
        t2 = int(self.rng.integers(t1 + 2, self.slots - 1))
        sprites = [
            self._static(c, self._shape(), self._slot_mask(list(range(t, self.slots))))
            for c, t in ((first, t1), (second, t2))
        ]
        state = {"first": first, "second": second, "slots": [t1, t2]}
        return sprites, "order", QUESTIONS["order"], list(OPTIONS["order"]), state
