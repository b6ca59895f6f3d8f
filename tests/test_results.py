"""SampleRecord schema, run ids, and the RunStore's resume and locking."""

from __future__ import annotations

import enum
import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from tokenred.results import (
    QUARANTINE,
    FlopsRecord,
    MemoryRecord,
    RunLockedError,
    RunManifest,
    RunStore,
    RunStoreError,
    SampleRecord,
    run_id,
)

CONFIG: dict[str, Any] = {
    "name": "demo",
    "seed": 0,
    "model": {"name": "tiny", "dtype": "float32"},
    "data": {"name": "synthetic", "limit": 4},
    "reducer": {"name": "random"},
    "budget": {"ratio": 0.25, "tokens": None},
    "output": {"root": "runs", "overwrite": False},
}


def _record(i: int, **kw: Any) -> SampleRecord:
    fields: dict[str, Any] = dict(
        id=f"s{i}",
        video_id=f"v{i // 2}",
        prediction="A",
        answer="A" if i % 2 else "B",
        correct=bool(i % 2),
        n_visual_in=100,
        n_visual_out=25,
        schedule=[110, 35],
        visual_schedule=[100, 25],
        equivalent_tokens=62.5,
        flops=FlopsRecord(prefill=1000 + i, decode_per_token=10.0, vision=500),
        latency_ms={"prefill": {"median": 1.0, "iqr": 0.1, "n": 3}, "vision": None},
        memory=MemoryRecord(peak_bytes=1, peak_kind="cpu_rss", kv_cache_bytes=2),
    )
    return SampleRecord(**{**fields, **kw})


class Color(enum.Enum):
    RED = "red"


def test_run_id_is_stable_and_ignores_output() -> None:
    rid = run_id(CONFIG)
    assert len(rid) == 12 and rid == run_id(json.loads(json.dumps(CONFIG)))
    reordered = dict(reversed(list(CONFIG.items())))
    assert run_id(reordered) == rid, "key order must not matter"
    moved = {**CONFIG, "output": {"root": "elsewhere", "overwrite": True}}
    assert run_id(moved) == rid, "output.* must not change the id"
    for change in (
        {"seed": 1},
        {"reducer": {"name": "sttm"}},
        {"budget": {"ratio": 0.5}},
    ):
        assert run_id({**CONFIG, **change}) != rid
    assert run_id({"a": Color.RED}) == run_id({"a": "red"}), "enums hash by value"


def test_record_round_trip_and_json_schema() -> None:
    rec = _record(3, reduction_info={"threshold": 0.8}, meta={"task": "count"})
    line = rec.to_json()
    assert "\n" not in line
    back = SampleRecord.from_dict(json.loads(line))
    assert back == rec
    data = json.loads(line)
    for key in (
        "id",
        "video_id",
        "status",
        "flops",
        "latency_ms",
        "memory",
        "schedule",
    ):
        assert key in data
    assert data["flops"] == {
        "prefill": 1003,
        "decode_per_token": 10.0,
        "vision": 500,
        "attention": "causal",
        "prefill_unreduced": None,
    }


def test_non_finite_numbers_become_null_and_unknown_keys_survive() -> None:
    rec = _record(0, latency_ms={"prefill": {"median": float("nan"), "n": 0}})
    data = json.loads(rec.to_json())
    assert data["latency_ms"]["prefill"]["median"] is None
    data["future_field"] = 1
    assert SampleRecord.from_dict(data).meta["_extra"] == {"future_field": 1}


def test_failed_record_has_one_line_error() -> None:
    rec = SampleRecord.failed("s1", "v1", ValueError("bad frame\nsecond line"))
    assert rec.status == "error" and rec.error == "ValueError: bad frame"


def test_store_resumes_after_torn_last_line(tmp_path: Path) -> None:
    store = RunStore.for_config(tmp_path, CONFIG)
    assert store.path == tmp_path / run_id(CONFIG)
    with store:
        store.write_config("name: demo\n")
        store.write_manifest(RunManifest(run_id=run_id(CONFIG), config=CONFIG))
        for i in range(3):
            store.append(_record(i))
    # simulate a kill in the middle of writing record 3
    partial = _record(3).to_json()[:40]
    with open(store.samples_path, "a", encoding="utf-8") as fh:
        fh.write(partial)
    reader = RunStore(store.path)
    assert [r.id for r in reader.records()] == ["s0", "s1", "s2"], (
        "readers skip the tail"
    )
    with RunStore(store.path) as resumed:
        assert resumed.completed_ids() == {"s0", "s1", "s2"}
        assert not store.samples_path.read_text().endswith(partial), "torn tail dropped"
        resumed.append(_record(3))
        with pytest.raises(RunStoreError, match="already recorded"):
            resumed.append(_record(1))
        resumed.write_manifest(RunManifest(run_id=run_id(CONFIG), config=CONFIG))
        resumed.write_manifest(RunManifest(run_id=run_id(CONFIG), config=CONFIG))
    lines = store.samples_path.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["s0", "s1", "s2", "s3"]
    manifest = RunStore(store.path).read_manifest()
    assert manifest is not None and manifest["sessions"] == 2
    assert RunStore(store.path).read_config() == "name: demo\n"


def test_torn_line_ending_in_newline_is_also_dropped(tmp_path: Path) -> None:
    with RunStore(tmp_path / "run") as store:
        store.append(_record(0))
    with open(store.samples_path, "a", encoding="utf-8") as fh:
        fh.write('{"id": "s9", "vid\n')
    with RunStore(tmp_path / "run") as store:
        assert store.completed_ids() == {"s0"}
    assert len(store.samples_path.read_text().splitlines()) == 1


def test_corrupt_middle_line_is_skipped_then_quarantined(
    tmp_path: Path, caplog
) -> None:
    with RunStore(tmp_path / "run") as store:
        store.append(_record(0))
    text = store.samples_path.read_text()
    store.samples_path.write_text("garbage\n" + text)
    assert [r.id for r in RunStore(tmp_path / "run").records()] == ["s0"]
    assert "samples.jsonl do not fit the record schema (line 1: not JSON" in caplog.text
    with RunStore(tmp_path / "run") as store:
        assert store.completed_ids() == {"s0"}
    assert store.samples_path.read_text() == text
    (moved,) = [
        json.loads(x) for x in (store.path / QUARANTINE).read_text().splitlines()
    ]
    assert moved["line"] == 1 and moved["text"] == "garbage"


def test_errors_can_be_retried_and_the_last_record_wins(tmp_path: Path) -> None:
    with RunStore(tmp_path / "run") as store:
        store.append(SampleRecord.failed("s0", "v0", "CUDA OOM"))
        store.append(_record(1))
        assert store.completed_ids(include_errors=False) == {"s1"}
        store.append(_record(0))  # the retry
    recs = RunStore(tmp_path / "run").records()
    assert [(r.id, r.status) for r in recs] == [("s1", "ok"), ("s0", "ok")]
    assert len(RunStore(tmp_path / "run").records(latest=False)) == 3


def test_reset_starts_the_run_over(tmp_path: Path) -> None:
    with RunStore(tmp_path / "run") as store:
        store.append(_record(0))
        store.write_manifest(RunManifest(run_id="x", config={}))
    with RunStore(tmp_path / "run") as store:
        store.reset()
        assert store.completed_ids() == set()
        store.append(_record(0))
        store.write_manifest(RunManifest(run_id="x", config={}))
    assert [r.id for r in RunStore(tmp_path / "run").records()] == ["s0"]
    assert (RunStore(tmp_path / "run").read_manifest() or {})["sessions"] == 1


def test_writing_needs_the_lock(tmp_path: Path) -> None:
    with pytest.raises(RunStoreError, match="needs the write lock"):
        RunStore(tmp_path / "run").append(_record(0))


def _hold_lock(path: str, ready: Any, release: Any) -> None:
    with RunStore(path):
        ready.set()
        release.wait(30)


def test_second_process_gets_a_clear_error(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path / "run"), ready, release))
    proc.start()
    try:
        assert ready.wait(30), "child did not take the lock"
        with pytest.raises(
            RunLockedError, match=f"another process \\(pid {proc.pid}\\)"
        ):
            RunStore(tmp_path / "run").open()
    finally:
        release.set()
        proc.join(30)
    assert proc.exitcode == 0
    with RunStore(tmp_path / "run") as store:  # free again once the writer is gone
        store.append(_record(0))


def test_manifest_collect_records_versions_and_device() -> None:
    rows = [
        {
            "name": "tokenred.builtin.reducers",
            "distribution": None,
            "version": None,
            "status": "ok",
        }
    ]
    m = RunManifest.collect(
        CONFIG,
        device="cpu",
        attn_implementation="sdpa",
        plugins=rows,
        random_weights=True,
    )
    assert m.run_id == run_id(CONFIG)
    assert m.device["kind"] == "cpu" and m.device["name"]
    assert m.packages["torch"] and m.packages["tokenred"] and m.packages["python"]
    assert m.plugins == [
        {"name": "tokenred.builtin.reducers", "distribution": None, "version": None}
    ]
    assert set(m.git) == {"sha", "dirty"}
    assert json.loads(json.dumps(m.to_dict()))["random_weights"] is True


def test_retired_record_keys_are_dropped_on_read() -> None:
    # Stores written before agree_with_unreduced was removed (it was never set).
    old = {"id": "a", "agree_with_unreduced": None, "surprise": 1}
    record = SampleRecord.from_dict(old)
    assert record.meta["_extra"] == {"surprise": 1}
    assert "agree_with_unreduced" not in record.to_dict()
