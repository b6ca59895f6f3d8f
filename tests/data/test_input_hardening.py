"""Bad dataset inputs fail with one clear line; official formats are read."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokenred.cli import main
from tokenred.data import VideoDataset
from tokenred.errors import DataError, ExitCode
from tokenred.plugins import get_plugin_manager
from tokenred.registry import Registries

NAMES = ["videomme", "mlvu", "longvideobench", "egoschema", "nextqa", "vnbench"]


@pytest.fixture(scope="module")
def registries() -> Registries:
    return Registries.from_plugin_manager(get_plugin_manager(autoload=False))


def make(registries: Registries, name: str, root: Path, **kw: Any) -> VideoDataset:
    cls = registries.datasets.get(name)
    return cls(cls.Config(name=name, root=str(root), **kw))


def run_error(capsys: Any, tmp_path: Path, name: str, root: Path, *extra: str) -> str:
    """Run the CLI on a dataset; assert one error line and a usage exit code."""
    argv = [
        "run",
        "--data",
        name,
        f"data.root={root}",
        f"output.root={tmp_path / 'runs'}",
        "measure.latency=false",
        *extra,
    ]
    code = main(argv)
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith(("error:", "internal"))]
    assert len(errors) == 1, err
    assert code == ExitCode.USAGE_ERROR, err
    assert not list((tmp_path / "runs").rglob("samples.jsonl")) or all(
        p.stat().st_size == 0 for p in (tmp_path / "runs").rglob("samples.jsonl")
    ), "nothing may be answered"
    return errors[0]


@pytest.mark.parametrize("name", NAMES)
def test_non_utf8_annotation_names_file_and_offset(
    name: str, build_benchmark: Callable[..., Any], tmp_path: Path, capsys, no_autoload
) -> None:
    fx = build_benchmark(name, tmp_path / name)
    data = fx.annotation.read_bytes()
    at = data.index(b"?") if b"?" in data else data.index(b"c")
    fx.annotation.write_bytes(data[:at] + b"\xe9" + data[at + 1 :])
    line = run_error(capsys, tmp_path, name, fx.root)
    assert line.startswith(f"error: {fx.annotation}: not UTF-8 text: byte 0xe9")
    assert f"at offset {at} " in line and "re-save the file as UTF-8" in line


def test_synthetic_annotation_non_utf8_is_regenerated(
    tmp_path: Path, capsys, no_autoload
) -> None:
    root = tmp_path / "synth"
    argv = ["run", f"data.root={root}", "data.num_videos=1", "model.max_new_tokens=1"]
    assert main([*argv, f"output.root={tmp_path}/r0"]) == 0
    ann = root / "annotations" / "test.json"
    good = ann.read_bytes()
    ann.write_bytes(good.replace(b"?", b"\xff", 1))
    assert main([*argv, f"output.root={tmp_path}/r1"]) == 0, capsys.readouterr().err
    assert ann.read_bytes() == good, "the generated split is rebuilt, not misread"


def _nextqa_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["video", "frame_count", "width", "height", "question", "answer", "qid"]
    cols += ["type", "a0", "a1", "a2", "a3", "a4"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for r in rows:
            writer.writerow(r)


def test_nextqa_reads_the_official_csv(
    registries: Registries, build_benchmark: Callable[..., Any], tmp_path: Path
) -> None:
    fx = build_benchmark("nextqa", tmp_path / "nq")
    fx.annotation.unlink()  # only the official file is left
    rows = [
        {
            "video": r["video_id"],
            "frame_count": 90,
            "width": 640,
            "height": 480,
            "question": r["question"],
            "answer": 2,
            "qid": r["question_id"].split("_")[1],
            "type": r["task_type"],
            **{f"a{k}": o for k, o in enumerate(r["options"])},
        }
        for r in fx.records
    ]
    _nextqa_csv(fx.root / "test.csv", rows)
    samples = make(registries, "nextqa", fx.root).samples()
    assert [s.id for s in samples] == [r["question_id"] for r in fx.records]
    assert [s.answer for s in samples] == ["C"] * 4
    assert samples[0].options == tuple(fx.records[0]["options"])
    assert [s.meta["task"] for s in samples] == ["CW", "TN", "TC", "DO"]
    assert Path(samples[0].video).is_file()
    _nextqa_csv(fx.root / "annotations" / "val.csv", rows[:1])
    (val,) = make(registries, "nextqa", fx.root, split="val").samples()
    assert val.id == fx.records[0]["question_id"]


def test_nextqa_csv_with_wrong_columns(registries: Registries, tmp_path: Path) -> None:
    path = tmp_path / "nq" / "val.csv"
    path.parent.mkdir(parents=True)
    path.write_text("video,question\n1,why\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"missing column\(s\) answer, qid, type"):
        make(registries, "nextqa", path.parent, split="val").samples()


def test_csv_given_to_a_json_loader_is_named_as_csv(
    registries: Registries, tmp_path: Path
) -> None:
    path = tmp_path / "mlvu" / "mcq.csv"
    path.parent.mkdir(parents=True)
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    ds = make(registries, "mlvu", path.parent, annotation_file="mcq.csv")
    with pytest.raises(DataError, match="is a CSV file; the mlvu loader reads JSON"):
        ds.samples()


def test_longvideobench_reads_the_official_json(
    registries: Registries, build_benchmark: Callable[..., Any], tmp_path: Path
) -> None:
    fx = build_benchmark("longvideobench", tmp_path / "lvb")
    fx.annotation.unlink()
    official = [
        {
            "video_id": r["videoID"],
            "question": r["question"],
            "question_wo_referring_query": r["question"],
            "candidates": r["options"],
            "correct_choice": r["answer"],
            "position": [1],
            "topic_category": "NP-News-Programs",
            "question_category": "TOS",
            "level": "L1-Perception",
            "id": r["question_id"],
            "video_path": f"{r['videoID']}.mp4",
            "subtitle_path": f"{r['videoID']}_en.json",
            "duration_group": r["duration"],
            "starting_timestamp_for_subtitles": 0,
            "duration": 12.5,
            "view_count": 10,
        }
        for r in fx.records
    ]
    (fx.root / "lvb_val.json").write_text(json.dumps(official), encoding="utf-8")
    ds = make(registries, "longvideobench", fx.root)
    samples = ds.samples()
    assert [s.id for s in samples] == [r["question_id"] for r in fx.records]
    assert [s.answer for s in samples] == ["BDAE"[i] for i in range(4)]
    assert [s.meta["duration"] for s in samples] == [15, 15, 600, 600]
    assert all(Path(s.video).is_file() for s in samples)
    rows = [
        {"id": s.id, "prediction": s.answer, "correct": True, "meta": s.meta}
        for s in samples
    ]
    metrics = ds.aggregate(rows)
    assert metrics["lvb/duration_15"] == 100.0 and metrics["lvb/task/tos"] == 100.0


def test_subset_matching_nothing_fails_before_running(
    build_benchmark: Callable[..., Any], tmp_path: Path, capsys, no_autoload
) -> None:
    fx = build_benchmark("mlvu", tmp_path / "mlvu")
    line = run_error(capsys, tmp_path, "mlvu", fx.root, "data.subset=[plotqa]")
    assert "data.subset [plotqa] matches none of the 5 questions" in line
    assert "task types: count, plotQA" in line and fx.records[0]["question_id"] in line


def test_synthetic_subset_matching_nothing(tmp_path: Path, capsys, no_autoload):
    root = tmp_path / "synth"
    line = run_error(
        capsys, tmp_path, "synthetic", root, "data.num_videos=2", "data.subset=[nedle]"
    )
    assert "data.subset [nedle] matches none of the 2 questions" in line
    assert "task types: " in line


def test_egoschema_subset_split_matching_nothing(
    registries: Registries, build_benchmark: Callable[..., Any], tmp_path: Path
) -> None:
    fx = build_benchmark("egoschema", tmp_path / "ego")
    subset = fx.root / "annotations" / "subset_answers.json"
    subset.write_text(json.dumps({"other-uid": 1}), encoding="utf-8")
    ds = make(registries, "egoschema", fx.root, split="subset")
    with pytest.raises(DataError, match=r"none of the 1 q_uids of .*subset_answers"):
        ds.check_selection()


def test_limit_zero_stays_a_deliberate_empty_selection(
    registries: Registries, build_benchmark: Callable[..., Any], tmp_path: Path
) -> None:
    fx = build_benchmark("mlvu", tmp_path / "mlvu")
    assert make(registries, "mlvu", fx.root, limit=0).samples() == []


def test_vnbench_limit_cutting_a_group_is_excluded_and_warned(
    registries: Registries,
    build_benchmark: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fx = build_benchmark("vnbench", tmp_path / "vn")
    caplog.set_level(logging.WARNING, logger="tokenred")
    ds = make(registries, "vnbench", fx.root, limit=6)
    samples = ds.samples()
    assert len(samples) == 6
    assert "keeps only some tries of 1 question(s)" in caplog.text
    assert "'video1_cnt_edit1' (2 of 4)" in caplog.text
    rows = [
        {"id": s.id, "prediction": s.answer, "correct": True, "meta": s.meta}
        for s in samples
    ]
    metrics = ds.aggregate(rows)
    assert metrics["vnbench/all4_incomplete"] == 1.0
    assert metrics["vnbench/all4"] == 100.0
    assert "vnbench/all4/cnt" not in metrics, "the cut group is not scored"
    full = make(registries, "vnbench", fx.root).samples()
    rows = [{"id": s.id, "correct": True, "meta": s.meta} for s in full]
    assert (
        make(registries, "vnbench", fx.root).aggregate(rows)["vnbench/all4_incomplete"]
        == 0.0
    )


def test_vnbench_cut_group_run_warns_and_reports_it(
    build_benchmark: Callable[..., Any], tmp_path: Path, capsys, no_autoload
) -> None:
    fx = build_benchmark("vnbench", tmp_path / "vn")
    argv = [
        "run",
        "--data",
        "vnbench",
        "--reducer",
        "random",
        "--budget",
        "0.5",
        f"data.root={fx.root}",
        "data.limit=6",
        f"output.root={tmp_path / 'runs'}",
        "measure.latency=false",
        "model.max_new_tokens=1",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: vnbench: the selection keeps only some tries of 1 question" in err
    for path in (tmp_path / "runs").rglob("metrics.json"):
        metrics = json.loads(path.read_text())
        assert metrics["vnbench/all4_incomplete"] == 1.0
        assert metrics["num_scored"] == 6.0
