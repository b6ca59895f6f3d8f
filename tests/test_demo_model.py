"""The demo model (issues 8, 22): the shipped weights load and score what the docs say.

Its trainer (experiments/demo_model) is tested in test_demo_training.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenred.adapter import AdapterConfig
from tokenred.adapters.tiny import TinyAdapter, assets_dir

SUBSET = 32
"""The shipped model's documented accuracy (docs/demo-model.md) on the first
``SUBSET`` questions of the synthetic test split, unreduced: correct answers."""
SUBSET_CORRECT = 30


def test_shipped_model_loads_and_reaches_its_documented_accuracy(
    tmp_path: Path,
) -> None:
    from tokenred.cli import main
    from tokenred.results import RunStore

    assert (assets_dir() / "model.safetensors").is_file()
    adapter = TinyAdapter(AdapterConfig())
    adapter.load()
    assert adapter.describe()["random_weights"] is False
    video = adapter.encode_video(np.zeros((16, 112, 112, 3), np.uint8))
    assert video.grid == (16, 8, 8)
    argv = ["run", "--reducer", "none", f"output.root={tmp_path / 'runs'}"]
    argv += [f"data.root={tmp_path / 'data'}", f"data.num_videos={SUBSET}"]
    argv += ["measure.latency=false", "measure.baseline=false"]
    assert main(argv) == 0
    (manifest,) = (tmp_path / "runs").glob("*/*/manifest.json")
    records = list(RunStore(manifest.parent).records())
    assert len(records) == SUBSET
    correct = sum(bool(r.correct) for r in records)
    # Equal up to one question: a near-tie may flip on another CPU or torch build.
    assert abs(correct - SUBSET_CORRECT) <= 1, f"{correct}/{SUBSET} correct"


COMPOSITE_VIDEOS = 6
"""Five-question clips of the test split the composite check asks about (30
questions, issue 22)."""
COMPOSITE_CORRECT = 17
"""The shipped model's documented correct answers on them, unreduced (chance: 7.5)."""


def test_shipped_model_answers_composite_clips_well_above_chance(
    tmp_path: Path,
) -> None:
    """Five questions of distinct types about one clip, as docs/demo-model.md says."""
    from tokenred.cli import main
    from tokenred.results import RunStore

    argv = ["run", "--reducer", "none", f"output.root={tmp_path / 'runs'}"]
    argv += [f"data.root={tmp_path / 'data'}", f"data.num_videos={COMPOSITE_VIDEOS}"]
    argv += ["data.questions_per_video=5"]
    argv += ["measure.latency=false", "measure.baseline=false"]
    assert main(argv) == 0
    (manifest,) = (tmp_path / "runs").glob("*/*/manifest.json")
    records = list(RunStore(manifest.parent).records())
    assert len(records) == 5 * COMPOSITE_VIDEOS
    correct = sum(bool(r.correct) for r in records)
    # Equal up to one question (a near-tie may flip on another CPU or torch build).
    assert abs(correct - COMPOSITE_CORRECT) <= 1, f"{correct}/{len(records)} correct"
