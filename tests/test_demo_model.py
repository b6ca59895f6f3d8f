"""The shipped demo model (issue 8): it loads, answers, and its trainer runs.

The accuracy check answers a small fixed subset of the synthetic test split through
the same path as ``tokenred run`` (adapter encode + greedy generate + the dataset's
answer extraction); the documented figure for this subset is in docs/demo-model.md.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenred.adapter import AdapterConfig
from tokenred.adapters.tiny import TinyAdapter, assets_dir
from tokenred.builtin.synthetic import SyntheticConfig, SyntheticDataset, sixteen_frames
from tokenred.training import TrainConfig, train
from tokenred.video import decode_video

SUBSET = 24
"""First questions of the test split answered by the accuracy check."""
SUBSET_ACCURACY = 5 / 24
"""Accuracy of the committed weights on that subset (docs/demo-model.md): chance
level, as the CPU-trained weights have not learnt the tasks yet."""
MAX_WEIGHT_BYTES = 20 * 1024 * 1024


def _script() -> Any:
    path = Path(__file__).resolve().parents[1] / "experiments" / "train_tiny.py"
    spec = importlib.util.spec_from_file_location("train_tiny", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_weights_are_small_and_loaded() -> None:
    weights = assets_dir() / "model.safetensors"
    assert weights.is_file(), "the trained tiny weights are not committed"
    assert weights.stat().st_size <= MAX_WEIGHT_BYTES
    adapter = TinyAdapter(AdapterConfig())
    adapter.load()
    info = adapter.describe()
    assert info["random_weights"] is False
    video = adapter.encode_video(np.zeros((16, 112, 112, 3), np.uint8))
    assert video.grid == (16, 8, 8)


def test_shipped_model_reaches_documented_accuracy(tmp_path: Path) -> None:
    data = SyntheticDataset(
        SyntheticConfig(split="test", num_videos=SUBSET, root=str(tmp_path))
    )
    samples = data.load()
    adapter = TinyAdapter(AdapterConfig(max_new_tokens=4))
    adapter.load()
    correct, texts = [], []
    for sample in samples:
        frames = decode_video(sample.video, sixteen_frames()).frames
        text = adapter.generate(adapter.encode_video(frames), sample.prompt).text
        texts.append(text)
        correct.append(data.score(text, sample)[1])
    accuracy = float(np.mean(correct))
    assert accuracy >= SUBSET_ACCURACY - 1e-9, f"{accuracy:.3f} < {SUBSET_ACCURACY:.3f}"
    # The trained answer format: one option letter, then the end token.
    assert all(t in {"A", "B", "C", "D"} for t in texts), texts


def test_training_script_runs_a_few_steps(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--steps", "2", "--batch", "2", "--variants", "2", "--eval-every", "2"]
    args += ["--train-videos", "4", "--val-videos", "4", "--warmup", "1"]
    args += ["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path)]
    _script().main([*args, "--out", str(out)])
    log = json.loads((out / "training_log.json").read_text())
    losses = [h["loss"] for h in log["history"]]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert log["evals"][-1]["step"] == 2 and log["evals"][-1]["n"] == 4
    # The weights load through the adapter as a checkpoint directory.
    for f in assets_dir().glob("*.json"):
        if f.name != "training_log.json":
            (out / f.name).write_text(f.read_text())
    adapter = TinyAdapter(AdapterConfig(path=str(out)))
    adapter.load()
    assert adapter.describe()["random_weights"] is False


def test_training_is_deterministic(tmp_path: Path) -> None:
    def config(out: str) -> TrainConfig:
        return TrainConfig(
            steps=2,
            coarse_steps=1,
            batch=2,
            variants=2,
            train_videos=2,
            val_videos=2,
            eval_every=0,
            data_root=str(tmp_path / "data"),
            cache_dir=str(tmp_path),
            out=str(tmp_path / out),
        )

    first = train(config("a"))
    again = train(config("b"))
    assert first["history"] == again["history"]
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("k", [1, 3])
def test_prompt_variants_keep_the_gold_option(k: int) -> None:
    from tokenred.data import Sample
    from tokenred.datasets._common import build_prompt
    from tokenred.training import prompt_variants

    opts = ("left", "right", "up", "down")
    sample = Sample(
        "s", "v", "x.mp4", "Which?", opts, "C", build_prompt("Which?", opts), {}
    )
    out = prompt_variants(sample, k, np.random.default_rng(0))
    assert out[0] == (sample.prompt, "C") and len(out) == k
    for prompt, letter in out:
        assert f"{letter}. up" in prompt
