"""The demo model (issue 8): its trainer runs, deterministically, and the default
ships no weights until a training run reaches the documented target."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from tokenred.adapter import AdapterConfig
from tokenred.adapters.tiny import TinyAdapter, assets_dir
from tokenred.training import TrainConfig, train


def _script() -> Any:
    path = Path(__file__).resolve().parents[1] / "experiments" / "train_tiny.py"
    spec = importlib.util.spec_from_file_location("train_tiny", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_ships_no_weights_until_one_reaches_the_target() -> None:
    # Issue 8 asks for >= 90 % before trained weights become the default; the
    # attempts so far stayed at chance (docs/demo-model.md), so the default stays
    # the seeded random init, flagged as such in every manifest.
    assert not (assets_dir() / "model.safetensors").exists()
    adapter = TinyAdapter(AdapterConfig())
    adapter.load()
    assert adapter.describe()["random_weights"] is True
    video = adapter.encode_video(np.zeros((16, 112, 112, 3), np.uint8))
    assert video.grid == (16, 8, 8)


def test_training_script_runs_a_few_steps(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--steps", "2", "--batch", "2", "--eval-every", "2"]
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
            batch=2,
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
