"""The embedded default dataset: a synthetic video QA benchmark, generated on demand.

Videos are real H.264 mp4 files rendered procedurally (:mod:`.synthetic_render`):
large uniform background regions that drift slowly, persistent saturated objects,
and four question types whose answers depend on the video: the colour of an
object visible in one time slot only (needle), the direction an object moves,
how many times a light flashes, and which of two objects appears first. Answers are
balanced over the letters A-D and the types in every block of 16 questions.

With ``questions_per_video = K > 1`` every video carries the events of K questions of
distinct types (a fifth asks about a second mover) and is asked all of them, as
Video-MME asks three questions per video: the layout where a cached video prefix
serves several answers (``measure.kv_reuse``). ``K = 1`` (the default) generates
exactly the one-question splits the demo model was trained on.

Generation is deterministic: sample ``i`` of a split depends only on ``(seed,
split, i)``, libx264 runs single-threaded, and the annotation is written with sorted
keys, so the same config yields the same annotation bytes and decoded frames. The
result is cached under ``$XDG_CACHE_HOME/tokenred/synthetic/<hash>`` (or
``data.root``); a file lock and atomic renames make concurrent runs safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenred.builtin.synthetic_render import (
    COLORS,
    COUNTS,
    DIRECTIONS,
    MAX_QUESTIONS,
    QUESTIONS,
    SHAPES,
    TASKS,
    Question,
    Scene,
    SceneBuilder,
    render,
)
from tokenred.data import DataConfig, FrameSampling, Sample, VideoDataset, scored_rows
from tokenred.datasets._common import (
    ANSWER_CUE,
    INSTRUCTION,
    Record,
    build_prompt,
    read_json,
)
from tokenred.errors import ConfigError
from tokenred.scoring import grouped_accuracy, letter_list, meta_of, option_letters
from tokenred.video import write_video

log = logging.getLogger(__name__)

GENERATOR_VERSION = 6
"""Bump when rendering or question generation changes; it is part of the cache key."""
SPLITS: Mapping[str, int] = {"train": 2000, "val": 200, "test": 100}
"""Splits and their default number of videos (one question per video)."""
NUM_OPTIONS = 4
_WORD = re.compile(r"\w+|[^\w\s]")


def sixteen_frames() -> FrameSampling:
    """Return the synthetic default sampling: 16 uniform frames (one per slot)."""
    return FrameSampling(num_frames=16, fps=None, max_frames=128)


@dataclass
class SyntheticConfig(DataConfig):
    """Config of the ``synthetic`` dataset."""

    name: str = field(default="synthetic", metadata={"help": "registered dataset"})
    frames: FrameSampling = field(
        default_factory=sixteen_frames,
        metadata={"help": "frame sampling (default: 16 uniform frames)"},
    )
    seed: int = field(default=0, metadata={"help": "generator seed"})
    num_videos: int | None = field(
        default=None,
        metadata={
            "help": "videos in the split (questions: num_videos x "
            "questions_per_video); null: 2000 train, 200 val, 100 test"
        },
    )
    questions_per_video: int = field(
        default=1,
        metadata={
            "help": "questions asked about each video, of distinct task types "
            f"(1 to {MAX_QUESTIONS}; the fifth asks about a second mover); "
            "1 keeps the one-question splits the demo model was trained on"
        },
    )
    source_frames: int = field(default=32, metadata={"help": "frames per video"})
    slots: int = field(
        default=16,
        metadata={
            "help": "event time slots; sampling `slots` uniform frames sees each"
        },
    )
    size: int = field(default=112, metadata={"help": "frame height and width (even)"})
    fps: float = field(default=8.0, metadata={"help": "frame rate of the videos"})

    def __post_init__(self) -> None:
        """Reject geometries the renderer cannot honour."""
        super().__post_init__()
        if self.slots < 8 or self.source_frames % self.slots:
            msg = (
                f"data.source_frames ({self.source_frames}) must be a multiple of "
                f"data.slots ({self.slots}), and slots >= 8"
            )
            raise ConfigError(msg)
        if self.size < 48 or self.size % 2:
            msg = f"data.size must be even and >= 48, got {self.size}"
            raise ConfigError(msg)
        if not 1 <= self.questions_per_video <= MAX_QUESTIONS:
            msg = (
                f"data.questions_per_video must lie in 1..{MAX_QUESTIONS}, got "
                f"{self.questions_per_video}"
            )
            raise ConfigError(msg)
        if self.num_videos is not None and self.num_videos < 0:
            msg = f"data.num_videos must be >= 0 or null, got {self.num_videos}"
            raise ConfigError(msg)

    def cache_key(self) -> str:
        """Hash of everything that changes the generated bytes (not the count)."""
        spec = {
            "version": GENERATOR_VERSION,
            "seed": self.seed,
            "frames": self.source_frames,
            "slots": self.slots,
            "size": self.size,
            "fps": self.fps,
        }
        if self.questions_per_video > 1:  # K = 1 keeps the one-question key
            spec["questions_per_video"] = self.questions_per_video
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[
            :16
        ]


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/tokenred/synthetic`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tokenred" / "synthetic"


def words(text: str) -> list[str]:
    """Split text like a whitespace + punctuation pre-tokenizer (case kept)."""
    return _WORD.findall(text)


def _vocabulary() -> list[str]:
    texts = [INSTRUCTION.format(letters=letter_list(option_letters(NUM_OPTIONS)))]
    texts += [ANSWER_CUE, *option_letters(NUM_OPTIONS), *COLORS, *SHAPES]
    texts += [*DIRECTIONS, *COUNTS, "the"]
    for template in QUESTIONS.values():
        texts.append(template.format(color="red", shape="square"))
    return sorted({w for t in texts for w in words(t)} | set(COLORS) | set(SHAPES))


VOCABULARY: list[str] = _vocabulary()
"""Every word/punctuation token of synthetic prompts and options, sorted, case kept
(as split by :func:`words`); a WordLevel tokenizer over it covers every prompt."""


class SyntheticDataset(VideoDataset):
    """Synthetic video QA: needle, direction, count and order questions on mp4s."""

    name = "synthetic"
    Config = SyntheticConfig
    homepage = "https://github.com/tokenred/tokenred"

    @property
    def cfg(self) -> SyntheticConfig:
        """The config, typed."""
        cfg = self.config
        if not isinstance(cfg, SyntheticConfig):
            msg = f"synthetic: expected a SyntheticConfig, got {type(cfg).__name__}"
            raise ConfigError(msg)
        return cfg

    @property
    def root(self) -> Path:
        """Dataset root: ``data.root`` or the cache directory of this config."""
        if self.cfg.root is not None:
            return Path(self.cfg.root).expanduser().resolve()
        return default_cache_dir() / self.cfg.cache_key()

    def num_videos(self) -> int:
        """Number of videos of the configured split."""
        if self.cfg.split not in SPLITS:
            msg = (
                f"synthetic: unknown split '{self.cfg.split}'; use {', '.join(SPLITS)}"
            )
            raise ConfigError(msg)
        n = self.cfg.num_videos
        return SPLITS[self.cfg.split] if n is None else n

    def annotation_path(self) -> Path:
        """The split's annotation file."""
        return self.root / "annotations" / f"{self.cfg.split}.json"

    def load(self) -> list[Sample]:
        """Generate (or reuse) the split and read its annotation file."""
        n = self.num_videos()
        ensure_split(self.root, self.cfg, self.cfg.split, n)
        path = self.annotation_path()
        data = read_json(path, self.name)
        out = []
        for i, raw in enumerate(data[: n * self.cfg.questions_per_video]):
            rec = Record(raw, path, i, "question_id")
            options = rec.options("options")
            question = rec.text("question")
            out.append(
                Sample(
                    id=rec.text("question_id"),
                    video_id=rec.text("video_id"),
                    video=str(self.root / rec.text("video")),
                    question=question,
                    options=options,
                    answer=rec.letter("answer", len(options)),
                    prompt=build_prompt(question, options),
                    meta={"task": rec.text("task_type"), "state": raw.get("state", {})},
                )
            )
        return out

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Add ``synthetic/<task>`` accuracies (needle_color, direction, ...)."""
        out = super().aggregate(rows)
        scored = scored_rows(rows)
        for k, v in grouped_accuracy(scored, lambda r: meta_of(r).get("task")).items():
            out[f"synthetic/{k}"] = v
        return out


def _plan(seed: int, split: str, index: int) -> tuple[str, int]:
    """Return (task, answer position) of sample ``index``: balanced per 16-block."""
    block, pos = divmod(index, len(TASKS) * NUM_OPTIONS)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), block, 7])
    order = rng.permutation(len(TASKS) * NUM_OPTIONS)
    task, answer = divmod(int(order[pos]), NUM_OPTIONS)
    return TASKS[task], answer


def _plan_many(seed: int, split: str, index: int, k: int) -> list[tuple[str, int]]:
    """Return (task, answer position) of each of the ``k`` questions of a video.

    The first four take distinct tasks in a seeded order and distinct letters (so a
    needle and an order question never share an answer colour); a fifth asks the
    direction of a second mover.
    """
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index, 11, k])
    tasks = [TASKS[int(t)] for t in rng.permutation(len(TASKS))][:k]
    tasks += ["direction"] * (k - len(tasks))
    letters = rng.permutation(NUM_OPTIONS)
    return [(t, int(letters[j % NUM_OPTIONS])) for j, t in enumerate(tasks)]


_LAYOUT_TRIES = 50


def make_video(
    cfg: SyntheticConfig, split: str, index: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Return the annotation records of video ``index`` and its frames.

    With ``questions_per_video == 1`` this is :func:`make_sample`'s one record;
    otherwise one record per question, ids ``<video_id>-q<k>``, one shared video.
    """
    k = cfg.questions_per_video
    if k == 1:
        record, frames = make_sample(cfg, split, index)
        return [record], frames
    scene, questions = composite_scene(cfg, split, index)
    frames = render(scene, cfg.source_frames, cfg.size)
    vid = f"synth-{split}-{index:05d}"
    records = [
        _annotation(cfg, split, vid, f"{vid}-q{j}", q) for j, q in enumerate(questions)
    ]
    return records, frames


def composite_scene(
    cfg: SyntheticConfig, split: str, index: int
) -> tuple[Scene, list[Question]]:
    """Lay out the scene of composite video ``index`` and its questions.

    Deterministic: the plan and each layout attempt are seeded from ``(seed,
    split, index, K, attempt)``, so the demo model's trainer can rebuild the
    sprites of a rendered clip (their positions are not in the annotation).

    Raises:
        ConfigError: No attempt fits the K questions' objects into the frame.
    """
    k = cfg.questions_per_video
    plan = _plan_many(cfg.seed, split, index, k)
    tasks, answers = [t for t, _ in plan], [a for _, a in plan]
    for attempt in range(_LAYOUT_TRIES):
        # A crowded random layout can leave no room for the last object: lay the
        # scene out again from the next seeded stream (still deterministic).
        seq = [cfg.seed, zlib.crc32(split.encode()), index, k, attempt]
        builder = SceneBuilder(
            np.random.default_rng(seq), cfg.source_frames, cfg.slots, cfg.size
        )
        try:
            return builder.build_many(tasks, answers)
        except RuntimeError:
            continue
    msg = (
        f"synthetic: {k} questions' objects do not fit a {cfg.size}px frame; "
        "raise data.size or lower data.questions_per_video"
    )
    raise ConfigError(msg)


def make_sample(
    cfg: SyntheticConfig, split: str, index: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Return the annotation record and the [F, S, S, 3] frames of one sample."""
    task, answer = _plan(cfg.seed, split, index)
    rng = np.random.default_rng([cfg.seed, zlib.crc32(split.encode()), index])
    scene = SceneBuilder(rng, cfg.source_frames, cfg.slots, cfg.size).build(
        task, answer
    )
    frames = render(scene, cfg.source_frames, cfg.size)
    vid = f"synth-{split}-{index:05d}"
    return _annotation(cfg, split, vid, vid, scene), frames


def _annotation(
    cfg: SyntheticConfig, split: str, vid: str, qid: str, item: Scene | Question
) -> dict[str, Any]:
    """Return the annotation record of one question about video ``vid``.

    ``item`` is a one-question scene or one question of a composite scene; both
    carry the question, options, answer, task and state the record needs.
    """
    return {
        "video_id": vid,
        "question_id": qid,
        "video": f"videos/{split}/{vid}.mp4",
        "question": item.question,
        "options": item.options,
        "answer": "ABCD"[item.answer],
        "task_type": item.task,
        "duration": "short",
        "video_second": cfg.source_frames / cfg.fps,
        "state": item.state,
    }


def ensure_split(root: Path, cfg: SyntheticConfig, split: str, n: int) -> Path:
    """Generate the first ``n`` videos of ``split`` under ``root`` unless present.

    Existing videos are kept (they are deterministic); the annotation file is
    rewritten atomically when it holds fewer than ``n`` videos' records.

    Returns:
        The annotation file.
    """
    path = root / "annotations" / f"{split}.json"
    total = n * cfg.questions_per_video
    _check_layout(path, cfg.questions_per_video)
    if _complete(root, path, total):
        return path
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if _complete(root, path, total):
            return path
        log.info("synthetic: generating %d %s videos under %s", n, split, root)
        records = []
        for i in range(n):
            video_records, frames = make_video(cfg, split, i)
            video = root / video_records[0]["video"]
            if not video.is_file():
                write_video(video, frames, cfg.fps)
            records += video_records
        _write_json(path, records)
    return path


def _check_layout(path: Path, k: int) -> None:
    """Refuse a split generated with another ``questions_per_video`` at ``path``.

    Under the keyed cache the two never share a root; an explicit ``data.root``
    could, and its videos (same file names, other scenes) would be silently reused.

    Raises:
        ConfigError: The annotation file's first record has the other id layout.
    """
    try:
        first = json.loads(path.read_text(encoding="utf-8"))[0]
        qid, vid = str(first["question_id"]), str(first["video_id"])
    except (OSError, ValueError, LookupError, TypeError):
        return  # missing or unreadable: generation rewrites it
    if (qid == vid) != (k == 1):
        found = "one question" if qid == vid else "several questions"
        msg = (
            f"synthetic: {path} holds a split with {found} per video, but "
            f"data.questions_per_video={k}; use another data.root (or leave it "
            "null for the keyed cache)"
        )
        raise ConfigError(msg)


def _complete(root: Path, path: Path, n: int) -> bool:
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: regenerate
        return False
    if not isinstance(data, list) or len(data) < n:
        return False
    return all((root / str(r.get("video", ""))).is_file() for r in data[:n])


def _write_json(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(records, sort_keys=True, indent=1, ensure_ascii=True)
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
