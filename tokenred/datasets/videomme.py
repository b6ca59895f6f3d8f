"""Video-MME loader: 2,700 four-option questions on 900 videos, no subtitles.

Layout: ``<root>/annotations/videomme.json`` (STTM's reformatted file; options are
written "A. text") and ``<root>/videos/<videoID>.mp4``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenred.data import scored_rows
from tokenred.datasets._common import BenchmarkConfig, JsonBenchmark
from tokenred.scoring import grouped_accuracy, meta_of, slug


@dataclass
class VideoMMEConfig(BenchmarkConfig):
    """Config of the ``videomme`` dataset (1 fps, at most 128 frames)."""

    name: str = field(default="videomme", metadata={"help": "registered dataset"})


class VideoMME(JsonBenchmark):
    """Video-MME without subtitles; accuracy overall, by duration and by task."""

    name = "videomme"
    Config = VideoMMEConfig
    homepage = "https://video-mme.github.io"
    splits: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "test": ("annotations/videomme.json",)
    }
    video_field = "videoID"
    lettered = True
    meta_fields = ("task_type", "duration", "domain", "sub_category")

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Add ``videomme/{short,medium,long}`` and ``videomme/task/<type>``."""
        out = super().aggregate(rows)
        scored = scored_rows(rows)
        for k, v in grouped_accuracy(
            scored, lambda r: meta_of(r).get("duration")
        ).items():
            out[f"videomme/{slug(k)}"] = v
        for k, v in grouped_accuracy(scored, lambda r: meta_of(r).get("task")).items():
            out[f"videomme/task/{slug(k)}"] = v
        return out
