"""LongVideoBench loader (val with answers; test without).

Layout: ``<root>/annotations/lvb_val_v2.json`` (or ``lvb_test_v2.json``; STTM's
converted files: ``question_id``, ``videoID``, ``options``, ``answer`` index,
``duration`` group, ``task_type``) or the official ``lvb_val.json`` /
``lvb_test_wo_gt.json`` (``id``, ``video_id``/``video_path``, ``candidates``,
``correct_choice``, ``duration_group``, ``question_category``), in ``<root>`` or
``<root>/annotations``; videos in ``<root>/videos/``. Subtitles are not used (as in
the paper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tokenred.data import Sample, scored_rows
from tokenred.datasets._common import (
    BenchmarkConfig,
    JsonBenchmark,
    Record,
    VideoLocator,
    build_prompt,
)
from tokenred.scoring import grouped_accuracy, meta_of, slug


@dataclass
class LongVideoBenchConfig(BenchmarkConfig):
    """Config of the ``longvideobench`` dataset (1 fps, at most 128 frames)."""

    name: str = field(default="longvideobench", metadata={"help": "registered dataset"})
    split: str = field(
        default="val", metadata={"help": "split to evaluate (val, test)"}
    )


class LongVideoBench(JsonBenchmark):
    """LongVideoBench; accuracy overall and per duration group (15, 60, 600, 3600 s)."""

    name = "longvideobench"
    Config = LongVideoBenchConfig
    homepage = "https://longvideobench.github.io"
    splits: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "val": (
            "annotations/lvb_val_v2.json",
            "annotations/lvb_val.json",
            "lvb_val.json",
        ),
        "test": (
            "annotations/lvb_test_v2.json",
            "annotations/lvb_test_wo_gt.json",
            "lvb_test_wo_gt.json",
        ),
    }
    video_field = "videoID"

    def answer_required(self) -> bool:
        """The test split ships without answers."""
        return self.config.split != "test"

    def make_sample(self, rec: Record, locator: VideoLocator) -> Sample:
        """Read a converted record, or an official one (it has ``candidates``)."""
        if not rec.has("candidates"):
            return super().make_sample(rec, locator)
        qid = rec.text("id")
        if rec.has("video_path"):
            video_id = Path(rec.text("video_path")).stem
        else:
            video_id = rec.text("video_id")
        question = rec.text("question")
        options = rec.options("candidates")
        answer = rec.letter(
            "correct_choice", len(options), required=self.answer_required()
        )
        meta: dict[str, Any] = {}
        if rec.has("duration_group"):
            meta["duration"] = rec.data["duration_group"]
        if rec.has("question_category"):
            meta["task"] = rec.data["question_category"]
        return Sample(
            id=qid,
            video_id=video_id,
            video=str(locator.path(video_id)),
            question=question,
            options=options,
            answer=answer,
            prompt=build_prompt(question, options),
            meta=meta,
        )

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Add ``lvb/duration_<s>`` and ``lvb/task/<type>``."""
        out = super().aggregate(rows)
        scored = scored_rows(rows)
        by_duration = grouped_accuracy(scored, lambda r: _group(meta_of(r)))
        for k, v in by_duration.items():
            out[f"lvb/duration_{k}"] = v
        for k, v in grouped_accuracy(scored, lambda r: meta_of(r).get("task")).items():
            out[f"lvb/task/{slug(k)}"] = v
        return out


def _group(meta: Mapping[str, Any]) -> str | None:
    value = meta.get("duration")
    if value is None:
        return None
    try:
        return str(int(float(value)))
    except (TypeError, ValueError):
        return slug(str(value))
