"""NExT-QA multiple-choice loader (test split, five options).

Layout: ``<root>/annotations/MC_test_v2.json`` (STTM's converted file: plain option
texts, letter answer, ``task_type`` in CW/CH/TN/TC/TP/DC/DL/DO) or the official CSV
(``test.csv`` / ``val.csv`` with columns ``video, question, answer, qid, type,
a0..a4``, in ``<root>`` or ``<root>/annotations``), and
``<root>/videos/<video_id>.mp4`` (nested official folders are found by file name
too).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tokenred.data import scored_rows
from tokenred.datasets._common import BenchmarkConfig, JsonBenchmark, read_text
from tokenred.errors import DataError
from tokenred.scoring import grouped_accuracy, meta_of

CSV_COLUMNS = (
    "video",
    "question",
    "answer",
    "qid",
    "type",
    "a0",
    "a1",
    "a2",
    "a3",
    "a4",
)
"""Columns of the official ``val.csv`` / ``test.csv`` the loader needs."""

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
        "test": ("annotations/MC_test_v2.json", "annotations/test.csv", "test.csv"),
        "val": ("annotations/MC_val_v2.json", "annotations/val.csv", "val.csv"),
    }

    def read_records(self, path: Path) -> list[Any]:
        """Read the converted JSON, or the official CSV (one row per question)."""
        if path.suffix.lower() == ".csv":
            return read_official_csv(path)
        return super().read_records(path)

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


def read_official_csv(path: Path) -> list[dict[str, Any]]:
    """Turn NExT-QA's official CSV into records of the converted JSON format.

    The question id is ``<video>_<qid>``, as in the converted file; ``answer`` is
    the option index 0-4.

    Raises:
        DataError: The file is not UTF-8 or lacks one of :data:`CSV_COLUMNS`.
    """
    if not path.is_file():
        msg = f"nextqa: annotation file {path} not found; set data.root"
        raise DataError(msg)
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        msg = (
            f"{path}: not NExT-QA's official CSV: missing column(s) "
            f"{', '.join(missing)} (header: {', '.join(reader.fieldnames or [])})"
        )
        raise DataError(msg)
    records = []
    for row in reader:
        records.append(
            {
                "video_id": row["video"],
                "question_id": f"{row['video']}_{row['qid']}",
                "question": row["question"],
                "options": [row[f"a{k}"] for k in range(5)],
                "answer": row["answer"],
                "task_type": row["type"],
            }
        )
    return records
