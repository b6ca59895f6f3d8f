"""Report on a fake small study: files, statistics and figure readability."""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tokenred.errors import UsageError
from tokenred.measure.stats import bootstrap_ci, paired_stats, pareto_front
from tokenred.report import (
    load_runs,
    main_report,
    make_figures,
    markdown_table,
    metrics_markdown,
    plot_latency,
    samples_frame,
    summary_frame,
    summary_table,
)
from tokenred.results import (
    FlopsRecord,
    MemoryRecord,
    RunManifest,
    RunStore,
    SampleRecord,
    run_id,
)

N = 40
LETTERS = "ABCD"


def _config(
    reducer: str,
    ratio: float | None,
    dataset: str = "synthetic",
    stage: str = "pre_llm",
    layer: int = 0,
) -> dict[str, Any]:
    return {
        "model": {"name": "tiny_ov"},
        "data": {"name": dataset},
        "reducer": {"name": reducer},
        "budget": {"ratio": ratio, "tokens": None},
        "insertion": {"stage": stage, "layer": layer},
        "output": {"root": "x"},
    }


def _write_run(
    root: Path,
    cfg: dict[str, Any],
    acc: float,
    keep: float,
    device: str = "cpu",
    latency: bool = True,
    prefill_ms: list[float] | None = None,
) -> Path:
    """Write a run whose sample i is correct with a fixed pattern of rate ``acc``."""
    rng = np.random.default_rng(zlib.crc32(f"{cfg['reducer']['name']}{keep}".encode()))
    store = RunStore.for_config(root, cfg)
    manifest = RunManifest(
        run_id=run_id(cfg),
        config=cfg,
        random_weights=False,
        device={"kind": device, "name": "Tiny CPU"},
    )
    n_in = 200
    with store:
        store.write_manifest(manifest)
        for i in range(N):
            correct = rng.random() < acc
            answer = LETTERS[i % 4]
            pred = answer if correct else LETTERS[(i + 1) % 4]
            n_out = round(n_in * keep)
            store.append(
                SampleRecord(
                    id=f"q{i}",
                    video_id=f"v{i // 2}",
                    prediction=pred,
                    answer=answer,
                    correct=correct,
                    n_visual_in=n_in,
                    n_visual_out=n_out,
                    equivalent_tokens=float(n_out),
                    flops=FlopsRecord(prefill=int(1e9 * (0.2 + keep)), vision=10**8),
                    latency_ms={
                        "prefill": {
                            "median": prefill_ms[i] if prefill_ms else 10 + 40 * keep,
                            "n": 3,
                        }
                    }
                    if latency
                    else {"prefill": None},
                    memory=MemoryRecord(peak_bytes=10**6),
                )
            )
        store.append(SampleRecord.failed("q_err", "v_err", "decode failed"))
    return store.path


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    _write_run(root, _config("none", None), acc=0.8, keep=1.0)
    for ratio, acc in ((0.5, 0.75), (0.25, 0.6)):
        _write_run(root, _config("random", ratio), acc=acc, keep=ratio)
        _write_run(root, _config("sttm", ratio), acc=acc + 0.05, keep=ratio * 0.9)
    _write_run(
        root, _config("fastv", 0.25, stage="in_llm", layer=2), acc=0.7, keep=0.25
    )
    return root


def test_report_writes_all_files(study: Path, tmp_path: Path) -> None:
    out = main_report([study], tmp_path / "report", latency=True)
    names = {p.name for p in out.iterdir()}
    for stem in ("acc_vs_ratio", "acc_vs_ttft", "acc_vs_flops"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert {"summary.csv", "summary.md"} <= names
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6, "one row per run"
    assert rows[0]["method"] == "unreduced", "the baseline comes first"
    md = (out / "summary.md").read_text()
    assert "| Model |" in md and "McNemar p" in md and "ms CPU (IQR " in md
    assert md.count("\n| tiny_ov |") == 6
    assert "fastv (K=2)" in md


def test_report_files_are_byte_identical_on_rerun(study: Path, tmp_path: Path) -> None:
    # Reports are committed (docs/study/): rerunning must not churn them.
    for run in study.iterdir():
        (run / "metrics.json").write_text('{"accuracy": 50.0, "num_scored": 4.0}')
    first = main_report([study], tmp_path / "a")
    second = main_report([study], tmp_path / "b")
    for name in ("acc_vs_ratio.svg", "acc_vs_flops.png", "summary.md", "metrics.md"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    svg = (first / "acc_vs_ratio.svg").read_text()
    assert "<dc:date>" not in svg, "no timestamp in committed figures"
    rows = (first / "metrics.md").read_text().splitlines()[4:]
    methods = [r.split(" | ")[0].lstrip("| ") for r in rows]
    budgets = [r.split(" | ")[1] for r in rows]
    assert methods[0] == "unreduced", "the baseline comes first, as in the summary"
    assert methods[1:] == sorted(methods[1:]), methods
    assert budgets[methods.index("random") :][:2] == ["50%", "25%"], budgets


def test_summary_values_against_hand_computation(study: Path) -> None:
    runs = load_runs([study])
    samples = samples_frame(runs)
    table = summary_frame(samples).set_index("run_id")
    base_id = run_id(_config("none", None))
    rnd_id = run_id(_config("random", 0.25))
    ok = samples[samples["status"] == "ok"]
    base = ok[ok["run_id"] == base_id].set_index("id")
    rnd = ok[ok["run_id"] == rnd_id].set_index("id")
    row = table.loc[rnd_id]
    assert row["n"] == N and row["errors"] == 1
    assert row["accuracy"] == pytest.approx(100 * rnd["correct"].mean())
    assert row["rel_accuracy"] == pytest.approx(
        100 * rnd["correct"].mean() / base["correct"].mean()
    )
    assert row["kept_ratio"] == pytest.approx(25.0)
    assert row["rel_flops"] == pytest.approx(100 * (0.2 + 0.25) / 1.2)
    assert row["rel_ttft"] == pytest.approx(100 * 20 / 50)
    b = int((base["correct"] & ~rnd["correct"]).sum())
    c = int((~base["correct"] & rnd["correct"]).sum())
    assert (row["mcnemar_b"], row["mcnemar_c"]) == (b, c)
    assert row["mcnemar_p"] == pytest.approx(stats.binomtest(b, b + c).pvalue)
    agree = (rnd["prediction"] == base["prediction"]).mean()
    assert row["agreement"] == pytest.approx(100 * agree)
    assert row["acc_ci_low"] <= row["accuracy"] <= row["acc_ci_high"]
    assert row["delta_acc_low"] <= row["accuracy"] - table.loc[base_id, "accuracy"]
    assert table.loc[base_id, "rel_accuracy"] == pytest.approx(100.0)


def test_figures_are_readable(study: Path) -> None:
    summary = summary_frame(samples_frame(load_runs([study])))
    figs = make_figures(summary, latency=True)
    assert set(figs) == {"acc_vs_ratio", "acc_vs_ttft", "acc_vs_flops"}
    for name, fig in figs.items():
        ax = fig.axes[0]
        assert ax.get_ylabel() == "Accuracy (%)"
        assert ax.get_xlabel() and "(" in ax.get_xlabel(), "x label carries its unit"
        assert ax.get_title() == "tiny_ov · synthetic"
        assert fig.get_suptitle()
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels[0] == "unreduced", "the baseline leads the legend"
        assert {"random", "sttm", "fastv (K=2)"} <= set(labels)
        assert ("Pareto frontier" in labels) == (name != "acc_vs_ratio")
    assert "CPU" in figs["acc_vs_ttft"].axes[0].get_xlabel()
    assert "CPU latency" in figs["acc_vs_ttft"].get_suptitle()
    assert "GFLOP" in figs["acc_vs_flops"].axes[0].get_xlabel()


def _method_lines(fig: Any) -> dict[str, tuple[str, str]]:
    """``method -> (colour, marker)`` of the plotted lines of a figure."""
    from matplotlib.colors import to_hex

    out = {}
    for line in fig.axes[0].get_lines():
        label = line.get_label()
        if not label.startswith("_") and label != "Pareto frontier":
            out[label] = (to_hex(line.get_color()), str(line.get_marker()))
    return out


def test_each_method_keeps_its_style_across_figures(study: Path) -> None:
    summary = summary_frame(samples_frame(load_runs([study])))
    figs = make_figures(summary)
    styles = [_method_lines(fig) for fig in figs.values()]
    assert set(styles[0]) == {"unreduced", "random", "sttm", "fastv (K=2)"}
    assert all(s == styles[0] for s in styles), styles
    assert len(set(styles[0].values())) == len(styles[0]), "styles are distinct"
    # A report without some method still gives the others the same style when
    # the same methods are present: styles depend on the method names only.
    again = make_figures(summary.iloc[::-1].reset_index(drop=True))
    assert _method_lines(again["acc_vs_flops"]) == styles[0]


def test_accuracy_points_carry_their_ci(study: Path) -> None:
    summary = summary_frame(samples_frame(load_runs([study])))
    ax = make_figures(summary)["acc_vs_ratio"].axes[0]
    segments = [seg for coll in ax.collections for seg in coll.get_segments()]
    spans = sorted((round(s[0][1], 6), round(s[1][1], 6)) for s in segments)
    expected = sorted(
        (round(lo, 6), round(hi, 6))
        for lo, hi in zip(summary["acc_ci_low"], summary["acc_ci_high"], strict=True)
    )
    assert spans == expected, "one vertical 95% CI bar per run"


def test_points_at_equal_x_stay_apart(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _write_run(root, _config("none", None), acc=0.8, keep=1.0)
    # Two budgets of one method that keep the same tokens, and another method
    # at that same x: three points at one x.
    _write_run(root, _config("sttm", 0.5), acc=0.6, keep=0.3)
    _write_run(root, _config("sttm", 0.3), acc=0.6, keep=0.3)
    _write_run(root, _config("random", 0.3), acc=0.6, keep=0.3)
    summary = summary_frame(samples_frame(load_runs([root])))
    ax = make_figures(summary)["acc_vs_ratio"].axes[0]
    xs = {
        line.get_label(): set(np.round(line.get_xdata(), 6))
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }
    assert xs["sttm"].isdisjoint(xs["random"]), "methods at one x are dodged"
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["30%", "50%"], "same-method points name their budgets"


@pytest.mark.parametrize("datasets", [1, 2])
def test_titles_do_not_overlap(tmp_path: Path, datasets: int) -> None:
    root = tmp_path / "runs"
    names = ("a_dataset_with_a_rather_long_name", "another_long_dataset_name")
    for ds in names[:datasets]:
        _write_run(root, _config("none", None, ds), acc=0.8, keep=1.0)
        _write_run(root, _config("random", 0.5, ds), acc=0.6, keep=0.5)
    summary = summary_frame(samples_frame(load_runs([root])))
    summary["random_weights"] = True  # the longest suptitle: "... (random weights)"
    for name, fig in make_figures(summary).items():
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
        canvas.draw()  # constrained layout places the titles
        renderer = canvas.get_renderer()
        sup = fig._suptitle.get_window_extent(renderer)
        figbox = fig.bbox
        assert figbox.x0 <= sup.x0 and sup.x1 <= figbox.x1, f"{name}: title clipped"
        boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
        for i, box in enumerate(boxes):
            assert not box.overlaps(sup), f"{name}: panel title under the suptitle"
            assert figbox.x0 <= box.x0 and box.x1 <= figbox.x1, name
            for other in boxes[i + 1 :]:
                assert not box.overlaps(other), f"{name}: panel titles overlap"


def test_missing_latency_is_never_estimated(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _write_run(root, _config("none", None), acc=0.8, keep=1.0, latency=False)
    _write_run(root, _config("random", 0.5), acc=0.7, keep=0.5, latency=False)
    out = tmp_path / "rep"
    out.mkdir()
    for ext in ("png", "svg"):  # a figure left over from an earlier report
        (out / f"acc_vs_ttft.{ext}").write_text("stale")
    main_report([root], out)
    md = (out / "summary.md").read_text()
    assert "ms CPU" not in md and "n/a" in md
    summary = summary_frame(samples_frame(load_runs([root])))
    assert summary["ttft_ms"].isna().all()
    assert "acc_vs_ttft" not in make_figures(summary), "no figure of an unmeasured x"
    assert "acc_vs_ttft" not in make_figures(summary, latency=True), "even if asked"
    names = {p.name for p in out.iterdir()}
    assert not any(n.startswith("acc_vs_ttft") for n in names), names
    assert {"acc_vs_ratio.svg", "acc_vs_flops.png"} <= names


def test_report_of_a_glob_twice(study: Path) -> None:
    # `tokenred report runs/<study>/*`: the second call's glob holds report/.
    first = main_report(sorted(study.iterdir()))
    assert first == study / "report"
    again = main_report(sorted(study.iterdir()))
    assert again == first and (first / "summary.md").is_file()
    with pytest.raises(UsageError, match="no run directory found"):
        main_report([first])


def test_cpu_latency_is_not_plotted_unless_asked(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    main_report([study], out, latency=True)
    assert (out / "acc_vs_ttft.svg").is_file()
    main_report([study], out)  # CPU timings: FLOPs are the cost axis
    names = {p.name for p in out.iterdir()}
    assert "acc_vs_flops.svg" in names
    assert not {"acc_vs_ttft.svg", "acc_vs_ttft.png"} & names, "stale figure removed"
    md = (out / "summary.md").read_text()
    assert "ms CPU (IQR " in md, "CPU timings stay in the tables"


def test_gpu_latency_is_plotted_by_default(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _write_run(root, _config("none", None), acc=0.8, keep=1.0, device="cuda")
    _write_run(root, _config("random", 0.5), acc=0.7, keep=0.5, device="cuda")
    summary = summary_frame(samples_frame(load_runs([root])))
    assert plot_latency(summary) and "acc_vs_ttft" in make_figures(summary)
    assert not plot_latency(summary, latency=False)
    _write_run(root, _config("random", 0.25), acc=0.6, keep=0.25)  # one CPU run
    mixed = summary_frame(samples_frame(load_runs([root])))
    assert not plot_latency(mixed), "any CPU-timed run keeps the figure out"


def test_latency_median_and_iqr_over_samples(tmp_path: Path) -> None:
    spread = [float(v) ** 1.5 for v in range(N)]
    cfg = _config("none", None)
    path = _write_run(tmp_path, cfg, acc=0.8, keep=1.0, prefill_ms=spread)
    row = summary_frame(samples_frame(load_runs([path]))).iloc[0]
    q1, med, q3 = np.percentile(spread, [25, 50, 75])
    assert row["ttft_ms"] == pytest.approx(med)
    assert row["ttft_iqr_ms"] == pytest.approx(q3 - q1)
    assert row["ttft_mean_ms"] == pytest.approx(np.mean(spread))


def test_multi_dataset_average_and_summary_table(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    paths = []
    for ds in ("videomme", "mlvu"):
        paths.append(_write_run(root, _config("none", None, ds), acc=0.8, keep=1.0))
        paths.append(_write_run(root, _config("random", 0.5, ds), acc=0.6, keep=0.5))
    out = main_report(paths, tmp_path / "rep")
    avg = pd.read_csv(out / "average.csv")
    assert set(avg["datasets"]) == {2}
    summary = pd.read_csv(out / "summary.csv")
    rnd = summary[summary["reducer"] == "random"]
    expected = rnd["rel_accuracy"].mean()
    got = avg.loc[avg["method"] == "random", "rel_accuracy"].item()
    assert got == pytest.approx(expected), "mean of per-dataset ratios"
    text = summary_table([RunStore(p) for p in paths[:2]])
    assert text.startswith("| Method | Budget |") and "(no records)" not in text
    assert text.count("\n") == 4  # header, rule, two runs


def test_no_runs_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no run directory found"):
        main_report([tmp_path], tmp_path / "rep")


def test_markdown_table_escapes_pipes() -> None:
    text = markdown_table(["a", "b"], [["x|y", 1]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


def test_stats_helpers() -> None:
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)
    low, high = bootstrap_ci(np.array([0, 1] * 20))
    assert low < 0.5 < high
    same = paired_stats(np.array([1, 0, 1]), np.array([1, 0, 1]))
    assert same["mcnemar_p"] == 1.0 and same["delta_acc_low"] == 0.0
    worse = paired_stats(np.zeros(12), np.ones(12))
    assert worse["mcnemar_b"] == 12 and worse["mcnemar_p"] == pytest.approx(2 / 2**12)
    idx = pareto_front(np.array([3.0, 1.0, 2.0, 2.5]), np.array([0.9, 0.5, 0.8, 0.7]))
    assert idx.tolist() == [1, 2, 0]


def test_metrics_table_shows_percentages_and_whole_counts() -> None:
    frame = pd.DataFrame(
        [{"model": "m", "dataset": "d", "method": "x", "budget": "30%",
          "accuracy": 27.5, "num_scored": 40.0, "synthetic/count": 100 / 3}]
    )  # fmt: skip
    md = metrics_markdown(frame)
    assert "| Method | Budget | accuracy | num_scored | synthetic/count |" in md
    assert "| x | 30% | 27.5 | 40 | 33.3 |" in md, md
    assert metrics_markdown(frame, breakdown_only=True).splitlines()[-1] == (
        "| x | 30% | 33.3 |"
    )
