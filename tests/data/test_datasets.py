from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokenred.data import DataConfig, VideoDataset
from tokenred.errors import ConfigError, DataError
from tokenred.plugins import get_plugin_manager
from tokenred.registry import Registries
from tokenred.video import VideoError

NAMES = ["videomme", "mlvu", "longvideobench", "egoschema", "nextqa", "vnbench"]

EXPECTED: dict[str, dict[str, float]] = {
    "videomme": {
        "accuracy": 50.0,
        "videomme/short": 50.0,
        "videomme/medium": 100.0,
        "videomme/long": 0.0,
        "videomme/task/counting_problem": 100.0,
        "videomme/task/ocr_problems": 0.0,
    },
    "mlvu": {
        "accuracy": 40.0,
        "mlvu/m_avg": (200 / 3 + 0.0) / 2,
        "mlvu/plotqa": 200 / 3,
        "mlvu/count": 0.0,
    },
    "longvideobench": {
        "accuracy": 75.0,
        "lvb/duration_15": 100.0,
        "lvb/duration_600": 50.0,
    },
    "egoschema": {
        "accuracy": 200 / 3,
        "egoschema/subset": 100.0,
        "num_scored": 3.0,
        "num_unanswered": 1.0,
    },
    "nextqa": {
        "accuracy": 75.0,
        "nextqa/causal": 100.0,
        "nextqa/temporal": 50.0,
        "nextqa/descriptive": 100.0,
        "nextqa/type/tn": 0.0,
    },
    "vnbench": {
        "accuracy": 87.5,
        "vnbench/all4": 50.0,
        "vnbench/per_try/ret": 100.0,
        "vnbench/per_try/cnt": 75.0,
        "vnbench/all4/ret": 100.0,
        "vnbench/all4/cnt": 0.0,
        "vnbench/try2": 50.0,
        "vnbench/try0": 100.0,
    },
}


@pytest.fixture(scope="module")
def registries() -> Registries:
    return Registries.from_plugin_manager(get_plugin_manager(autoload=False))


def make(registries: Registries, name: str, root: Path, **kw: Any) -> VideoDataset:
    cls = registries.datasets.get(name)
    return cls(cls.Config(name=name, root=str(root), **kw))


def run_rows(ds: VideoDataset, planted: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for s in ds.samples():
        pred, ok = ds.score(planted[s.id], s)
        rows.append(
            {"id": s.id, "prediction": pred, "correct": ok, "meta": dict(s.meta)}
        )
    return rows


def test_builtin_datasets_register_lazily(registries: Registries) -> None:
    names = registries.datasets.names()
    assert set(NAMES) | {"synthetic"} <= set(names)
    assert all(isinstance(registries.datasets.entry(n).target, str) for n in names)
    assert registries.datasets.get("lvb") is registries.datasets.get("longvideobench")
    for name in [*NAMES, "synthetic"]:
        cls = registries.datasets.get(name)
        assert issubclass(cls, VideoDataset) and cls.name == name
        assert dataclasses.is_dataclass(cls.Config) and issubclass(
            cls.Config, DataConfig
        )
        assert cls.Config().name == name, f"{name}: Config.name default must match"
        assert cls.homepage.startswith("https://")


@pytest.mark.parametrize("name", NAMES)
def test_loader_reads_real_format_and_scores_planted_answers(
    registries: Registries,
    build_benchmark: Callable[..., Any],
    tmp_path: Path,
    name: str,
) -> None:
    fx = build_benchmark(name, tmp_path / name)
    ds = make(registries, name, fx.root)
    samples = ds.samples()
    assert len(samples) == len(fx.records)
    assert len({s.id for s in samples}) == len(samples), "ids must be unique"
    for s in samples:
        assert Path(s.video).is_file(), f"{s.id}: video not resolved"
        assert s.prompt.startswith("Select the best answer")
        assert s.prompt.endswith("\nThe best answer is:")
        assert s.question in s.prompt
        for letter, text in zip(s.letters, s.options):
            assert f"\n{letter}. {text}\n" in s.prompt
            assert not text.startswith(f"{letter}. "), "options must not carry letters"
    # ids are stable: a second load yields the same ids in the same order
    assert [s.id for s in make(registries, name, fx.root).samples()] == [
        s.id for s in samples
    ]
    metrics = ds.aggregate(run_rows(ds, fx.planted))
    for key, value in EXPECTED[name].items():
        assert metrics[key] == pytest.approx(value), f"{name}: {key}"


def test_videomme_prompt_is_the_paper_template(
    registries: Registries, build_benchmark: Callable[..., Any], tmp_path: Path
) -> None:
    fx = build_benchmark("videomme", tmp_path)
    s = make(registries, "videomme", fx.root).samples()[0]
    assert s.prompt == (
        "Select the best answer to the following multiple-choice question based on "
        "the video and the subtitles. Respond with only the letter (A, B, C, or D) of "
        "the correct option.\nQuestion 0?\nA. Apples.\nB. Candles.\nC. Berries.\n"
        "D. The three are the same.\nThe best answer is:"
    )
    assert s.options[0] == "Apples." and s.answer == "A"
    assert s.video_id == "vid0" and s.meta["duration"] == "short"


def test_egoschema_and_lvb_specifics(
    registries: Registries, build_benchmark: Callable[..., Any], tmp_path: Path
) -> None:
    ego = build_benchmark("egoschema", tmp_path / "ego")
    ds = make(registries, "egoschema", ego.root)
    samples = ds.samples()
    assert "(A, B, C, D, or E)" in samples[0].prompt
    assert [s.answer for s in samples] == ["C", "C", "E", None]
    sub = make(registries, "egoschema", ego.root, split="subset").samples()
    assert [s.id for s in sub] == ["uid-2"]
    rows = run_rows(ds, ego.planted)
    assert ds.submission(rows) == {
        "uid-0": "2",
        "uid-1": "0",
        "uid-2": "4",
        "uid-3": "1",
    }

    lvb = build_benchmark("longvideobench", tmp_path / "lvb")
    ls = make(registries, "longvideobench", lvb.root).samples()
    assert [len(s.options) for s in ls] == [5, 4, 3, 5]
    assert "(A, B, or C)" in ls[2].prompt and [s.answer for s in ls] == list("BDAE")
    # The test split has no answers: loaded, but not scored.
    unanswered = [{k: v for k, v in r.items() if k != "answer"} for r in lvb.records]
    (lvb.root / "annotations" / "lvb_test_v2.json").write_text(json.dumps(unanswered))
    test_ds = make(registries, "longvideobench", lvb.root, split="test")
    assert all(s.answer is None for s in test_ds.samples())
    rows = [
        {"id": s.id, "prediction": "A", "correct": None, "meta": dict(s.meta)}
        for s in test_ds.samples()
    ]
    metrics = test_ds.aggregate(rows)
    assert math.isnan(metrics["accuracy"]) and metrics["num_unscored"] == 4.0


def test_vnbench_defaults_to_180_frame_cap(registries: Registries) -> None:
    cls = registries.datasets.get("vnbench")
    assert cls.Config().frames.max_frames == 180 and cls.Config().frames.fps == 1.0
    assert registries.datasets.get("videomme").Config().frames.max_frames == 128


def _rewrite(path: Path, change: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def _drop(i: int, key: str) -> Callable[[Any], Any]:
    def f(d: Any) -> Any:
        del d[i][key]
        return d

    return f


def _set(i: int, key: str, value: Any) -> Callable[[Any], Any]:
    def f(d: Any) -> Any:
        d[i][key] = value
        return d

    return f


def _replace_record(i: int, value: Any) -> Callable[[Any], Any]:
    def f(d: Any) -> Any:
        d[i] = value
        return d

    return f


def _opt0(d: Any) -> Any:
    d[0]["options"][0] = "B. Apples."
    return d


def _dup(d: Any) -> Any:
    d[3]["question_id"] = d[0]["question_id"]
    return d


MALFORMED = [
    (
        "videomme",
        _drop(1, "question"),
        ["record 1", "question_id='000-2'", "'question'"],
    ),
    ("videomme", _opt0, ["record 0", "'options[0]'", "must start with 'A. '"]),
    ("videomme", _set(2, "answer", "E"), ["record 2", "'answer'", "ABCD"]),
    ("longvideobench", _set(0, "answer", 9), ["record 0", "'answer'", "out of range"]),
    ("mlvu", _set(1, "options", "Yellow"), ["record 1", "'options'", "list"]),
    ("egoschema", _drop(3, "option 3"), ["record 3", "q_uid='uid-3'", "'option 3'"]),
    ("nextqa", _replace_record(2, ["x"]), ["record 2", "JSON object"]),
    ("nextqa", _set(0, "question", 7.5), ["record 0", "'question'", "string"]),
    ("vnbench", _dup, ["repeats record 0"]),
]


@pytest.mark.parametrize(("name", "change", "needles"), MALFORMED)
def test_malformed_annotations_name_file_record_and_field(
    registries: Registries,
    build_benchmark: Callable[..., Any],
    tmp_path: Path,
    name: str,
    change: Callable[[Any], Any],
    needles: list[str],
) -> None:
    fx = build_benchmark(name, tmp_path)
    _rewrite(fx.annotation, change)
    with pytest.raises(DataError) as info:
        make(registries, name, fx.root).samples()
    msg = str(info.value)
    if "repeats" not in msg:
        assert fx.annotation.name in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} missing from: {msg}"
    assert "\n" not in msg


def test_unreadable_or_missing_annotation_file(
    registries: Registries, build_benchmark: Callable[..., Any], tmp_path: Path
) -> None:
    fx = build_benchmark("mlvu", tmp_path)
    fx.annotation.write_text('[{"video_id": "x",')
    with pytest.raises(DataError, match=r"MLVU_mcq_v2\.json: invalid JSON at line 1"):
        make(registries, "mlvu", fx.root).samples()
    with pytest.raises(DataError, match=r"not found; set data\.root"):
        make(registries, "nextqa", tmp_path / "nowhere").samples()
    with pytest.raises(ConfigError, match="unknown split 'train'"):
        make(registries, "mlvu", fx.root, split="train").samples()


def test_subset_and_limit(
    registries: Registries, build_benchmark: Callable[..., Any], tmp_path: Path
) -> None:
    fx = build_benchmark("mlvu", tmp_path)
    by_task = make(registries, "mlvu", fx.root, subset=["count"]).samples()
    assert [s.meta["task"] for s in by_task] == ["count", "count"]
    assert (
        len(make(registries, "mlvu", fx.root, subset=["count"], limit=1).samples()) == 1
    )
    ids = [fx.records[0]["question_id"], fx.records[4]["video_id"]]
    picked = make(registries, "mlvu", fx.root, subset=ids).samples()
    assert [s.id for s in picked] == [
        fx.records[0]["question_id"],
        fx.records[4]["question_id"],
    ]
    assert make(registries, "mlvu", fx.root, limit=0).samples() == []


def test_nested_video_layout_is_found(
    registries: Registries, build_benchmark: Callable[..., Any], tmp_path: Path
) -> None:
    fx = build_benchmark("nextqa", tmp_path)
    vid = fx.records[0]["video_id"]
    nested = fx.root / "videos" / "1001" / f"{vid}.mp4"
    nested.parent.mkdir()
    (fx.root / "videos" / f"{vid}.mp4").rename(nested)
    s = make(registries, "nextqa", fx.root).samples()[0]
    assert s.video == str(nested)


def test_broken_video_becomes_error_record_and_run_completes(
    registries: Registries, build_benchmark: Callable[..., Any], tmp_path: Path
) -> None:
    fx = build_benchmark("videomme", tmp_path)
    (fx.root / "videos" / "vid1.mp4").write_bytes(b"\x00garbage" * 50)
    ds = make(registries, "videomme", fx.root)
    rows: list[dict[str, Any]] = []
    for s in ds.samples():  # what the runner does
        try:
            video = ds.decode_frames(s)
        except VideoError as err:
            rows.append(
                {
                    "id": s.id,
                    "error": err.reason,
                    "prediction": None,
                    "correct": False,
                    "meta": dict(s.meta),
                }
            )
            continue
        assert video.frames.shape[1:] == (64, 64, 3)
        assert video.indices.tolist() == [0, 4, 7]  # 1 fps on 8 frames at 4 fps
        pred, ok = ds.score(fx.planted[s.id], s)
        rows.append(
            {"id": s.id, "prediction": pred, "correct": ok, "meta": dict(s.meta)}
        )
    assert [bool(r.get("error")) for r in rows] == [False, False, True, True]
    assert "not a readable video" in rows[2]["error"]
    metrics = ds.aggregate(rows)
    assert metrics["num_errors"] == 2.0 and metrics["num_scored"] == 2.0
    assert metrics["accuracy"] == 50.0
    assert math.isnan(metrics.get("videomme/long", math.nan))
