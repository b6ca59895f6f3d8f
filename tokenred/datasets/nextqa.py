"""NExT-QA multiple-choice loader (test split, five options).

Layout: ``<root>/annotations/MC_test_v2.json`` (plain option texts, letter answer,
``task_type`` in CW/CH/TN/TC/TP/DC/DL/DO) and ``<root>/videos/<video_id>.mp4``
(nested official folders are found by file name too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenred.data import scored_rows
from tokenred.datasets._common import BenchmarkConfig, JsonBenchmark
from tokenred.scoring import grouped_accuracy, meta_of

QUESTION_GROUPS: Mapping[str, str] = {
    "CW": "causal",
    "CH": "causal",
    "TN": "temporal",
    "TC": "temporal",
    "TP": "temporal",
    "DC": "descriptive",
    "DL": "descriptive",
    "DO": "descriptive",
}
"""NExT-QA's question types and the official causal/temporal/descriptive groups."""


@dataclass
class NExTQAConfig(BenchmarkConfig):
    """Config of the ``nextqa`` dataset (1 fps, at most 128 frames)."""

    name: str = field(default="nextqa", metadata={"help": "registered dataset"})


class NExTQA(JsonBenchmark):
    """NExT-QA MCQ; accuracy overall, per causal/temporal/descriptive group and type."""

    name = "nextqa"
    Config = NExTQAConfig
    homepage = "https://github.com/doc-doc/NExT-QA"
    splits: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "test": ("annotations/MC_test_v2.json",),
        "val": ("annotations/MC_val_v2.json",),
    }

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Add ``nextqa/{causal,temporal,descriptive}`` and ``nextqa/type/<XX>``."""
        out = super().aggregate(rows)
        scored = scored_rows(rows)

        def group(r: Mapping[str, Any]) -> str | None:
            return QUESTION_GROUPS.get(str(meta_of(r).get("task")))

        for k, v in grouped_accuracy(scored, group).items():
            out[f"nextqa/{k}"] = v
        for k, v in grouped_accuracy(scored, lambda r: meta_of(r).get("task")).items():
            out[f"nextqa/type/{k.lower()}"] = v
        return out
