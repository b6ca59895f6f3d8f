"""Dataset interface: configs, samples and the :class:`VideoDataset` base class.

A dataset plugin turns annotation files under a local root into :class:`Sample`
objects that carry everything the runner and the report need: the video path, the
full prompt (the paper's template), the gold letter and the metadata its official
aggregation groups by. Frame decoding lives in :mod:`tokenred.video`; answer parsing
and accuracy in :mod:`tokenred.scoring`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tokenred.errors import ConfigError, DataError
from tokenred.scoring import accuracy, extract_letter, option_letters

if TYPE_CHECKING:
    from tokenred.video import DecodedVideo

log = logging.getLogger(__name__)


@dataclass
class FrameSampling:
    """How frames are drawn from a video (STTM's decord sampler, with PyAV)."""

    num_frames: int | None = field(
        default=None,
        metadata={"help": "N uniform frames over the whole video (wins over fps)"},
    )
    fps: float | None = field(
        default=1.0,
        metadata={"help": "target frames per second when num_frames is unset"},
    )
    max_frames: int = field(
        default=128,
        metadata={
            "help": "cap on the fps-sampled frames; above it, max_frames uniform "
            "frames (paper: 128, VNBench 180)"
        },
    )

    def __post_init__(self) -> None:
        """Reject values no sampler can honour."""
        if self.num_frames is not None and self.num_frames < 1:
            msg = f"frames.num_frames must be >= 1 or null, got {self.num_frames}"
            raise ConfigError(msg)
        if self.fps is not None and not self.fps > 0:
            msg = f"frames.fps must be > 0 or null, got {self.fps}"
            raise ConfigError(msg)
        if self.max_frames < 1:
            msg = f"frames.max_frames must be >= 1, got {self.max_frames}"
            raise ConfigError(msg)

    def key(self) -> str:
        """Return a stable string naming this policy, for cache keys."""
        if self.num_frames is not None:
            return f"n{self.num_frames}"
        fps = "all" if self.fps is None else f"{self.fps:g}"
        return f"fps{fps}-max{self.max_frames}"


def default_sampling() -> FrameSampling:
    """Return the paper's default: 1 fps capped at 128 frames."""
    return FrameSampling(num_frames=None, fps=1.0, max_frames=128)


@dataclass
class DataConfig:
    """Base config of every dataset; subclasses add loader-specific fields."""

    name: str = field(default="synthetic", metadata={"help": "registered dataset"})
    root: str | None = field(
        default=None,
        metadata={"help": "local dataset root; null uses the loader's default"},
    )
    split: str = field(default="test", metadata={"help": "split to evaluate"})
    limit: int | None = field(
        default=None,
        metadata={"help": "keep the first N samples after subset selection"},
    )
    subset: list[str] | None = field(
        default=None,
        metadata={
            "help": "keep only samples whose id, video id or task type is listed"
        },
    )
    frames: FrameSampling = field(
        default_factory=default_sampling,
        metadata={"help": "frame sampling (the dataset's default)"},
    )

    def __post_init__(self) -> None:
        """Validate the generic fields."""
        if self.limit is not None and self.limit < 0:
            msg = f"data.limit must be >= 0 or null, got {self.limit}"
            raise ConfigError(msg)


@dataclass(frozen=True)
class Sample:
    """One multiple-choice question about one video."""

    id: str
    """Stable per-question id, unique within the dataset."""
    video_id: str
    """Shared by questions about the same video (KV reuse, feature caches)."""
    video: str
    """Absolute path of the video file (it may be missing: decoding then fails)."""
    question: str
    options: tuple[str, ...]
    """Option texts without their letters."""
    answer: str | None
    """Gold letter ``"A"``.., or ``None`` when unknown."""
    prompt: str
    """Full user text (instruction, question, lettered options, answer cue),
    without the video placeholder."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Task type, duration bucket, try index... for aggregation."""

    @property
    def letters(self) -> str:
        """The option letters of this sample, e.g. ``"ABCD"``."""
        return option_letters(len(self.options))


class VideoDataset(ABC):
    """Base class of video question-answering datasets.

    Subclasses implement :meth:`load`; :meth:`samples` applies ``subset`` and
    ``limit`` and checks that ids are unique. Override :meth:`aggregate` to add the
    benchmark's official metrics next to the paper's plain accuracy.
    """

    name: ClassVar[str]
    Config: ClassVar[type[DataConfig]] = DataConfig
    homepage: ClassVar[str] = ""

    def __init__(self, config: DataConfig | None = None) -> None:
        """Store the typed config (defaults when None); reads no file yet."""
        self.config = config if config is not None else self.Config(name=self.name)
        self._samples: list[Sample] | None = None

    @abstractmethod
    def load(self) -> list[Sample]:
        """Return every sample of ``config.split`` in annotation-file order.

        Raises:
            DataError: Naming the file, the record and the field on bad annotations.
        """

    def samples(self) -> list[Sample]:
        """Return the selected samples (subset, then limit), cached after first use.

        Raises:
            DataError: On bad annotations or duplicate question ids.
        """
        if self._samples is None:
            every = self.load()
            _check_unique(self.name, every)
            chosen = self.select(every)
            _check_selected(self.name, self.config, every, chosen)
            log.info(
                "%s: %d of %d samples selected", self.name, len(chosen), len(every)
            )
            self._samples = chosen
        return self._samples

    def check_selection(self) -> None:
        """Load the samples and fail now if the selection matches nothing.

        Meant for a run's preflight, so a misspelt ``data.subset`` stops a study
        before its first run instead of recording nothing.

        Raises:
            DataError: Bad annotations, or a split or subset with no questions (the
                message lists the valid task names and example ids).
        """
        self.samples()

    def select(self, samples: Sequence[Sample]) -> list[Sample]:
        """Apply ``config.subset`` (ids, video ids or task types), then ``limit``."""
        keep = list(samples)
        if self.config.subset:
            wanted = {str(s) for s in self.config.subset}
            keep = [s for s in keep if wanted & _selectors(s)]
        if self.config.limit is not None:
            keep = keep[: self.config.limit]
        return keep

    def decode_frames(
        self, sample: Sample, sampling: FrameSampling | None = None
    ) -> DecodedVideo:
        """Decode the sample's video with the dataset's sampling (or ``sampling``).

        Raises:
            VideoError: The video is missing, empty or corrupt.
        """
        from tokenred.video import decode_video

        return decode_video(sample.video, sampling or self.config.frames)

    def extract_answer(self, text: str, sample: Sample) -> str | None:
        """Return the option letter a model's answer text names, or None."""
        return extract_letter(text, sample.letters, options=sample.options)

    def score(self, text: str, sample: Sample) -> tuple[str | None, bool]:
        """Return ``(predicted letter, correct)`` for a model's answer text."""
        pred = self.extract_answer(text, sample)
        return pred, pred is not None and pred == sample.answer

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Return named metrics over per-sample rows.

        Rows carry at least ``id``, ``prediction``, ``correct`` and ``meta``; rows
        with a truthy ``error`` (video could not be read) are left out of accuracy
        and counted in ``num_errors``, rows whose ``correct`` is None (no gold
        answer) in ``num_unscored``. Accuracy is in percent, as the paper reports.
        """
        scored = scored_rows(rows)
        errors = sum(1 for r in rows if r.get("error"))
        return {
            "accuracy": accuracy(scored),
            "num_scored": float(len(scored)),
            "num_errors": float(errors),
            "num_unscored": float(len(rows) - errors - len(scored)),
        }


def scored_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Return the rows accuracy is computed over: no ``error``, a known ``correct``."""
    return [r for r in rows if not r.get("error") and r.get("correct") is not None]


def _selectors(sample: Sample) -> set[str]:
    keys = {sample.id, sample.video_id}
    task = sample.meta.get("task")
    if task is not None:
        keys.add(str(task))
    return keys


def _check_selected(
    name: str, config: DataConfig, every: Sequence[Sample], chosen: Sequence[Sample]
) -> None:
    """Refuse a selection that matches nothing (``limit: 0`` is a deliberate one)."""
    if chosen or config.limit == 0:
        return
    if not every:
        msg = (
            f"dataset '{name}': split '{config.split}' has no questions; check "
            "data.root, data.split and the annotation file (docs/datasets.md)"
        )
        raise DataError(msg)
    tasks = sorted({str(s.meta["task"]) for s in every if s.meta.get("task")})
    examples = ", ".join(s.id for s in every[:3])
    valid = f"task types: {', '.join(tasks)}; " if tasks else ""
    wanted = ", ".join(str(x) for x in config.subset or [])
    msg = (
        f"dataset '{name}': data.subset [{wanted}] matches none of the "
        f"{len(every)} questions of split '{config.split}'; list question ids, video "
        f"ids or task types ({valid}ids such as {examples})"
    )
    raise DataError(msg)


def _check_unique(name: str, samples: Sequence[Sample]) -> None:
    seen: dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.id in seen:
            msg = (
                f"dataset '{name}': question id '{s.id}' of record {i} repeats record "
                f"{seen[s.id]}; ids must be unique, fix the annotation file"
            )
            raise DataError(msg)
        seen[s.id] = i
