"""VNBench loader: needle-in-a-video questions, each asked in 4 shuffled "tries".

Layout: ``<root>/annotations/VNBench-main-4try_v2.json`` (options written
"A. text", ``try`` 0-3, ``task_type`` such as ``ret_insert1``) and
``<root>/videos/<videoID>.mp4``. Frames: 1 fps capped at 180, so no needle of the
<= 176 s videos is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenred.data import FrameSampling, scored_rows
from tokenred.datasets._common import BenchmarkConfig, JsonBenchmark, Record
from tokenred.scoring import all_correct_accuracy, grouped_accuracy, meta_of

_TRY_SUFFIX = re.compile(r"_try\d+$")


def vnbench_sampling() -> FrameSampling:
    """Return VNBench's sampling: 1 fps capped at 180 frames."""
    return FrameSampling(num_frames=None, fps=1.0, max_frames=180)


@dataclass
class VNBenchConfig(BenchmarkConfig):
    """Config of the ``vnbench`` dataset (1 fps, at most 180 frames)."""

    name: str = field(default="vnbench", metadata={"help": "registered dataset"})
    frames: FrameSampling = field(
        default_factory=vnbench_sampling,
        metadata={"help": "frame sampling (the dataset's default)"},
    )


class VNBench(JsonBenchmark):
    """VNBench; per-try accuracy (paper) and all-four-tries accuracy (official)."""

    name = "vnbench"
    Config = VNBenchConfig
    homepage = "https://github.com/joez17/VideoNIAH"
    splits: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "test": ("annotations/VNBench-main-4try_v2.json",)
    }
    video_field = "videoID"
    lettered = True
    meta_fields = ("task_type", "duration", "try", "needle_time")

    def meta(self, rec: Record) -> dict[str, Any]:
        """Add ``group``: the question id without its ``_try<k>`` suffix."""
        out = super().meta(rec)
        out["group"] = _TRY_SUFFIX.sub("", rec.text(self.id_field))
        return out

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Add ``vnbench/all4`` (official), per-try and per-category accuracies.

        Categories are the task-type prefixes (``ret``, ``ord``, ``cnt``), reported as
        ``vnbench/per_try/<cat>`` and ``vnbench/all4/<cat>``.
        """
        out = super().aggregate(rows)
        scored = scored_rows(rows)

        def group(r: Mapping[str, Any]) -> Any:
            return meta_of(r).get("group", r.get("id"))

        def category(r: Mapping[str, Any]) -> str | None:
            task = meta_of(r).get("task")
            return str(task).split("_")[0] if task is not None else None

        out["vnbench/all4"] = all_correct_accuracy(scored, group)
        for k, v in grouped_accuracy(scored, lambda r: meta_of(r).get("try")).items():
            out[f"vnbench/try{k}"] = v
        for k, v in grouped_accuracy(scored, category).items():
            out[f"vnbench/per_try/{k}"] = v
            rows_k = [r for r in scored if category(r) == k]
            out[f"vnbench/all4/{k}"] = all_correct_accuracy(rows_k, group)
        return out
