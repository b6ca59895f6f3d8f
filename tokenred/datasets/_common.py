"""Shared pieces of the benchmark loaders.

JSON reading with precise errors, the paper's prompt template, option lettering and
video-file resolution.

Every malformed annotation raises :class:`~tokenred.errors.DataError` naming the
file, the record (index and id when known) and the field, so the fix is obvious.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tokenred.data import DataConfig, Sample, VideoDataset
from tokenred.errors import ConfigError, DataError
from tokenred.scoring import letter_list, option_letters
from tokenred.video import VIDEO_EXTENSIONS

INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the "
    "video and the subtitles. Respond with only the letter {letters} of the correct "
    "option."
)
"""The paper's instruction; "and the subtitles" stays although none are used."""

ANSWER_CUE = "The best answer is:"

_LETTER_PREFIX = re.compile(r"^\s*\(?([A-J])[.)]\s*")


def build_prompt(question: str, options: Sequence[str]) -> str:
    """Return the paper's user text: instruction, question, lettered options, cue.

    The letter list in the instruction follows the number of options, e.g.
    "(A, B, C, D, or E)" for five, as the reference does for LongVideoBench.
    """
    letters = option_letters(len(options))
    lines = [INSTRUCTION.format(letters=letter_list(letters)), question]
    lines += [f"{letter}. {text}" for letter, text in zip(letters, options)]
    lines.append(ANSWER_CUE)
    return "\n".join(lines)


def resolve_root(configured: str | None, default: str) -> Path:
    """Return the dataset root: the configured one, or ``default`` (relative to cwd)."""
    return (
        Path(configured if configured is not None else default).expanduser().resolve()
    )


def read_json(path: Path, dataset: str) -> Any:
    """Read a JSON (or JSON Lines) annotation file.

    Raises:
        DataError: The file is missing or not valid JSON (with line and column).
    """
    if not path.is_file():
        msg = (
            f"{dataset}: annotation file {path} not found; set data.root to the "
            f"dataset directory (layout: docs/datasets.md#{dataset})"
        )
        raise DataError(msg)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if path.suffix == ".jsonl":
            return _read_jsonl(path, text)
        msg = f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        if path.suffix.lower() == ".csv":
            msg = (
                f"{path}: is a CSV file; the {dataset} loader reads JSON annotations "
                "here (see docs/datasets.md for the formats it accepts)"
            )
        raise DataError(msg) from exc


def read_text(path: Path) -> str:
    """Read an annotation file as UTF-8 text.

    Raises:
        DataError: Naming the file, the byte offset and line of a non-UTF-8 byte,
            or why the file cannot be read.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"{path}: cannot read the annotation file: {exc.strerror or exc}"
        raise DataError(msg) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        msg = (
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start} (line {line}); re-save the file as UTF-8 (e.g. iconv -f "
            f"latin1 -t utf-8)"
        )
        raise DataError(msg) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is harmless


def _read_jsonl(path: Path, text: str) -> list[Any]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                msg = f"{path}: invalid JSON on line {n}: {exc.msg}"
                raise DataError(msg) from exc
    return rows


def record_list(data: Any, path: Path) -> list[Any]:
    """Return the records of a file holding a list (or a dict of records by key)."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
        return list(data.values())
    msg = f"{path}: expected a JSON list of records, got {type(data).__name__}"
    raise DataError(msg)


class Record:
    """Typed field access on one annotation record with precise error messages."""

    def __init__(self, data: Any, path: Path, index: int, id_field: str) -> None:
        """Wrap record ``index`` of ``path``; ``id_field`` names it in messages."""
        self.path, self.index = path, index
        if not isinstance(data, Mapping):
            self.data: Mapping[str, Any] = {}
            self.fail("", f"must be a JSON object, got {type(data).__name__}")
        self.data = data
        rid = data.get(id_field) or data.get("id")
        self.where = f"record {index}" + (f" ({id_field}={rid!r})" if rid else "")

    def fail(self, field: str, problem: str) -> None:
        """Raise the DataError for ``field`` of this record."""
        where = getattr(self, "where", f"record {self.index}")
        what = f"field '{field}' " if field else ""
        msg = f"{self.path}: {where}: {what}{problem}; fix the annotation file"
        raise DataError(msg)

    def has(self, field: str) -> bool:
        """Whether the field is present and not null."""
        return self.data.get(field) is not None

    def text(self, field: str, *, allow_empty: bool = False) -> str:
        """Return a string field; ints are accepted and converted (ids)."""
        value = self.data.get(field)
        if value is None:
            self.fail(field, "is missing")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.fail(field, f"must be a string, got {type(value).__name__}")
        text = str(value)
        if not text.strip() and not allow_empty:
            self.fail(field, "is empty")
        return text

    def opt_text(self, field: str) -> str | None:
        """Return a string field or None when absent."""
        return self.text(field, allow_empty=True) if self.has(field) else None

    def number(self, field: str) -> float | None:
        """Return a numeric field, or None when absent."""
        value = self.data.get(field)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            self.fail(field, f"must be a number, got {type(value).__name__}")
        try:
            return float(value)
        except ValueError:
            self.fail(field, f"must be a number, got {value!r}")
        return None  # unreachable; keeps mypy satisfied

    def options(
        self, field: str = "options", *, lettered: bool = False
    ) -> tuple[str, ...]:
        """Return the option texts of a list field, without letter prefixes.

        Args:
            field: The list field.
            lettered: Options are written "A. text" in the file (VideoMME, VNBench):
                the prefix must match the position and is removed.
        """
        value = self.data.get(field)
        if not isinstance(value, list):
            got = "missing" if value is None else type(value).__name__
            self.fail(field, f"must be a list of option strings, got {got}")
            return ()
        return self._texts(field, value, lettered)

    def _texts(self, field: str, value: list[Any], lettered: bool) -> tuple[str, ...]:
        if not 2 <= len(value) <= 10:
            self.fail(field, f"must have 2 to 10 options, got {len(value)}")
        out = []
        letters = option_letters(len(value))
        for i, item in enumerate(value):
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                self.fail(
                    f"{field}[{i}]", f"must be a string, got {type(item).__name__}"
                )
            text = str(item).strip()
            if lettered:
                m = _LETTER_PREFIX.match(text)
                if m is None or m.group(1) != letters[i]:
                    self.fail(f"{field}[{i}]", f"must start with '{letters[i]}. '")
                text = text[m.end() :] if m else text
            out.append(text)
        return tuple(out)

    def letter(self, field: str, n: int, *, required: bool = True) -> str | None:
        """Return a gold answer as a letter; accepts "B" or an index (int or "1").

        Args:
            field: The answer field.
            n: Number of options (valid letters/indices).
            required: Raise when the field is absent instead of returning None.
        """
        value = self.data.get(field)
        if value is None:
            if required:
                self.fail(field, "is missing")
            return None
        letters = option_letters(n)
        if isinstance(value, bool):
            self.fail(field, f"must be a letter in {letters} or an index, got {value}")
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            idx = int(value)
            if not 0 <= idx < n:
                self.fail(field, f"index {idx} is out of range for {n} options")
            return letters[idx]
        if isinstance(value, str) and value.strip().upper() in letters:
            return value.strip().upper()
        self.fail(field, f"must be a letter in {letters} or an index, got {value!r}")
        return None


class VideoLocator:
    """Resolve a video id to a file under a directory.

    Tries ``<dir>/<id><ext>`` for the usual extensions, then (once, lazily) indexes
    every video below ``dir`` by file stem, so nested official layouts work too. An
    id that matches nothing resolves to the expected ``.mp4`` path: decoding it
    raises a ``VideoError`` and the runner records a per-sample error.
    """

    def __init__(self, directory: Path) -> None:
        """Resolve ids below ``directory``."""
        self.directory = directory
        self._index: dict[str, Path] | None = None

    def path(self, video_id: str) -> Path:
        """Return the file for ``video_id`` (it may not exist)."""
        if Path(video_id).suffix.lower() in VIDEO_EXTENSIONS:
            direct = self.directory / video_id
            if direct.is_file():
                return direct
            video_id = Path(video_id).stem
        for ext in VIDEO_EXTENSIONS:
            p = self.directory / f"{video_id}{ext}"
            if p.is_file():
                return p
        found = self._lookup(video_id)
        return found if found is not None else self.directory / f"{video_id}.mp4"

    def _lookup(self, video_id: str) -> Path | None:
        if self._index is None:
            self._index = {}
            if self.directory.is_dir():
                for p in sorted(self.directory.rglob("*")):
                    if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
                        self._index.setdefault(p.stem, p)
        found: Path | None = self._index.get(video_id)
        return found


@dataclass
class BenchmarkConfig(DataConfig):
    """Config shared by the real benchmarks (annotation file under ``root``)."""

    annotation_file: str | None = field(
        default=None,
        metadata={
            "help": "annotation file, relative to root (null: the split's default "
            "under annotations/)"
        },
    )
    video_dir: str = field(
        default="videos", metadata={"help": "video directory, relative to root"}
    )


class JsonBenchmark(VideoDataset):
    """A benchmark whose annotation file is a JSON list of MCQ records.

    Subclasses set the class attributes below and may override :meth:`make_sample`
    (record -> Sample) and :meth:`aggregate`.
    """

    Config: ClassVar[type[DataConfig]] = BenchmarkConfig
    splits: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    """Split -> candidate annotation files under ``root`` (the first that exists)."""
    id_field: ClassVar[str] = "question_id"
    video_field: ClassVar[str] = "video_id"
    lettered: ClassVar[bool] = False
    """Options are written "A. text" in the file."""
    answer_field: ClassVar[str] = "answer"
    meta_fields: ClassVar[tuple[str, ...]] = ("task_type", "duration")

    @property
    def root(self) -> Path:
        """The dataset root (``data.root`` or ``data/<name>``)."""
        return resolve_root(self.config.root, f"data/{self.name}")

    def annotation_path(self) -> Path:
        """Return the annotation file of the configured split.

        Raises:
            ConfigError: The split is not one this benchmark has.
        """
        cfg: Any = self.config
        if getattr(cfg, "annotation_file", None):
            return self.root / str(cfg.annotation_file)
        if self.config.split not in self.splits:
            msg = (
                f"{self.name}: unknown split '{self.config.split}'; available: "
                f"{', '.join(sorted(self.splits))}"
            )
            raise ConfigError(msg)
        candidates = [self.root / c for c in self.splits[self.config.split]]
        return next((c for c in candidates if c.is_file()), candidates[0])

    def answer_required(self) -> bool:
        """Whether a record without a gold answer is malformed (default: yes)."""
        return True

    def load(self) -> list[Sample]:
        """Read the annotation file and build one sample per record."""
        path = self.annotation_path()
        records = self.read_records(path)
        cfg: Any = self.config
        locator = VideoLocator(self.root / getattr(cfg, "video_dir", "videos"))
        return [
            self.make_sample(Record(r, path, i, self.id_field), locator)
            for i, r in enumerate(records)
        ]

    def read_records(self, path: Path) -> list[Any]:
        """Return the raw records of an annotation file (override for other formats)."""
        return record_list(read_json(path, self.name), path)

    def make_sample(self, rec: Record, locator: VideoLocator) -> Sample:
        """Turn one validated record into a :class:`Sample`."""
        qid = rec.text(self.id_field)
        video_id = rec.text(self.video_field)
        question = rec.text("question")
        options = rec.options("options", lettered=self.lettered)
        required = self.answer_required()
        answer = rec.letter(self.answer_field, len(options), required=required)
        return Sample(
            id=qid,
            video_id=video_id,
            video=str(locator.path(video_id)),
            question=question,
            options=options,
            answer=answer,
            prompt=build_prompt(question, options),
            meta=self.meta(rec),
        )

    def meta(self, rec: Record) -> dict[str, Any]:
        """Return the aggregation metadata of a record (``task`` = task type)."""
        out: dict[str, Any] = {}
        for name in self.meta_fields:
            if rec.has(name):
                value = rec.data[name]
                out["task" if name == "task_type" else name] = value
        return out
