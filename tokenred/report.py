"""Reports: run stores -> DataFrame -> tables, paired statistics and figures.

``tokenred report RUN...`` reads run directories (or folders holding them), finds
the unreduced run (reducer ``none``) of every (model, dataset) as the baseline, and
writes into the output folder:

* ``summary.csv`` / ``summary.md``: one row per run, in the paper's style (absolute
  values and values relative to the unreduced run), with a 95 % bootstrap CI of the
  accuracy, a paired bootstrap CI of the accuracy difference, agreement with the
  unreduced answers and an exact McNemar test on the discordant answers;
* ``average.csv`` (with a section in ``summary.md``) when several datasets are
  present: the mean of per-dataset relative values, as the paper averages;
* ``acc_vs_ratio`` and ``acc_vs_flops`` as PNG and SVG, the second with a Pareto
  frontier; ``acc_vs_ttft`` (with a frontier) only when every timed run was timed on a
  GPU, or when asked for (``tokenred report --latency``);
* ``reuse.csv`` / ``reuse.md`` when a run used KV reuse or asks several questions
  per video: per-question cost with and without a shared video prefix
  (:mod:`tokenred.reuse_report`).

The Markdown lives in :mod:`tokenred.report_tables` and the figures in
:mod:`tokenred.report_figures`; this module builds the frames they format and
re-exports their public functions. Reports never import models.

Latency measured on a CPU is labelled as CPU latency everywhere, its spread (IQR)
is printed beside its median, and it is not drawn as a latency frontier unless
asked for: CPU timings of a shared machine depend on its load and thread count more
than on the reducer. A run without latency shows "n/a", never an estimate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tokenred.controls import (
    CONTROL_COLUMNS,
    NOT_APPLICABLE,
    mixed_controls,
)
from tokenred.errors import UsageError
from tokenred.measure.stats import bootstrap_ci, paired_stats
from tokenred.reducer import BASELINE_REDUCER
from tokenred.report_figures import (
    FIGURES,
    make_figures,
    method_styles,
    plot_latency,
    remove_stale_figures,
    save_figures,
)
from tokenred.report_tables import (
    SHORT_HEADERS,
    controls_note,
    flops_unit,
    markdown_table,
    metrics_markdown,
    summary_markdown,
    summary_table_markdown,
)
from tokenred.results import RunStore, SampleRecord, unusable_note

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One run directory, loaded."""

    path: Path
    manifest: dict[str, Any]
    records: list[SampleRecord]

    def get(self, dotted: str, default: Any = None) -> Any:
        """Return ``config[a][b]`` for ``"a.b"`` from the manifest's config."""
        node: Any = self.manifest.get("config", {})
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def info(self) -> dict[str, Any]:
        """Return the identifying columns of this run."""
        reducer = str(self.get("reducer.name", "?"))
        stage = str(self.get("insertion.stage", "pre_llm"))
        layer = int(self.get("insertion.layer", 0) or 0)
        ratio, tokens = self.get("budget.ratio"), self.get("budget.tokens")
        flops = self.get("budget.flops")
        if reducer == BASELINE_REDUCER:
            budget = "100%"
        elif flops is not None:
            budget = f"{100 * float(flops):g}% FLOPs"
        elif ratio is not None:
            budget = f"{100 * float(ratio):g}%"
        else:
            budget = f"{tokens} tok" if tokens is not None else "?"
        method = "unreduced" if reducer == BASELINE_REDUCER else reducer
        if reducer != BASELINE_REDUCER and stage == "in_llm":
            method = f"{reducer} (K={layer})"
        from tokenred.reuse_report import KV_SUFFIX, reuse_state

        kv_reuse = reuse_state(self)["applied"]
        if kv_reuse:
            method += KV_SUFFIX
        device = self.manifest.get("device", {})
        return {
            "run_id": self.manifest.get("run_id", self.path.name),
            "model": str(self.get("model.name", "?")),
            "dataset": str(self.get("data.name", "?")),
            "reducer": reducer,
            "method": method,
            "stage": stage,
            "layer": layer,
            "budget": budget,
            "device": device.get("kind", "?"),
            "device_name": device.get("name", ""),
            "random_weights": bool(self.manifest.get("random_weights")),
            "kv_reuse": kv_reuse,
            **self.controls(),
        }

    def controls(self) -> dict[str, Any]:
        """Return the run's study-level controls as display strings.

        From the manifest's ``controls``; runs recorded before controls were
        stored fall back to their config (an unset policy there meant the
        reducer's preferred one).
        """
        stored = self.manifest.get("controls") or {}
        unreduced = self.get("reducer.name") == BASELINE_REDUCER
        frames = self.get("data.frames.num_frames")
        fallback = {
            "positions": self.get("insertion.positions") or "reducer's",
            "stage": self.get("insertion.stage") or "pre_llm",
            "layer": self.get("insertion.layer") or 0,
            "frames": frames if frames is not None else "?",
            "dtype": self.get("model.dtype", "?"),
            "attention": self.get("model.attn_implementation", "?"),
            "threads": self.get("measure.threads", "?"),
        }
        out: dict[str, Any] = {}
        for key in CONTROL_COLUMNS:
            value = stored.get(key, fallback[key])
            if unreduced and key in ("positions", "stage", "layer"):
                value = NOT_APPLICABLE
            out[f"ctl_{key}"] = str(value)
        out["ctl_stored"] = bool(stored)
        return out


REPORT_FILES = ("summary.csv", "summary.md")
"""Files that mark a folder as a report written by :func:`main_report`."""


def is_report_dir(path: Path) -> bool:
    """Whether ``path`` is a report folder (so ``runs/<study>/*`` may include it)."""
    return path.is_dir() and any((path / name).is_file() for name in REPORT_FILES)


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Return run directories: the paths themselves or run folders below them.

    Report folders among ``paths`` are skipped, so ``tokenred report
    runs/<study>/*`` works again after its first call wrote ``runs/<study>/report``;
    so are stray files a shell glob picked up.

    Raises:
        UsageError: When a folder holds no run, or no path holds any.
    """
    found: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / RunStore.SAMPLES).exists() or (path / RunStore.MANIFEST).exists():
            found.append(path)
            continue
        below = sorted({p.parent for p in path.glob(f"**/{RunStore.MANIFEST}")})
        if not below and (is_report_dir(path) or path.is_file()):
            skipped.append(path)
            continue
        if not below:
            msg = (
                f"no run directory found at {path}; pass folders that contain "
                f"{RunStore.MANIFEST} and {RunStore.SAMPLES} (e.g. runs/<run_id>)"
            )
            raise UsageError(msg)
        found.extend(below)
    if skipped:
        log.info("skipped %s (not run directories)", ", ".join(map(str, skipped)))
    if not found:
        msg = (
            f"no run directory found in {', '.join(map(str, paths))}; pass folders "
            f"that contain {RunStore.MANIFEST} (e.g. runs/<study>/*)"
        )
        raise UsageError(msg)
    return list(dict.fromkeys(found))


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Load every run found by :func:`find_run_dirs`."""
    runs = []
    for path in find_run_dirs(paths):
        store = RunStore(path)
        runs.append(Run(path, store.read_manifest() or {}, store.records()))
    return runs


def _median(latency: dict[str, Any], phase: str) -> float | None:
    entry = latency.get(phase)
    value = entry.get("median") if isinstance(entry, dict) else None
    return float(value) if value is not None else None


def samples_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Return one row per (run, sample) with the measured values."""
    rows = []
    for run in runs:
        info = run.info()
        for r in run.records:
            n_in, n_out = r.n_visual_in, r.n_visual_out
            rows.append(
                {
                    **info,
                    "id": r.id,
                    "status": r.status,
                    "prediction": r.prediction,
                    "correct": r.correct,
                    "n_in": n_in,
                    "n_out": n_out,
                    "ratio": n_out / n_in if n_in and n_out is not None else None,
                    "eq_tokens": r.equivalent_tokens,
                    "flops_prefill": r.flops.prefill,
                    "flops_ratio": r.flops.prefill_ratio,
                    "flops_vision": r.flops.vision,
                    "ttft_ms": _median(r.latency_ms, "prefill"),
                    "e2e_ms": _median(r.latency_ms, "e2e"),
                    "peak_bytes": r.memory.peak_bytes,
                }
            )
    return pd.DataFrame(rows)


def _mean(series: pd.Series) -> float:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def _median_iqr(series: pd.Series) -> tuple[float, float]:
    """Return the median and the IQR (inclusive quartiles) of the non-null values.

    The quartiles are numpy's linear ones, the inclusive method that
    :func:`tokenred.measure.latency.summarize` uses for the repeats of one sample.
    """
    values = pd.to_numeric(series, errors="coerce").dropna().to_numpy(dtype=float)
    if not values.size:
        return math.nan, math.nan
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return float(med), float(q3 - q1)


def _rel(value: float, base: float) -> float:
    return 100 * value / base if base and not math.isnan(base) else math.nan


_ID_COLUMNS = ("model", "dataset", "method", "reducer", "stage", "layer", "budget",
               "device", "device_name", "random_weights", "run_id",
               "ctl_stored", *(f"ctl_{k}" for k in CONTROL_COLUMNS))  # fmt: skip
_RELATIVE = {"accuracy": "rel_accuracy", "flops_prefill": "rel_flops",
             "ttft_ms": "rel_ttft", "eq_tokens": "rel_eq_tokens"}  # fmt: skip


def _scored(group: pd.DataFrame) -> pd.DataFrame:
    """Return the ok samples whose correctness is known."""
    return group[(group["status"] == "ok") & group["correct"].notna()]


def _absolute(group: pd.DataFrame) -> dict[str, Any]:
    """Summarise one run's samples on their own."""
    ok = group[group["status"] == "ok"]
    correct = _scored(group)["correct"].astype(float).to_numpy()
    low, high = bootstrap_ci(correct)
    row: dict[str, Any] = {k: group.iloc[0][k] for k in _ID_COLUMNS}
    row.update(n=len(ok), errors=int((group["status"] != "ok").sum()))
    row["accuracy"] = 100 * float(correct.mean()) if correct.size else math.nan
    row.update(acc_ci_low=100 * low, acc_ci_high=100 * high)
    row["kept_tokens"] = _mean(ok["n_out"])
    row["kept_ratio"] = 100 * _mean(ok["ratio"])  # mean of per-sample ratios (R.NV)
    for col in ("eq_tokens", "flops_prefill", "flops_vision", "peak_bytes"):
        row[col] = _mean(ok[col])
    # Achieved prefill FLOPs over each sample's own unreduced prefill (what a
    # budget.flops budget targets): mean, and the range over samples.
    achieved = pd.to_numeric(ok["flops_ratio"], errors="coerce").dropna()
    row["flops_pct"] = 100 * float(achieved.mean()) if len(achieved) else math.nan
    row["flops_pct_min"] = 100 * float(achieved.min()) if len(achieved) else math.nan
    row["flops_pct_max"] = 100 * float(achieved.max()) if len(achieved) else math.nan
    # Latency: median over samples of the per-sample medians, with its IQR (the
    # spread a busy machine adds shows up here); the mean is the paper's figure.
    for col in ("ttft_ms", "e2e_ms"):
        stem = col.removesuffix("_ms")
        row[col], row[f"{stem}_iqr_ms"] = _median_iqr(ok[col])
        row[f"{stem}_mean_ms"] = _mean(ok[col])
    return row


def _run_row(group: pd.DataFrame, base: pd.DataFrame | None) -> dict[str, Any]:
    """Summarise one run and compare it with the baseline run (paired by id)."""
    row = _absolute(group)
    if base is None:
        return row
    base_row = _absolute(base)
    for col, out in _RELATIVE.items():
        row[out] = _rel(row[col], base_row[col])
    if base_row["device"] != row["device"]:
        row["rel_ttft"] = math.nan  # CPU and GPU timings are never compared
    pairs = _scored(group).merge(_scored(base), on="id", suffixes=("", "_b"))
    same = pairs["prediction"].fillna("") == pairs["prediction_b"].fillna("")
    row["paired_n"] = len(pairs)
    row["agreement"] = 100 * float(same.mean()) if len(pairs) else math.nan
    run_c = pairs["correct"].astype(float).to_numpy()
    row.update(paired_stats(run_c, pairs["correct_b"].astype(float).to_numpy()))
    return row


def summary_frame(samples: pd.DataFrame) -> pd.DataFrame:
    """Return one row per run, with relative values and paired statistics."""
    rows = []
    for (model, dataset), group in samples.groupby(["model", "dataset"], sort=True):
        base_runs = group[group["reducer"] == BASELINE_REDUCER]
        if (base_runs["kv_reuse"] == 0).any():  # full prefills are the reference
            base_runs = base_runs[base_runs["kv_reuse"] == 0]
        base_id = None
        if len(base_runs):
            sizes = base_runs.groupby("run_id").size().sort_values(ascending=False)
            base_id = sizes.index[0]
            if len(sizes) > 1:
                msg = "%s/%s has %d unreduced runs; using %s"
                log.warning(msg, model, dataset, len(sizes), base_id)
        base = group[group["run_id"] == base_id] if base_id is not None else None
        for _, run in group.groupby("run_id", sort=False):
            rows.append(_run_row(run, base))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if "ctl_positions" in table and "positions" in mixed_controls(
        [{"positions": p} for p in table["ctl_positions"]]
    ):
        # A positions ablation: name the policy so figures tell the runs apart.
        reduced = table["ctl_positions"] != NOT_APPLICABLE
        table.loc[reduced, "method"] = (
            table.loc[reduced, "method"]
            + " ["
            + table.loc[reduced, "ctl_positions"]
            + "]"
        )
    table["_order"] = table["reducer"].ne(BASELINE_REDUCER)
    table = table.sort_values(
        ["model", "dataset", "_order", "method", "kept_ratio"],
        ascending=[True, True, True, True, False],
    )
    return table.drop(columns="_order").reset_index(drop=True)


def average_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Average relative values over datasets (mean of per-dataset ratios)."""
    if (
        summary.empty
        or summary["dataset"].nunique() < 2
        or "rel_accuracy" not in summary
    ):
        return pd.DataFrame()
    keys = ["model", "method", "budget", "device"]
    cols = ["rel_accuracy", "rel_ttft", "rel_flops", "kept_ratio", "accuracy"]
    avg = summary.groupby(keys, sort=True)[cols].mean().reset_index()
    avg["datasets"] = summary.groupby(keys, sort=True)["dataset"].nunique().to_numpy()
    return avg


# ---- entry points


def metrics_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Return one row per run with the dataset's own metrics (``metrics.json``).

    These are the benchmark's official aggregations (per task, per duration,
    all-four-tries, ...) written by the runner with the dataset's scorer.
    """
    rows = []
    for run in runs:
        metrics = RunStore(run.path).read_metrics()
        if metrics is None:
            continue
        info = run.info()
        rows.append(
            {
                "model": info["model"],
                "dataset": info["dataset"],
                "method": info["method"],
                "budget": info["budget"],
                **metrics,
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # The summary's order: unreduced first, then by method and falling budget.
    amount = frame["budget"].str.extract(r"([0-9.]+)")[0].astype(float)
    order = frame.assign(_base=frame["method"] != "unreduced", _amount=-amount)
    order = order.sort_values(["model", "dataset", "_base", "method", "_amount"])
    return order.drop(columns=["_base", "_amount"]).reset_index(drop=True)


def main_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    latency: bool | None = None,
) -> Path:
    """Write the report of ``run_dirs`` into ``out_dir`` and return ``out_dir``.

    Args:
        run_dirs: Run directories, or folders holding them (searched recursively).
        out_dir: Output folder; default ``report`` next to the first run folder.
        latency: Draw ``acc_vs_ttft``: True always, False never, None only for
            runs timed on a GPU (:func:`plot_latency`). A figure not drawn is
            removed from ``out_dir``, so no stale latency figure stays beside the
            new tables.

    Raises:
        UsageError: No run directory, or no records in any of them.
    """
    runs = load_runs(run_dirs)
    samples = samples_frame(runs)
    if samples.empty:
        msg = f"the runs in {', '.join(map(str, run_dirs))} hold no sample records yet"
        note = unusable_note([r.path for r in runs])
        if note:
            msg = msg.replace("no sample records yet", f"no valid records: {note}")
        raise UsageError(msg)
    out = Path(out_dir) if out_dir is not None else runs[0].path.parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_frame(samples)
    average = average_frame(summary)
    summary.to_csv(out / "summary.csv", index=False)
    if not average.empty:
        average.to_csv(out / "average.csv", index=False)
    (out / "summary.md").write_text(
        summary_markdown(summary, average), encoding="utf-8"
    )
    metrics = metrics_frame(runs)
    if not metrics.empty:
        metrics.to_csv(out / "metrics.csv", index=False)
        (out / "metrics.md").write_text(
            "# Dataset metrics per run\n\n" + metrics_markdown(metrics),
            encoding="utf-8",
        )
    from tokenred.reuse_report import (
        REUSE_FILE,
        reuse_frame,
        reuse_markdown,
        wants_reuse_table,
    )

    if wants_reuse_table(runs):
        reuse = reuse_frame(runs)
        reuse.to_csv(out / f"{REUSE_FILE}.csv", index=False)
        (out / f"{REUSE_FILE}.md").write_text(reuse_markdown(reuse), encoding="utf-8")
    figures = make_figures(summary, latency)
    save_figures(figures, out)
    remove_stale_figures(out, list(figures))
    log.info("report of %d runs written to %s", len(runs), out)
    return out


def summary_table(stores: Sequence[RunStore | str | Path]) -> str:
    """Return a short Markdown table of runs, for the runner to print at the end."""
    paths = [s.path if isinstance(s, RunStore) else Path(s) for s in stores]
    if not paths:
        return "(no records)\n"
    runs = load_runs(paths)
    samples = samples_frame(runs)
    if samples.empty:
        return "(no records)\n"
    summary = summary_frame(samples)
    table = controls_note(summary) + summary_table_markdown(summary, SHORT_HEADERS)
    breakdown = metrics_markdown(metrics_frame(runs), breakdown_only=True)
    return table + ("\n" + breakdown if breakdown else "")


__all__ = [
    "FIGURES",
    "Run",
    "average_frame",
    "controls_note",
    "find_run_dirs",
    "flops_unit",
    "is_report_dir",
    "load_runs",
    "main_report",
    "make_figures",
    "markdown_table",
    "method_styles",
    "metrics_frame",
    "metrics_markdown",
    "plot_latency",
    "samples_frame",
    "save_figures",
    "summary_frame",
    "summary_markdown",
    "summary_table",
]
