"""EgoSchema loader: five-option questions on 3-minute egocentric clips.

Layout: ``<root>/annotations/egoschema_fullset_v2.json`` or the public
``questions.json`` (records ``q_uid``, ``question``, ``option 0`` .. ``option 4``,
optional ``answer`` index), optional ``<root>/annotations/subset_answers.json``
(``{q_uid: index}``, the public 500-question subset) and
``<root>/videos/<q_uid>.mp4``. The full set's answers are held by a server; rows
without a known answer are not scored locally (see :meth:`EgoSchema.submission`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tokenred.data import Sample
from tokenred.datasets._common import (
    BenchmarkConfig,
    JsonBenchmark,
    Record,
    VideoLocator,
    build_prompt,
    read_json,
)
from tokenred.errors import DataError
from tokenred.scoring import accuracy, meta_of

NUM_OPTIONS = 5
SUBSET_FILE = "annotations/subset_answers.json"


@dataclass
class EgoSchemaConfig(BenchmarkConfig):
    """Config of the ``egoschema`` dataset (1 fps, at most 128 frames)."""

    name: str = field(default="egoschema", metadata={"help": "registered dataset"})


class EgoSchema(JsonBenchmark):
    """EgoSchema; scored locally on the questions whose answers are present."""

    name = "egoschema"
    Config = EgoSchemaConfig
    homepage = "https://egoschema.github.io"
    splits: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "test": ("annotations/egoschema_fullset_v2.json", "annotations/questions.json"),
        "subset": (
            "annotations/egoschema_fullset_v2.json",
            "annotations/questions.json",
        ),
    }
    id_field = "q_uid"
    video_field = "q_uid"

    def answer_required(self) -> bool:
        """Answers are optional: most of the full set has none locally."""
        return False

    def load(self) -> list[Sample]:
        """Read the questions, fill answers from the subset file, keep the split."""
        self._subset = self._read_subset()
        samples = super().load()
        if self.config.split == "subset":
            if not self._subset:
                msg = (
                    f"egoschema: split 'subset' needs {self.root / SUBSET_FILE} "
                    "({q_uid: answer index}); download it from the EgoSchema release"
                )
                raise DataError(msg)
            picked = [s for s in samples if s.id in self._subset]
            if not picked:
                msg = (
                    f"egoschema: none of the {len(self._subset)} q_uids of "
                    f"{self.root / SUBSET_FILE} is among the {len(samples)} "
                    f"questions of {self.annotation_path()}; use files from the same "
                    "EgoSchema release"
                )
                raise DataError(msg)
            samples = picked
        return samples

    def _read_subset(self) -> dict[str, int]:
        path: Path = self.root / SUBSET_FILE
        if not path.is_file():
            return {}
        data = read_json(path, self.name)
        if not isinstance(data, dict):
            msg = f"{path}: expected an object {{q_uid: answer index}}"
            raise DataError(msg)
        out = {}
        for key, value in data.items():
            if isinstance(value, bool) or not str(value).isdigit():
                msg = (
                    f"{path}: entry '{key}': answer must be an index 0-4, got {value!r}"
                )
                raise DataError(msg)
            out[str(key)] = int(value)
        return out

    def make_sample(self, rec: Record, locator: VideoLocator) -> Sample:
        """Build a sample from ``option 0`` .. ``option 4``."""
        qid = rec.text("q_uid")
        question = rec.text("question")
        options = tuple(rec.text(f"option {i}").strip() for i in range(NUM_OPTIONS))
        answer = rec.letter("answer", NUM_OPTIONS, required=False)
        if answer is None and qid in self._subset:
            answer = (
                "ABCDE"[self._subset[qid]] if self._subset[qid] < NUM_OPTIONS else None
            )
        return Sample(
            id=qid,
            video_id=qid,
            video=str(locator.path(qid)),
            question=question,
            options=options,
            answer=answer,
            prompt=build_prompt(question, options),
            meta={"has_answer": answer is not None, "in_subset": qid in self._subset},
        )

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Score only rows with a known answer; ``egoschema/subset`` on the subset."""
        ok = [r for r in rows if not r.get("error")]
        known = [
            r
            for r in ok
            if meta_of(r).get("has_answer") and r.get("correct") is not None
        ]
        subset = [r for r in known if meta_of(r).get("in_subset")]
        return {
            "accuracy": accuracy(known),
            "egoschema/subset": accuracy(subset),
            "num_scored": float(len(known)),
            "num_unanswered": float(len(ok) - len(known)),
            "num_errors": float(len(rows) - len(ok)),
        }

    @staticmethod
    def submission(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Return ``{q_uid: "digit"}`` for the official validation server.

        Unparseable predictions are omitted (the server counts them as wrong).
        """
        out = {}
        for r in rows:
            pred = r.get("prediction")
            if isinstance(pred, str) and len(pred) == 1 and pred in "ABCDE":
                out[str(r["id"])] = str("ABCDE".index(pred))
        return out
