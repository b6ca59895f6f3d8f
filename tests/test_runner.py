"""End-to-end runner tests on CPU: the tiny model and a small synthetic split."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from tokenred import hookimpl
from tokenred.cli import main
from tokenred.measure import prefill_flops
from tokenred.results import RunStore

TIMING_KEYS = ("latency_ms",)


def _argv(root: Path, data_root: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--reducer",
        "random",
        "--budget",
        "0.3",
        f"output.root={root}",
        f"data.root={data_root}",
        "data.num_videos=3",
        "model.max_new_tokens=2",
        "measure.latency=false",
        *extra,
    ]


def _runs(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Map reducer name -> records (as dicts) of every run under root."""
    out: dict[str, list[dict[str, Any]]] = {}
    for manifest in sorted(root.glob("*/*/manifest.json")):
        store = RunStore(manifest.parent)
        cfg = json.loads(manifest.read_text())["config"]
        out[cfg["reducer"]["name"]] = [r.to_dict() for r in store.records()]
    return out


def _strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop what legitimately differs between sessions: timings, memory, cache hits."""
    out = []
    for record in records:
        r = json.loads(json.dumps(record))
        for key in TIMING_KEYS:
            r.pop(key, None)
        r["memory"].pop("peak_bytes", None)
        r["memory"].pop("peak_kind", None)
        r["meta"].pop("feature_cache_hit", None)
        out.append(r)
    return out


class _Observer:
    """Plugin implementing every hook, recording each call the CLI and runner make."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def register_reducers(self, register: Any) -> None:
        self.calls.append(("register_reducers", register))

    @hookimpl
    def register_model_adapters(self, register: Any) -> None:
        self.calls.append(("register_model_adapters", register))

    @hookimpl
    def register_datasets(self, register: Any) -> None:
        self.calls.append(("register_datasets", register))

    @hookimpl
    def register_commands(self, subparsers: Any) -> None:
        self.calls.append(("register_commands", subparsers))

    @hookimpl
    def register_trackers(self, register: Any) -> None:
        self.calls.append(("register_trackers", register))

    @hookimpl
    def before_run(self, config: Any, manifest: Any) -> None:
        self.calls.append(("before_run", (config, manifest)))

    @hookimpl
    def after_sample(self, record: Any) -> None:
        self.calls.append(("after_sample", record))

    @hookimpl
    def after_run(self, store: Any) -> None:
        self.calls.append(("after_run", store))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def observer() -> _Observer:
    return _Observer()


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory, data_root: Path, observer: _Observer
) -> tuple[Path, int]:
    root = tmp_path_factory.mktemp("runs")
    argv = _argv(root, data_root, "measure.latency=true", "measure.repeats=2")
    code = main(argv, plugins=[observer])
    return root, code


def test_run_writes_baseline_and_reduced_records(first_run: tuple[Path, int]) -> None:
    root, code = first_run
    assert code == 0
    runs = _runs(root)
    assert set(runs) == {"none", "random"}, "the unreduced companion run is missing"
    for name, records in runs.items():
        assert len(records) == 3, f"{name}: expected one record per question"
        for r in records:
            assert r["status"] == "ok"
            assert r["prediction"] is None or r["prediction"] in "ABCD"
            assert len(r["schedule"]) == len(r["visual_schedule"]) > 0
            assert r["latency_ms"]["prefill"]["n"] == 2, "repeats not honoured"
            assert r["latency_ms"]["vision"]["median"] > 0
            assert r["memory"]["kv_cache_bytes"] > 0
    for metrics_file in root.glob("*/*/metrics.json"):
        metrics = json.loads(metrics_file.read_text())
        assert metrics["num_scored"] == 3
        assert any(k.startswith("synthetic/") for k in metrics), metrics
    base, red = runs["none"][0], runs["random"][0]
    assert base["n_visual_out"] == base["n_visual_in"]
    assert (
        red["n_visual_out"] == red["budget_tokens"] == round(0.3 * red["n_visual_in"])
    )
    assert red["flops"]["prefill"] < base["flops"]["prefill"]


def test_record_flops_follow_the_token_schedule(first_run: tuple[Path, int]) -> None:
    from tokenred.adapter import AdapterConfig, create_adapter
    from tokenred.plugins import get_plugin_manager
    from tokenred.registry import Registries

    regs = Registries.from_plugin_manager(get_plugin_manager())
    adapter = create_adapter(regs.models, AdapterConfig(name="tiny"))
    adapter.load()
    for records in _runs(first_run[0]).values():
        r = records[0]
        expected = prefill_flops(adapter.arch, r["schedule"]).total
        assert r["flops"]["prefill"] == expected


def test_second_run_reuses_records(
    first_run: tuple[Path, int], data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = first_run
    before = _runs(root)
    assert (
        main(_argv(root, data_root, "measure.latency=true", "measure.repeats=2")) == 0
    )
    err = capsys.readouterr().err
    assert err.count("0 new, 3 reused") == 2, err
    assert _runs(root) == before, "a finished run was recomputed"


class _Interrupt:
    """Plugin that kills the run after a number of records (as Ctrl-C would)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.seen = 0

    @hookimpl
    def after_sample(self, record: Any) -> None:
        self.seen += 1
        if self.seen == self.after:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_identical_records(
    tmp_path: Path, data_root: Path
) -> None:
    clean = tmp_path / "clean"
    assert main(_argv(clean, data_root)) == 0
    killed = tmp_path / "killed"
    code = main(_argv(killed, data_root), plugins=[_Interrupt(after=4)])
    assert code == 130, "Ctrl-C should exit 130 after keeping what was written"
    partial = _runs(killed)
    assert sum(len(v) for v in partial.values()) == 4
    assert main(_argv(killed, data_root)) == 0
    resumed = _runs(killed)
    want = _runs(clean)
    assert set(resumed) == set(want)
    for name in want:
        assert _strip(resumed[name]) == _strip(want[name]), name


def test_feature_cache_gives_identical_records(tmp_path: Path, data_root: Path) -> None:
    cold = tmp_path / "cold"
    assert main(_argv(cold, data_root, "output.feature_cache=false")) == 0
    assert not (cold / "_features").exists()
    warm = tmp_path / "warm"
    assert main(_argv(warm, data_root)) == 0
    hits = [r["meta"]["feature_cache_hit"] for r in _runs(warm)["random"]]
    assert all(hits), "the second run of a video should read cached features"
    a, b = _runs(cold), _runs(warm)
    for name in a:
        assert _strip(a[name]) == _strip(b[name]), name


@pytest.mark.parametrize("reuse", [(), ("measure.kv_reuse=2",)], ids=["full", "kv"])
def test_broken_video_becomes_error_record(
    tmp_path: Path, data_root: Path, reuse: tuple[str, ...]
) -> None:
    broken = tmp_path / "data"
    shutil.copytree(data_root, broken)
    videos = sorted((broken / "videos").rglob("*.mp4"))
    videos[1].write_bytes(videos[1].read_bytes()[:200])  # truncated file
    root = tmp_path / "runs"
    assert main(_argv(root, broken, "data.root=" + str(broken), *reuse)) == 1
    for name, records in _runs(root).items():
        status = [r["status"] for r in records]
        assert status == ["ok", "error", "ok"], name
        assert records[1]["error"], "the error record must say why"


def test_kv_reuse_with_one_question_costs_a_full_prefill(
    tmp_path: Path, data_root: Path
) -> None:
    """One question per video: prefix + question is exactly the full prefill."""
    for name, extra in (("full", ()), ("reused", ("measure.kv_reuse=2",))):
        argv = _argv(tmp_path / name, data_root, "measure.baseline=false", *extra)
        argv[argv.index("random")] = "sttm"
        assert main(argv) == 0
    full, kv = _runs(tmp_path / "full")["sttm"], _runs(tmp_path / "reused")["sttm"]
    for a, b in zip(full, kv, strict=True):
        assert b["meta"]["kv_reuse"]["questions"] == 1
        assert b["meta"]["kv_reuse"]["owns_prefix"] is True
        assert b["text"] == a["text"] and b["schedule"] == a["schedule"]
        assert b["flops"]["prefill"] == a["flops"]["prefill"]
        assert b["flops"]["decode_per_token"] == a["flops"]["decode_per_token"]


def test_query_dependent_reducer_skips_kv_reuse(
    tmp_path: Path, data_root: Path
) -> None:
    argv = _argv(
        tmp_path,
        data_root,
        "measure.kv_reuse=2",
        "insertion.stage=in_llm",
        "insertion.layer=2",
    )
    argv[argv.index("random")] = "fastv"
    assert main(argv) == 0
    rec = _runs(tmp_path)["fastv"][0]
    assert "kv_reuse" not in rec["meta"]
    manifests = {
        json.loads(m.read_text())["config"]["reducer"]["name"]: json.loads(
            m.read_text()
        )["measurement"]["kv_reuse"]
        for m in tmp_path.glob("*/*/manifest.json")
    }
    assert manifests["fastv"] == {
        "requested": 2,
        "applied": 0,
        "query_agnostic": False,
    }
    assert manifests["none"]["applied"] == 2
    from tokenred.report import main_report

    table = (main_report([tmp_path], tmp_path / "report") / "reuse.md").read_text()
    fastv = next(line for line in table.splitlines() if "| fastv (K=2) |" in line)
    # every reuse cell says so; its accuracy and full-prefill costs are shown
    assert fastv.count("not reusable") == 6, fastv
    assert "| 717 | not reusable | not reusable | 717 | not reusable |" in fastv
    unreduced = next(line for line in table.splitlines() if "| unreduced |" in line)
    assert "not reusable" not in unreduced


def test_calibrate_fits_thresholds_that_reach_the_average_budget(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [f"data.root={data_root}", "data.num_videos=3", f"output.root={tmp_path}"]
    code = main(["calibrate", "--reducer", "sttm", "--budget", "0.3", *common])
    assert code == 0
    out = capsys.readouterr().out
    overrides = out.strip().splitlines()[-1].split()
    assert any(o.startswith("reducer.tau_s=") for o in overrides), out
    achieved = float(out.split("achieved_ratio:")[1].split()[0])
    assert 0 < achieved <= 0.3
    argv = _argv(tmp_path, data_root, "measure.baseline=false", *overrides)
    argv[argv.index("random")] = "sttm"
    argv[argv.index("0.3")] = "1.0"  # thresholds alone decide the count
    assert main(argv) == 0
    records = _runs(tmp_path)["sttm"]
    mean = sum(r["n_visual_out"] / r["n_visual_in"] for r in records) / len(records)
    assert mean == pytest.approx(achieved, abs=1e-3)


def test_calibrate_refuses_reducers_without_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Neither the checkpoint nor the videos exist: the refusal must come first,
    # before any model or video is loaded.
    code = main(
        [
            "calibrate",
            "--reducer",
            "random",
            "--budget",
            "0.3",
            f"model.path={tmp_path / 'no-checkpoint'}",
            f"data.root={tmp_path / 'no-videos'}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no calibration" in err[0], err


def test_incompatible_point_fails_before_anything_runs(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(tmp_path, data_root)
    argv[argv.index("random")] = "fastv"  # needs in_llm
    argv.append("insertion.stage=pre_llm")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "insertion.stage=in_llm" in err[0], err
    assert not list(tmp_path.glob("*/*/samples.jsonl")), "the baseline ran anyway"


@pytest.fixture(scope="module")
def three_per_video(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """STTM at 30 % on 2 videos x 5 questions, with and without KV reuse (the
    setting of issue 22's criterion: ``data.questions_per_video=5
    measure.kv_reuse=5``, the model's default insertion point)."""
    data = tmp_path_factory.mktemp("synth3")
    root = tmp_path_factory.mktemp("runs3")
    common = [
        "run",
        "--reducer",
        "sttm",
        "--budget",
        "0.3",
        f"data.root={data}",
        "data.num_videos=2",
        "data.questions_per_video=5",
        "model.max_new_tokens=2",
        "measure.baseline=false",
        "measure.repeats=1",
        "measure.warmup=0",
    ]
    assert main([*common, f"output.root={root / 'full'}"]) == 0
    assert main([*common, f"output.root={root / 'kv'}", "measure.kv_reuse=5"]) == 0
    return {
        "full": _runs(root / "full")["sttm"],
        "kv": _runs(root / "kv")["sttm"],
        "root": root,
    }


def test_kv_reuse_answers_equal_full_prefill_answers(
    three_per_video: dict[str, Any],
) -> None:
    full, kv = three_per_video["full"], three_per_video["kv"]
    assert [r["id"] for r in kv] == [r["id"] for r in full]
    assert len(kv) == 10 and len({r["video_id"] for r in kv}) == 2
    for a, b in zip(full, kv, strict=True):
        assert b["text"] == a["text"], f"{b['id']}: reuse changed the answer"
        assert b["schedule"] == a["schedule"]
        assert b["n_visual_out"] == a["n_visual_out"]


def test_kv_reuse_records_carry_what_each_answer_computed(
    three_per_video: dict[str, Any],
) -> None:
    from tokenred.adapter import AdapterConfig, create_adapter
    from tokenred.measure import prefix_flops, suffix_flops
    from tokenred.plugins import get_plugin_manager
    from tokenred.registry import Registries

    regs = Registries.from_plugin_manager(get_plugin_manager())
    adapter = create_adapter(regs.models, AdapterConfig(name="tiny"))
    adapter.load()
    arch = adapter.arch
    full, kv = three_per_video["full"], three_per_video["kv"]
    for v in range(2):
        video, alone = kv[5 * v : 5 * v + 5], full[5 * v : 5 * v + 5]
        infos = [r["meta"]["kv_reuse"] for r in video]
        assert [i["index"] for i in infos] == [0, 1, 2, 3, 4]
        assert [i["owns_prefix"] for i in infos] == [True] + [False] * 4
        prefix = [s - infos[0]["question_tokens"] for s in video[0]["schedule"]]
        head = prefix_flops(arch, prefix).total
        for r, i, a in zip(video, infos, alone, strict=True):
            tail = suffix_flops(arch, prefix, i["question_tokens"]).total
            assert i["prefix_flops"] == head and i["question_flops"] == tail
            assert i["prefix_share_flops"] == pytest.approx(head / 5)
            assert i["prefix_share_ms"] == pytest.approx(i["prefix_ms"] / 5)
            assert r["flops"]["prefill"] == tail + (head if i["owns_prefix"] else 0)
            # the causal split is exact: prefix + question == full prefill
            assert head + tail == a["flops"]["prefill"]
        total = sum(r["flops"]["prefill"] for r in video)
        assert total == head + sum(i["question_flops"] for i in infos)
        assert total < sum(a["flops"]["prefill"] for a in alone)
        # latency split: the prefix is timed once, on the answer that built it
        lat = [r["latency_ms"] for r in video]
        assert lat[0]["prefix"]["median"] > 0 and lat[1]["prefix"] is None
        assert lat[0]["prefill"]["median"] == pytest.approx(
            lat[0]["prefix"]["median"] + lat[0]["question_prefill"]["median"]
        )
        assert lat[4]["prefill"] == lat[4]["question_prefill"]
        assert lat[0]["vision"] is not None and lat[1]["vision"] is None
        # the reducer runs inside the prefix prefill, on the repeat's active timer
        assert lat[0]["reducer"]["median"] > 0 and lat[1]["reducer"] is None
        for entry in lat:
            assert entry["e2e"]["median"] > entry["prefill"]["median"]


def test_five_reused_answers_cost_at_most_1_3_full_answers(
    three_per_video: dict[str, Any],
) -> None:
    """Issue 22: the five answers of a video from one reduced prefix compute, summed,
    at most 1.3x the prefill FLOPs of one answer without reuse. The prefix holds the
    system prompt, the reduced video and the instruction every question begins
    with, so each later answer prefills only its question, options and cue."""
    full, kv = three_per_video["full"], three_per_video["kv"]
    for v in range(2):
        video, alone = kv[5 * v : 5 * v + 5], full[5 * v : 5 * v + 5]
        infos = [r["meta"]["kv_reuse"] for r in video]
        assert {i["shared_prompt_tokens"] for i in infos} == {39}, "instruction"
        assert all(i["question_tokens"] < 40 for i in infos)
        total = sum(r["flops"]["prefill"] for r in video)
        for one in alone:
            assert total <= 1.3 * one["flops"]["prefill"], (total, one["id"])


def test_new_weights_at_the_same_path_start_new_runs(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenred.adapter import AdapterConfig
    from tokenred.adapters._runtime import weights_fingerprint
    from tokenred.adapters.tiny import TinyAdapter, assets_dir

    ckpt, root = tmp_path / "ckpt", tmp_path / "runs"
    ckpt.mkdir()
    for f in assets_dir().glob("*.json"):
        if f.name != "training_log.json":
            shutil.copy(f, ckpt / f.name)
    argv = _argv(root, data_root, f"model.path={ckpt}", "measure.baseline=false")
    assert weights_fingerprint(ckpt, 0) == "random-init-seed-0"
    assert main(argv) == 0
    # "Retrain": real weights appear at the same path.
    adapter = TinyAdapter(AdapterConfig(path=str(ckpt), seed=7))
    adapter.load()
    adapter.hf_model.save_pretrained(str(ckpt))
    fingerprint = weights_fingerprint(ckpt, 0)
    assert len(fingerprint) == 16 and fingerprint == weights_fingerprint(ckpt, 3)
    capsys.readouterr()
    assert main(argv) == 0
    assert "0 reused" in capsys.readouterr().err
    manifests = sorted(root.glob("*/*/manifest.json"))
    assert len(manifests) == 2
    weights = {json.loads(m.read_text())["config"]["model_weights"] for m in manifests}
    assert weights == {"random-init-seed-0", fingerprint}
    assert main(argv) == 0  # the same weights again: everything reused
    assert "3 reused" in capsys.readouterr().err


def test_a_run_fires_every_hook_in_order(
    first_run: tuple[Path, int], observer: _Observer
) -> None:
    import inspect

    from tokenred import hookspecs

    specs = {
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "tokenred_spec")
    }
    assert first_run[1] == 0
    fired = [name for name, _ in observer.calls]
    assert specs and set(fired) == specs, "a hook was never fired"
    run_calls = [c for c in observer.calls if not c[0].startswith("register_")]
    per_run = ["before_run", *["after_sample"] * 3, "after_run"]
    assert [name for name, _ in run_calls] == per_run * 2, "two runs, in order"
    for start in (0, len(per_run)):
        (_, (config, manifest)), *samples, (_, store) = run_calls[
            start : start + len(per_run)
        ]
        assert manifest.run_id == store.path.name, "before_run saw another run"
        written = json.loads((store.path / "manifest.json").read_text())["config"]
        assert config.reducer.name == written["reducer"]["name"]
        stored = [r.to_dict() for r in store.records()]
        assert [r.to_dict() for _, r in samples] == stored, "after_sample != records"


def test_reuse_report_compares_the_cost_per_question(
    three_per_video: dict[str, Any],
) -> None:
    from tokenred.report import load_runs
    from tokenred.reuse_report import reuse_frame

    full, kv = three_per_video["full"], three_per_video["kv"]
    frame = reuse_frame(load_runs([three_per_video["root"]]))
    row = frame[frame["reducer"] == "sttm"].iloc[0]
    assert row["questions_per_video"] == 5 and row["kv_reuse"] == 5
    mean = sum(r["flops"]["prefill"] for r in full) / 10
    assert row["flops_full"] == pytest.approx(mean)
    assert row["flops_reuse"] == pytest.approx(
        sum(r["flops"]["prefill"] for r in kv) / 10
    )
    assert row["video_in_answers"] == pytest.approx(
        sum(r["flops"]["prefill"] for r in kv) / 2 / mean
    )
    assert 1 < row["video_in_answers"] <= 1.3
    assert row["same_answers_pct"] == 100.0
    # all questions of a video: five full prefills against one prefix + five
    assert row["video_flops_full"] == pytest.approx(5 * mean)
    assert row["video_flops_reuse"] == pytest.approx(row["video_in_answers"] * mean)
    assert row["accuracy"] == pytest.approx(
        100 * sum(r["prediction"] == r["answer"] for r in full) / 10
    )


@pytest.mark.parametrize(
    ("budget", "needle"),
    [("5000", "exceeds the"), ("0.0001", "rounds to 0 tokens")],
)
def test_a_clamped_budget_is_said_once_per_run(
    tmp_path: Path,
    data_root: Path,
    budget: str,
    needle: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    argv = _argv(tmp_path / "runs", data_root, "data.limit=2")
    argv[argv.index("--budget") + 1] = budget
    with caplog.at_level(logging.WARNING, logger="tokenred.protocol"):
        assert main(argv) == 0
    notes = [r.getMessage() for r in caplog.records if needle in r.getMessage()]
    assert len(notes) == 1, f"one warning per run, got {notes}"
