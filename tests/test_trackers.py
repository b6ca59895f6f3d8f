"""Experiment trackers: the TensorBoard tracker writes real event files, offline."""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

import tokenred
from tokenred.cli import main
from tokenred.errors import ConfigError
from tokenred.results import RunStore
from tokenred.trackers.tensorboard import LOG_DIR


def read_events(path: Path) -> list[event_pb2.Event]:
    """Parse a TFRecord event file: u64 length, u32 crc, payload, u32 crc."""
    data, i, events = path.read_bytes(), 0, []
    while i < len(data):
        (size,) = struct.unpack("<Q", data[i : i + 8])
        i += 12
        events.append(event_pb2.Event.FromString(data[i : i + size]))
        i += size + 4
    return events


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        for event in read_events(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out[value.tag].append((event.step, value.simple_value))
    return out


def test_tensorboard_tracker_writes_scalars_per_sample_and_metrics(tmp_path: Path):
    rows = tokenred.run(
        reducer="random",
        budget=0.5,
        overrides=[
            "data.limit=3",
            f"output.root={tmp_path}",
            "output.trackers=[tensorboard]",
        ],
    )
    for row in rows:
        run_dir = Path(row["run_dir"])
        found = scalars(run_dir / LOG_DIR)
        records = RunStore(run_dir).records()
        assert [s for s, _ in found["sample/correct"]] == [1, 2, 3]
        assert [v for _, v in found["sample/correct"]] == [
            float(r.correct) for r in records
        ]
        assert [v for _, v in found["sample/kept_tokens"]] == [
            float(r.n_visual_out) for r in records
        ]
        assert found["metrics/accuracy"] == [(3, pytest.approx(row["accuracy"]))]
        assert found["running/accuracy"][-1][1] == pytest.approx(row["accuracy"])
        tags = {
            v.tag
            for p in (run_dir / LOG_DIR).rglob("events.out.tfevents.*")
            for e in read_events(p)
            for v in e.summary.value
        }
        assert any(t.startswith("config") for t in tags), tags


def test_no_tracker_writes_nothing(tmp_path: Path):
    rows = tokenred.run(
        reducer="random", overrides=["data.limit=1", f"output.root={tmp_path}"]
    )
    assert not (Path(rows[1]["run_dir"]) / LOG_DIR).exists()


def test_unknown_tracker_fails_before_the_first_sample(tmp_path: Path, capsys):
    code = main(
        [
            *("run", "--reducer", "random", "data.limit=1"),
            *(f"output.root={tmp_path}", "output.trackers=[wandb_online]"),
        ]
    )
    err = capsys.readouterr().err
    assert code == int(ConfigError.exit_code), err
    assert "unknown tracker 'wandb_online'" in err and "tensorboard" in err
    assert not list(tmp_path.rglob("samples.jsonl")) or all(
        p.stat().st_size == 0 for p in tmp_path.rglob("samples.jsonl")
    )
