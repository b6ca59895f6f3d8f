"""The demo model's trainer (experiments/demo_model): it runs, deterministically,
sees what evaluation sees, and rejects bad task lists in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import train_tiny
from demo_model.tasks import epoch_indices
from demo_model.trainer import Trainer
from demo_model.training import TrainConfig, train
from tokenred.adapter import AdapterConfig
from tokenred.adapters.tiny import TinyAdapter, assets_dir
from tokenred.data import Sample


def test_training_script_runs_a_few_steps_deterministically(tmp_path: Path) -> None:
    """The short smoke run CI keeps: the script, then the API with the same config.

    One test for both, so the suite trains twice rather than three times: the
    script's run is the smoke test, the library run must reproduce it exactly.
    """
    small = {"steps": 2, "batch": 2, "eval_every": 2, "warmup": 1}
    # One thread: same bytes for the same config is what is checked, and on a
    # shared CPU two spinning threads made this test take several times longer.
    small |= {"train_videos": 4, "val_videos": 4, "threads": 1}
    args = [f"--{k.replace('_', '-')}={v}" for k, v in small.items()]
    args += ["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path)]
    out = tmp_path / "out"
    train_tiny.main([*args, "--out", str(out)])
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
    # Determinism: the same config again (frames now from the cache) gives the
    # same losses and byte-identical weights.
    cfg = TrainConfig(
        **small,
        data_root=str(tmp_path / "data"),
        cache_dir=str(tmp_path),
        out=str(tmp_path / "again"),
    )
    again = train(cfg)
    assert again["history"] == log["history"]
    weights = (out / "model.safetensors").read_bytes()
    assert weights == (tmp_path / "again" / "model.safetensors").read_bytes()


def test_trainer_forward_equals_the_adapters_prefill() -> None:
    """Prefix + cached question (training) equals the adapter's full prefill."""
    adapter = TinyAdapter(AdapterConfig())
    adapter.load()
    trainer = Trainer(adapter)
    frames = np.random.default_rng(0).integers(0, 256, (16, 112, 112, 3), np.uint8)
    prompt = "Which color is the ball? A. red B. blue C. green D. yellow"
    with torch.no_grad():
        ans, _ = trainer.logits(frames[None], [prompt], ["A"])
    expected = adapter.prefill(adapter.encode_video(frames), prompt).logits
    assert ans.shape == (1, expected.shape[0])
    diff = (ans[0] - expected).abs().max().item()
    assert diff < 1e-4, f"trainer logits differ from prefill by {diff}"


def test_epoch_indices_repeat_weighted_tasks_and_filter() -> None:
    tasks = ["needle_color", "direction", "count", "order"] * 2
    samples = [
        Sample(str(i), str(i), "v.mp4", "q", ("a", "b"), "A", "p", {"task": t})
        for i, t in enumerate(tasks)
    ]
    idx = epoch_indices("", "direction=2,count=3", samples).tolist()
    assert sorted(idx) == [0, 1, 1, 2, 2, 2, 3, 4, 5, 5, 6, 6, 6, 7]
    two = epoch_indices("order,count", "count=2", samples).tolist()
    assert two == [2, 2, 3, 6, 6, 7]
    with pytest.raises(ValueError, match="task_weights"):
        epoch_indices("", "count=0", samples)
    with pytest.raises(ValueError, match="unknown task 'directon'"):
        epoch_indices("", "directon=2", samples)
    with pytest.raises(ValueError, match="unknown task 'colour'"):
        epoch_indices("colour", "", samples)


def test_training_script_rejects_a_bad_task_list_in_one_line(
    capsys: Any,
) -> None:
    with pytest.raises(SystemExit):
        train_tiny.parse(["--task-weights", "count=two"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "task_weights: 'count=two' must be task=k" in err
