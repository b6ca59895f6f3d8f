"""The run store never lies: bad lines are quarantined, writes fail with one line."""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from tokenred import results
from tokenred.cli import main
from tokenred.errors import ExitCode
from tokenred.results import (
    QUARANTINE,
    RunManifest,
    RunStore,
    RunStoreError,
    SampleRecord,
    strict_json,
    write_json,
)

GARBAGE = [
    "not json at all",
    '{"foo": 1}',  # a foreign JSON object
    '["s0", "ok"]',  # a JSON array
    '{"id": null, "status": "ok"}',
    '{"id": "s7", "status": "maybe"}',
    '{"id": "s8", "correct": "yes"}',
]


def _record(i: int, **kw: Any) -> SampleRecord:
    meta = {"task": "count", "duration": "short"}
    return SampleRecord(
        id=f"s{i}",
        video_id=f"v{i}",
        prediction="A",
        answer="A",
        correct=True,
        meta=meta,
        **kw,
    )


def _store(path: Path, n: int = 2) -> RunStore:
    with RunStore(path) as store:
        for i in range(n):
            store.append(_record(i))
        store.write_manifest(RunManifest(run_id="x", config={"reducer": {}}))
    return store


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert code not in (0, ExitCode.INTERNAL_ERROR), err
    assert "internal error" not in err
    return code, errors[0]


def test_invalid_lines_are_skipped_reported_and_quarantined(tmp_path, capsys):
    store = _store(tmp_path / "run")
    good = store.samples_path.read_text()
    store.samples_path.write_text(good + "\n".join(GARBAGE) + "\n")
    out = tmp_path / "report"
    assert main(["report", str(store.path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    (warning,) = [x for x in err.splitlines() if "do not fit" in x]
    assert warning.startswith("warning: 6 line(s) of ")
    assert "samples.jsonl" in warning and "(line 3: not JSON" in warning
    assert [r.id for r in RunStore(store.path).records()] == ["s0", "s1"]
    with RunStore(store.path) as reopened:
        assert reopened.completed_ids() == {"s0", "s1"}
    assert store.samples_path.read_text() == good, "only the bad lines move"
    side = [json.loads(x) for x in (store.path / QUARANTINE).read_text().splitlines()]
    assert [q["line"] for q in side] == [3, 4, 5, 6, 7, 8]
    assert [q["text"] for q in side] == GARBAGE, "nothing is lost"
    reasons = " | ".join(q["reason"] for q in side)
    for phrase in (
        "not a record object",
        "a JSON list",
        "non-empty string",
        "'status' must be one of ok, error",
        "'correct' must be",
        "not JSON",
    ):
        assert phrase in reasons, reasons


@pytest.mark.parametrize("line", GARBAGE)
def test_each_kind_of_bad_line_is_rejected(line):
    parsed: Any
    try:
        parsed = json.loads(line)
    except ValueError:
        return  # covered by read_samples
    assert results.record_problem(parsed) is not None
    assert results.record_problem(_record(0).to_dict()) is None


def test_store_of_garbage_is_not_reported_as_empty(tmp_path, capsys):
    store = _store(tmp_path / "run", n=0)
    store.samples_path.write_text("\n".join(GARBAGE[1:4]) + "\n")
    code, line = _one_error(capsys, ["report", str(store.path)])
    assert code == ExitCode.USAGE_ERROR
    assert "no sample records yet" not in line
    assert "no valid records: 3 line(s) of samples.jsonl do not fit" in line


def test_garbage_manifest_names_the_file_and_is_set_aside(tmp_path, capsys):
    store = _store(tmp_path / "run")
    manifest = store.path / RunStore.MANIFEST
    manifest.write_text("{not json")
    code, line = _one_error(capsys, ["report", str(store.path)])
    assert code == ExitCode.RUN_FAILED
    assert str(manifest) in line and "is not valid JSON" in line
    manifest.write_text("[1, 2]")
    with pytest.raises(RunStoreError, match="holds a JSON list"):
        RunStore(store.path).read_manifest()
    with RunStore(store.path) as reopened:  # a rerun keeps the old one aside
        assert reopened.completed_ids() == {"s0", "s1"}
        reopened.write_manifest(RunManifest(run_id="x", config={}))
    assert (store.path / "manifest.json.corrupt").read_text() == "[1, 2]"
    assert (RunStore(store.path).read_manifest() or {})["sessions"] == 1


def test_directory_in_place_of_samples_or_lock(tmp_path, capsys):
    store = _store(tmp_path / "run")
    samples = store.samples_path
    samples.rename(tmp_path / "kept.jsonl")
    samples.mkdir()
    code, line = _one_error(capsys, ["report", str(store.path)])
    assert code == ExitCode.RUN_FAILED
    assert f"{samples} should be the run's record file but is a directory" in line
    assert "move it away" in line
    samples.rmdir()
    (tmp_path / "kept.jsonl").rename(samples)
    lock = store.path / RunStore.LOCK
    lock.unlink()
    lock.mkdir()
    with pytest.raises(RunStoreError, match=r"\.lock should be the run's lock file"):
        RunStore(store.path).open()
    assert [r.id for r in RunStore(store.path).records()] == ["s0", "s1"]


def test_error_records_keep_meta_and_retries_count_attempts(tmp_path):
    with RunStore(tmp_path / "run") as store:
        store.append(SampleRecord.failed("s0", "v0", "OOM", {"task": "count"}))
    for _ in range(2):  # two reruns: the failed sample is retried each time
        with RunStore(tmp_path / "run") as store:
            assert "s0" not in store.completed_ids(include_errors=False)
            store.append(SampleRecord.failed("s0", "v0", "OOM", {"task": "count"}))
    with RunStore(tmp_path / "run") as store:
        store.append(_record(0))
    (latest,) = RunStore(tmp_path / "run").records()
    assert latest.status == "ok" and latest.attempts == 4
    every = RunStore(tmp_path / "run").records(latest=False)
    assert [r.attempts for r in every] == [1, 2, 3, 4]
    assert all(r.meta["task"] == "count" for r in every), "failures keep their meta"


def test_metrics_json_is_strict(tmp_path):
    assert strict_json({"acc": math.nan, "x": [math.inf, 1.0]}) == (
        '{"acc": null, "x": [null, 1.0]}'
    )
    write_json(tmp_path / "metrics.json", {"accuracy": math.nan, "n": 0})

    def no_constants(name: str) -> Any:
        raise AssertionError(f"non-strict JSON constant {name}")

    data = json.loads(
        (tmp_path / "metrics.json").read_text(), parse_constant=no_constants
    )
    assert data == {"accuracy": None, "n": 0}


def _fail_after(monkeypatch: pytest.MonkeyPatch, target: str, calls: int) -> None:
    """Make the store's writes to files named ``target`` hit ENOSPC after ``calls``.

    The failing write first writes half its bytes, as a full disk can.
    """
    real = results._write_all
    seen = {"n": 0}

    def write_all(fd: int, data: bytes) -> None:
        name = Path(f"/proc/self/fd/{fd}").resolve().name
        if name.startswith(target):
            seen["n"] += 1
            if seen["n"] > calls:
                real(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(results, "_write_all", write_all)


def test_full_disk_on_append_names_the_file_and_keeps_the_store(tmp_path, monkeypatch):
    store = _store(tmp_path / "run")
    before = store.samples_path.read_bytes()
    _fail_after(monkeypatch, "samples.jsonl", 0)
    with RunStore(store.path) as s:
        with pytest.raises(RunStoreError) as excinfo:
            s.append(_record(5))
        assert s.completed_ids() == {"s0", "s1"}
    msg = str(excinfo.value)
    assert msg.startswith(f"cannot write {store.samples_path}: No space left")
    assert "(ENOSPC)" in msg and "set output.root" in msg
    assert store.samples_path.read_bytes() == before, "the torn half line is cut"


def test_full_disk_on_manifest_keeps_the_old_one(tmp_path, monkeypatch):
    store = _store(tmp_path / "run")
    old = (store.path / RunStore.MANIFEST).read_text()
    _fail_after(monkeypatch, "manifest.json", 0)
    with RunStore(store.path) as s, pytest.raises(RunStoreError, match="ENOSPC"):
        s.write_manifest(RunManifest(run_id="y", config={}))
    assert (store.path / RunStore.MANIFEST).read_text() == old
    assert not list(store.path.glob("*.tmp"))


def _argv(root: Path, data_root: Path) -> list[str]:
    return [
        "run",
        "--reducer",
        "none",
        f"output.root={root}",
        f"data.root={data_root}",
        "data.num_videos=3",
        "model.max_new_tokens=2",
        "measure.latency=false",
    ]


def test_full_disk_during_a_run_is_one_line_and_a_rerun_resumes(
    tmp_path, capsys, monkeypatch, no_autoload
):
    root, data = tmp_path / "runs", tmp_path / "data"
    _fail_after(monkeypatch, "samples.jsonl", 1)
    code, line = _one_error(capsys, _argv(root, data))
    assert code == ExitCode.RUN_FAILED
    assert line.startswith("error: cannot write ") and "samples.jsonl" in line
    assert "(ENOSPC)" in line and "rerun to resume" in line
    (samples,) = root.glob("*/*/samples.jsonl")
    assert [r.id for r in RunStore(samples.parent).records()] != []
    assert samples.read_bytes().endswith(b"\n"), "no torn line is left"
    monkeypatch.undo()
    assert main(_argv(root, data)) == 0
    records = RunStore(samples.parent).records()
    assert len(records) == 3 and all(r.status == "ok" for r in records)
    metrics = json.loads((samples.parent / "metrics.json").read_text())
    assert metrics["num_scored"] == 3


def test_run_error_records_keep_the_sample_meta(tmp_path, no_autoload):
    data = tmp_path / "data"
    root = tmp_path / "runs"
    assert main([*_argv(root, data), "data.num_videos=1"]) == 0
    shutil.rmtree(root)
    videos = sorted((data / "videos").rglob("*.mp4"))
    videos[0].write_bytes(videos[0].read_bytes()[:200])  # a truncated video
    assert main([*_argv(root, data), "data.num_videos=1"]) == 1
    stores = sorted(root.glob("*/*/samples.jsonl"))
    assert stores
    for samples in stores:
        records = RunStore(samples.parent).records()
        failed = [r for r in records if r.status == "error"]
        assert failed and all(r.meta for r in failed), "meta survives a failure"
        text = (samples.parent / "metrics.json").read_text()
        assert "NaN" not in text, "nothing was scored: null, not NaN"
        assert None in json.loads(text).values()
