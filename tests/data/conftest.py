"""Fixture builders: tiny mp4s and annotation files in each benchmark's real format."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenred.video import write_video


def tiny_frames(n: int = 12, size: int = 64, seed: int = 0) -> np.ndarray:
    """[n, size, size, 3]: a flat background with a white square moving right."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 120, size=3)
    frames = np.empty((n, size, size, 3), np.uint8)
    frames[:] = base
    for t in range(n):
        x = 2 + 3 * t
        frames[t, 20:36, x : x + 16] = 255
    return frames


def write_tiny(path: Path, n: int = 12, size: int = 64, fps: float = 4.0) -> Path:
    return write_video(path, tiny_frames(n, size, seed=len(path.name)), fps)


def _dump(root: Path, rel: str, data: Any) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def _videos(root: Path, ids: list[str]) -> None:
    for vid in dict.fromkeys(ids):
        write_tiny(root / "videos" / f"{vid}.mp4", n=8)


# Each builder writes a benchmark under root and returns (records, planted), where
# planted maps question id -> model answer text.


def videomme(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    opts = ["A. Apples.", "B. Candles.", "C. Berries.", "D. The three are the same."]
    rows = []
    for i, (dur, task) in enumerate(
        [
            ("short", "Counting Problem"),
            ("short", "OCR Problems"),
            ("medium", "Counting Problem"),
            ("long", "Action Reasoning"),
        ]
    ):
        vid = f"vid{i // 2}"
        rows.append(
            {
                "video_id": f"00{i // 2}",
                "duration": dur,
                "domain": "Knowledge",
                "sub_category": "Humanity & History",
                "url": "https://youtu.be/x",
                "videoID": vid,
                "question_id": f"00{i // 2}-{i % 2 + 1}",
                "task_type": task,
                "question": f"Question {i}?",
                "options": opts,
                "answer": "ABCD"[i],
            }
        )
    _dump(root, "annotations/videomme.json", rows)
    _videos(root, [r["videoID"] for r in rows])
    # correct, wrong, correct, wrong
    planted = {
        "000-1": "A",
        "000-2": "The answer is C",
        "001-1": "(C)",
        "001-2": "I cannot tell.",
    }
    return rows, planted


def mlvu(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    rows = []
    for i, task in enumerate(["plotQA", "plotQA", "plotQA", "count", "count"]):
        vid = f"{i + 1}_{task}-clip{i}"
        rows.append(
            {
                "video_id": vid,
                "question_id": f"{vid}-1",
                "question": f"Q{i}?",
                "answer": "B",
                "options": ["Yellow", "Red", "Green", "Blue"],
                "task_type": task,
                "duration": "long",
                "video_second": 2.0,
            }
        )
    _dump(root, "annotations/MLVU_mcq_v2.json", rows)
    _videos(root, [r["video_id"] for r in rows])
    texts = ["B", "Red", "A", "C", "D"]  # plotQA 2/3, count 0/2
    return rows, {r["question_id"]: t for r, t in zip(rows, texts)}


def longvideobench(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    spec = [(15, 5, 1), (15, 4, 3), (600, 3, 0), (600, 5, 4)]
    rows = []
    for i, (dur, n, ans) in enumerate(spec):
        rows.append(
            {
                "videoID": f"lvb{i}",
                "question_id": f"lvb{i}_0",
                "duration": dur,
                "task_type": "TOS",
                "question": f"Which subtitle {i}?",
                "options": [f"option {k}" for k in range(n)],
                "answer": ans,
            }
        )
    _dump(root, "annotations/lvb_val_v2.json", rows)
    _videos(root, [r["videoID"] for r in rows])
    texts = ["B", "D.", "B", "E"]  # 15: 2/2, 600: 1/2
    return rows, {r["question_id"]: t for r, t in zip(rows, texts)}


def egoschema(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    rows = []
    for i in range(4):
        row = {"q_uid": f"uid-{i}", "question": f"What did c do {i}?"}
        row.update({f"option {k}": f"c does thing {k}" for k in range(5)})
        if i < 2:
            row["answer"] = 2
        rows.append(row)
    _dump(root, "annotations/questions.json", rows)
    _dump(root, "annotations/subset_answers.json", {"uid-2": 4})
    _videos(root, [r["q_uid"] for r in rows])
    # uid-0 right, uid-1 wrong, uid-2 (subset) right, uid-3 has no answer
    planted = {"uid-0": "C", "uid-1": "A", "uid-2": "E", "uid-3": "B"}
    return rows, planted


def nextqa(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    rows = []
    for i, task in enumerate(["CW", "TN", "TC", "DO"]):
        rows.append(
            {
                "video_id": f"{2574374895 + i}",
                "question_id": f"{2574374895 + i}_{i}",
                "question": "what did the baby do after throwing the cup",
                "answer": "C",
                "task_type": task,
                "duration": "short",
                "options": [
                    "clap proudly",
                    "the lady sitting down",
                    "lay on floor",
                    "just picked it up",
                    "crawl",
                ],
                "video_second": 3.0,
            }
        )
    _dump(root, "annotations/MC_test_v2.json", rows)
    _videos(root, [r["video_id"] for r in rows])
    texts = ["C", "crawl", "lay on floor", "The best answer is: C"]
    return rows, {r["question_id"]: t for r, t in zip(rows, texts)}


def vnbench(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    rows, planted = [], {}
    for v, task in enumerate(["ret_insert1", "cnt_edit1"]):
        vid = f"video{v}_{task}"
        for t in range(4):
            qid = f"{vid}_try{t}"
            ans = "ABCD"[(v + t) % 4]
            rows.append(
                {
                    "question": "What is the name of the landmark in the picture?",
                    "options": [
                        "A. Pretoria Bridge.",
                        "B. Schuylkill River.",
                        "C. Notre-Dame.",
                        "D. Lake Kardyvatch.",
                    ],
                    "needle_time": [1],
                    "answer": ans,
                    "length": 2.0,
                    "task_type": task,
                    "try": t,
                    "videoID": vid,
                    "question_id": qid,
                    "video_second": 2.0,
                    "duration": "short",
                }
            )
            wrong = "ABCD"[(v + t + 1) % 4]
            planted[qid] = wrong if (v, t) == (1, 2) else ans
    _dump(root, "annotations/VNBench-main-4try_v2.json", rows)
    _videos(root, [r["videoID"] for r in rows])
    return rows, planted


BUILDERS: dict[str, Callable[[Path], tuple[list[dict[str, Any]], dict[str, str]]]] = {
    "videomme": videomme,
    "mlvu": mlvu,
    "longvideobench": longvideobench,
    "egoschema": egoschema,
    "nextqa": nextqa,
    "vnbench": vnbench,
}

ANNOTATION: dict[str, str] = {
    "videomme": "annotations/videomme.json",
    "mlvu": "annotations/MLVU_mcq_v2.json",
    "longvideobench": "annotations/lvb_val_v2.json",
    "egoschema": "annotations/questions.json",
    "nextqa": "annotations/MC_test_v2.json",
    "vnbench": "annotations/VNBench-main-4try_v2.json",
}


@pytest.fixture
def tiny_video(tmp_path: Path) -> Path:
    return write_tiny(tmp_path / "clip.mp4", n=12, size=64, fps=4.0)


@pytest.fixture
def make_video() -> Callable[..., Path]:
    """Return ``write_tiny(path, n=12, size=64, fps=4.0)``."""
    return write_tiny


@pytest.fixture
def benchmark(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """Build the benchmark named by ``request.param`` under tmp; see ``build``."""
    return build(request.param, tmp_path / request.param)


class Built:
    """A fixture benchmark on disk: name, root, records and planted answers."""

    def __init__(self, name: str, root: Path) -> None:
        self.name, self.root = name, root
        self.records, self.planted = BUILDERS[name](root)
        self.annotation = root / ANNOTATION[name]


def build(name: str, root: Path) -> Built:
    return Built(name, root)


@pytest.fixture
def build_benchmark() -> Callable[[str, Path], Built]:
    return build
