"""LongVideoBench loader (val with answers; test without).

Layout: ``<root>/annotations/lvb_val_v2.json`` (or ``lvb_test_v2.json``), records
with 3 to 6 plain option texts and an integer answer index, and
``<root>/videos/<videoID>.mp4``. Subtitles are not used (as in the paper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenred.data import scored_rows
from tokenred.datasets._common import BenchmarkConfig, JsonBenchmark
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
        "val": ("annotations/lvb_val_v2.json",),
        "test": ("annotations/lvb_test_v2.json",),
    }
    video_field = "videoID"

    def answer_required(self) -> bool:
        """The test split ships without answers."""
        return self.config.split != "test"

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
