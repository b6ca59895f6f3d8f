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
from demo_model.composite import build_pool, composite_config
from demo_model.grounding import COLOR_IDS
from demo_model.tasks import epoch_indices
from demo_model.trainer import Trainer
from demo_model.training import TrainConfig, composite_split, train
from tokenred.adapter import AdapterConfig
from tokenred.adapters.tiny import TinyAdapter, assets_dir
from tokenred.builtin.synthetic_render import SHAPES
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


def test_training_script_rejects_a_bad_composite_k_in_one_line(
    capsys: Any,
) -> None:
    with pytest.raises(SystemExit):
        train_tiny.parse(["--composite-k", "2,6"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "composite_k: '6' must be an integer in 2..5" in err
    with pytest.raises(SystemExit):
        train_tiny.parse(["--composite-fraction", "0.5"])  # no composite videos
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "composite_fraction > 0 needs composite_videos > 0" in err


def test_composite_targets_name_each_questions_own_object(tmp_path: Path) -> None:
    """Five-question clips: every question has cells, the two movers' are apart.

    The two movers share a colour, so only the rebuilt scene tells their tokens
    apart; each direction question's cells lie on its colour and get its shape.
    """
    cfg = TrainConfig(data_root=str(tmp_path / "data"), cache_dir=str(tmp_path))
    pool = composite_split(cfg, "train", 5, 2)
    assert len(pool.samples) == 10 and len(pool.frames) == 2
    assert pool.video.tolist() == [0] * 5 + [1] * 5
    assert pool.cells.reshape(10, -1).any(1).all()
    for v in range(2):
        movers = [
            i
            for i in range(5 * v, 5 * v + 5)
            if pool.samples[i].meta["task"] == "direction"
        ]
        assert len(movers) == 2
        a, b = (pool.cells[i] for i in movers)
        assert (a & b).sum() < min(a.sum(), b.sum()) / 4
        for i in movers:
            state = pool.samples[i].meta["state"]
            mine = pool.cells[i]
            assert (pool.labels[v][mine] == COLOR_IDS[state["color"]]).all()
            assert (pool.probes[i][..., 2][mine] == SHAPES.index(state["shape"])).all()
    # The rebuilt scene is checked against the annotation.
    wrong = [
        Sample(
            s.id,
            s.video_id,
            s.video,
            s.question,
            s.options,
            s.answer,
            s.prompt,
            {**s.meta, "state": {}},
        )
        for s in pool.samples[:5]
    ]
    data = composite_config("train", 5, 2, str(tmp_path / "data" / "k5"))
    with pytest.raises(ValueError, match="does not match its annotation"):
        build_pool(data, wrong, pool.frames[:1], pool.labels[:1], np.arange(16) * 2)


def test_second_stage_starts_from_weights_and_evaluates_composite_clips(
    tmp_path: Path,
) -> None:
    """``--init-from`` loads trained weights; composite questions join the batch."""
    cfg = TrainConfig(
        steps=1,
        batch=2,
        eval_every=1,
        train_videos=4,
        val_videos=4,
        threads=1,
        init_from=str(assets_dir()),
        composite_videos=1,
        composite_k="2",
        composite_fraction=0.5,
        composite_val_videos=1,
        lr=0.0,
        data_root=str(tmp_path / "data"),
        cache_dir=str(tmp_path),
        out=str(tmp_path / "out"),
    )
    log = train(cfg)
    assert log["evals"][-1]["composite"]["n"] == 5
    # lr 0: the saved weights are the ones it started from.
    shipped = (assets_dir() / "model.safetensors").read_bytes()
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == shipped
