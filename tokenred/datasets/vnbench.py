"""VNBench loader: needle-in-a-video questions, each asked in 4 shuffled "tries".

Layout: ``<root>/annotations/VNBench-main-4try_v2.json`` (options written
"A. text", ``try`` 0-3, ``task_type`` such as ``ret_insert1``) and
``<root>/videos/<videoID>.mp4``. Frames: 1 fps capped at 180, so no needle of the
<= 176 s videos is skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenred.data import FrameSampling, Sample, scored_rows
from tokenred.datasets._common import BenchmarkConfig, JsonBenchmark, Record
from tokenred.scoring import all_correct_accuracy, grouped_accuracy, meta_of

log = logging.getLogger(__name__)

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

    def load(self) -> list[Sample]:
        """Read the records; ``meta.group_size`` is the number of tries per question."""
        samples = super().load()
        sizes = Counter(s.meta["group"] for s in samples)
        return [
            dataclasses.replace(
                s, meta={**s.meta, "group_size": sizes[s.meta["group"]]}
            )
            for s in samples
        ]

    def select(self, samples: Sequence[Sample]) -> list[Sample]:
        """Select as usual, and warn when the selection cuts a question's tries."""
        chosen = super().select(samples)
        cut = _incomplete(chosen)
        if cut:
            group, have, size = cut[0]
            log.warning(
                "vnbench: the selection keeps only some tries of %d question(s), e.g. "
                "'%s' (%d of %d); they are left out of vnbench/all4 (per-try accuracy "
                "counts them); use a data.limit that is a multiple of 4",
                len(cut),
                group,
                have,
                size,
            )
        return chosen

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Add ``vnbench/all4`` (official), per-try and per-category accuracies.

        Categories are the task-type prefixes (``ret``, ``ord``, ``cnt``), reported as
        ``vnbench/per_try/<cat>`` and ``vnbench/all4/<cat>``. A question whose tries
        are not all in ``rows`` (a ``data.limit`` cut its group) cannot be all-correct
        or not: it is left out of the all-four-tries scores and counted in
        ``vnbench/all4_incomplete``.
        """
        out = super().aggregate(rows)
        scored = scored_rows(rows)
        cut = {g for g, _, _ in _incomplete(rows)}
        out["vnbench/all4_incomplete"] = float(len(cut))
        if cut:
            log.warning(
                "vnbench: %d question(s) lack some of their tries and are left out of "
                "vnbench/all4",
                len(cut),
            )

        def group(r: Mapping[str, Any]) -> Any:
            return meta_of(r).get("group", r.get("id"))

        def category(r: Mapping[str, Any]) -> str | None:
            task = meta_of(r).get("task")
            return str(task).split("_")[0] if task is not None else None

        complete = [r for r in scored if group(r) not in cut]
        out["vnbench/all4"] = all_correct_accuracy(complete, group)
        for k, v in grouped_accuracy(scored, lambda r: meta_of(r).get("try")).items():
            out[f"vnbench/try{k}"] = v
        for k, v in grouped_accuracy(scored, category).items():
            out[f"vnbench/per_try/{k}"] = v
            rows_k = [r for r in complete if category(r) == k]
            if rows_k:  # empty when the selection cut every question of k
                out[f"vnbench/all4/{k}"] = all_correct_accuracy(rows_k, group)
        return out


def _incomplete(rows: Sequence[Any]) -> list[tuple[str, int, int]]:
    """Return ``(group, tries present, tries in the file)`` of cut groups.

    Accepts samples or result rows (both carry ``meta``); rows written before
    ``group_size`` existed count as complete.
    """
    counts: Counter[str] = Counter()
    sizes: dict[str, int] = {}
    for r in rows:
        meta = r.meta if isinstance(r, Sample) else meta_of(r)
        size = meta.get("group_size")
        if size is None:
            continue
        group = str(meta.get("group"))
        counts[group] += 1
        sizes[group] = int(size)
    return [(g, counts[g], sizes[g]) for g in counts if counts[g] < sizes[g]]
