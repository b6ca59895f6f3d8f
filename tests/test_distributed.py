"""Data-parallel runs: two gloo ranks write what one process writes, and resume.

The end-to-end case launches ``torchrun --nproc-per-node 2 -m tokenred run`` on
CPU (gloo) and compares every run directory with the single-process run: the same
sample ids with the same answers, one record per sample, the same metrics, and one
summary printed. Interrupted runs are made by cutting a finished store back to
its first records plus a torn line (exactly what a kill between or during appends
leaves), then resumed with the other world size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tokenred.cli import main
from tokenred.distributed import World, launcher_name, split_groups
from tokenred.results import RunStore

ARGS = ["run", "--reducer", "sttm", "data.limit=12", "measure.latency=false"]
TIMEOUT = 240  # seconds; the two-rank run takes ~25 s on a loaded 2-core machine


def _torchrun(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENRED_DIST_TIMEOUT": "120"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free local port for the rendezvous
        "--nproc-per-node",
        "2",
        "-m",
        "tokenred",
        *ARGS,
        f"output.root={root}",
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
    )


def _errors(stderr: str) -> str:
    """The lines of the ranks' own errors (not torchrun's banner)."""
    return "\n".join(line for line in stderr.splitlines() if "rror" in line)


def _run_dirs(root: Path) -> list[Path]:
    """The run directories of the study (results.json sits beside them)."""
    return sorted(p for p in (root / "default").iterdir() if p.is_dir())


def _runs(root: Path) -> dict[str, list[dict]]:
    """Per run directory, its record lines (every line, so duplicates show)."""
    out = {}
    for run in _run_dirs(root):
        lines = (run / RunStore.SAMPLES).read_text().splitlines()
        out[run.name] = [json.loads(line) for line in lines]
    return out


def _answers(runs: dict[str, list[dict]]) -> dict[str, dict[str, tuple]]:
    return {
        name: {r["id"]: (r["prediction"], r["text"], r["status"]) for r in records}
        for name, records in runs.items()
    }


def _metrics(root: Path) -> dict[str, str]:
    return {run.name: (run / RunStore.METRICS).read_text() for run in _run_dirs(root)}


def _cut(root: Path, keep: int) -> None:
    """Leave each run as a kill would: ``keep`` records and a torn last line."""
    for run in _run_dirs(root):
        path = run / RunStore.SAMPLES
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:keep]) + lines[keep][:25])
        (run / RunStore.METRICS).unlink()


def _single(root: Path) -> int:
    return main([*ARGS, f"output.root={root}"])


def test_split_groups_keeps_videos_whole_and_balances_questions():
    groups = [["a"] * 3, ["b"], ["c"] * 2, ["d"] * 2, ["e"]]
    shares = split_groups(groups, 2)
    assert sorted(i for s in shares for i in s) == list(range(5))
    loads = [sum(len(groups[i]) for i in s) for s in shares]
    assert loads == [5, 4]
    assert split_groups(groups, 2) == shares  # every rank computes the same
    assert split_groups(groups[:1], 3) == [[0], [], []]


def test_alone_the_world_is_one_rank(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    world = World.current()
    assert (world.rank, world.size, world.is_main) == (0, 1, True)
    assert world.gather("x") == ["x"]
    assert world.describe("cpu")["world_size"] == 1
    assert launcher_name({"TORCHELASTIC_RUN_ID": "1", "WORLD_SIZE": "2"}) == "torchrun"
    assert launcher_name({"ACCELERATE_MIXED_PRECISION": "no"}) == "accelerate"
    assert launcher_name({}) is None


@pytest.mark.timeout(600)
def test_two_gloo_ranks_match_one_process_and_resume_across_sizes(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _single(one) == 0
    reference = _answers(_runs(one))
    metrics = _metrics(one)
    capsys.readouterr()
    shutil.copytree(one / "_features", two / "_features")  # videos encoded once

    proc = _torchrun(two)
    assert proc.returncode == 0, _errors(proc.stderr)
    runs = _runs(two)
    for name, records in runs.items():
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids)) == 12, name  # one record per sample
    assert _answers(runs) == reference
    assert _metrics(two) == metrics
    assert proc.stdout.count("| Method |") == 2  # one summary (two tables), rank 0
    assert "12 new, 0 reused" in proc.stderr
    manifest = RunStore(_run_dirs(two)[0]).read_manifest()
    assert manifest is not None
    parallel = manifest["measurement"]["parallel"]
    assert parallel["world_size"] == 2 and parallel["launcher"] == "torchrun"
    assert [r["rank"] for r in parallel["ranks"]] == [0, 1]

    # Killed 2-rank run resumed by one process, and a killed 1-process run
    # resumed by two ranks: nothing lost, nothing duplicated, same answers.
    _cut(two, keep=5)
    assert _single(two) == 0
    _cut(one, keep=7)
    proc = _torchrun(one)
    assert proc.returncode == 0, _errors(proc.stderr)
    assert "5 new, 7 reused" in proc.stderr
    for root in (one, two):
        runs = _runs(root)
        for records in runs.values():
            ids = [r["id"] for r in records]
            assert len(ids) == len(set(ids)) == 12
        assert _answers(runs) == reference
        assert _metrics(root) == metrics


def test_joined_store_appends_beside_the_holder_and_survives_a_torn_line(tmp_path):
    from tokenred.results import SampleRecord

    holder = RunStore(tmp_path / "run").open().share()
    other = RunStore(tmp_path / "run").join()
    try:
        holder.append(SampleRecord(id="a", video_id="v"))
        other.append(SampleRecord(id="b", video_id="w"))
        with open(holder.samples_path, "ab") as fh:  # a rank killed mid-line
            fh.write(b'{"id": "c", "vid')
        other.append(SampleRecord(id="d", video_id="w"))
    finally:
        other.close()
        holder.close()
    reader = RunStore(tmp_path / "run")
    assert [r.id for r in reader.records()] == ["a", "b", "d"]
    assert len(reader.invalid_lines) == 1  # the fragment, moved aside on next open
    with reader:
        assert reader.completed_ids() == {"a", "b", "d"}
    assert [r.id for r in RunStore(tmp_path / "run").records()] == ["a", "b", "d"]
