"""MLVU dev multiple-choice loader: 2,174 four-option questions in 7 tasks.

Layout: ``<root>/annotations/MLVU_mcq_v2.json`` (STTM's merged file; options are
plain texts, the answer a letter) and ``<root>/videos/<video_id>.mp4`` where the id
is ``<task dir>-<file stem>``, e.g. ``1_plotQA-movie101_66``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenred.data import scored_rows
from tokenred.datasets._common import BenchmarkConfig, JsonBenchmark
from tokenred.scoring import grouped_accuracy, mean, meta_of, slug


@dataclass
class MLVUConfig(BenchmarkConfig):
    """Config of the ``mlvu`` dataset (dev MCQ; 1 fps, at most 128 frames)."""

    name: str = field(default="mlvu", metadata={"help": "registered dataset"})
    split: str = field(default="dev", metadata={"help": "split to evaluate (dev)"})


class MLVU(JsonBenchmark):
    """MLVU dev MCQ; overall accuracy (paper) and task-averaged M-Avg (official)."""

    name = "mlvu"
    Config = MLVUConfig
    homepage = "https://github.com/JUNJIE99/MLVU"
    splits: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "dev": ("annotations/MLVU_mcq_v2.json",)
    }

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Add ``mlvu/m_avg`` (mean of per-task accuracies) and ``mlvu/<task>``."""
        out = super().aggregate(rows)
        scored = scored_rows(rows)
        per_task = grouped_accuracy(scored, lambda r: meta_of(r).get("task"))
        out["mlvu/m_avg"] = mean(list(per_task.values()))
        for k, v in per_task.items():
            out[f"mlvu/{slug(k)}"] = v
        return out
