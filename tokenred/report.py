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

Reports never import models. Latency measured on a CPU is labelled as CPU latency
everywhere, its spread (IQR) is printed beside its median, and it is not drawn as a
latency frontier unless asked for: CPU timings of a shared machine depend on its
load and thread count more than on the reducer. A run without latency shows "n/a",
never an estimate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tokenred.controls import (
    CONTROL_COLUMNS,
    NOT_APPLICABLE,
    mixed_controls,
    mixed_warning,
)
from tokenred.errors import UsageError
from tokenred.measure.stats import bootstrap_ci, paired_stats, pareto_front
from tokenred.reducer import BASELINE_REDUCER
from tokenred.results import RunStore, SampleRecord, unusable_note

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FIGURES = ("acc_vs_ratio", "acc_vs_ttft", "acc_vs_flops")


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


# ---- Markdown


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return a GitHub-flavoured Markdown table (no tabulate dependency)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def flops_unit(value: float) -> tuple[float, str]:
    """Return ``(divisor, unit)`` that shows ``value`` as 1 to 999 of a unit."""
    for div, unit in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
        if value >= div:
            return div, unit
    return 1.0, "FLOP"


def _flops_pct(r: pd.Series) -> str:
    """Achieved prefill FLOPs % of unreduced: the mean, and the range if it varies."""
    mean, low, high = (
        r.get(k) for k in ("flops_pct", "flops_pct_min", "flops_pct_max")
    )
    text = _num(mean)
    if text != "n/a" and _num(low) != _num(high):
        text += f" ({_num(low)}-{_num(high)})"
    return text


def _cells(r: pd.Series, div: float, unit: str) -> dict[str, str]:
    """Format one summary row's cells, keyed by column header."""
    device = "CPU" if r["device"] == "cpu" else "GPU"
    ci = f"[{_num(r['acc_ci_low'])}, {_num(r['acc_ci_high'])}]"
    ttft = _num(r["ttft_ms"])
    if ttft != "n/a":
        ttft = f"{ttft} ms {device} (IQR {_num(r.get('ttft_iqr_ms'))})"
    return {
        "Model": r["model"],
        "Dataset": r["dataset"],
        "Method": r["method"],
        "Budget": r["budget"],
        "N": str(r["n"]),
        "Errors": str(r["errors"]),
        "Acc %": _num(r["accuracy"]),
        "Acc % [95% CI]": f"{_num(r['accuracy'])} {ci}",
        "R.Acc": _num(r.get("rel_accuracy")),
        "Kept tokens": _num(r["kept_tokens"], "{:,.0f}"),
        "Kept (ratio)": f"{_num(r['kept_tokens'], '{:,.0f}')} "
        f"({_num(r['kept_ratio'])}%)",
        "Eq. tokens": _num(r["eq_tokens"], "{:,.0f}"),
        "Prefill FLOPs": f"{_num(r['flops_prefill'] / div, '{:.3g}')} {unit}",
        "R.FLOPs": _num(r.get("rel_flops")),
        "FLOPs %": _flops_pct(r),
        "TTFT": ttft,
        "R.TTFT": _num(r.get("rel_ttft")),
        "Agree %": _num(r.get("agreement")),
        "McNemar p": _num(r.get("mcnemar_p"), "{:.3g}"),
    }


MD_HEADERS = ("Model", "Dataset", "Method", "Budget", "N", "Acc % [95% CI]", "R.Acc",
              "Kept (ratio)", "Eq. tokens", "Prefill FLOPs", "FLOPs %", "R.FLOPs",
              "TTFT", "R.TTFT", "Agree %", "McNemar p")  # fmt: skip
SHORT_HEADERS = ("Method", "Budget", "N", "Errors", "Acc %", "Kept tokens",
                 "Eq. tokens", "Prefill FLOPs", "FLOPs %", "TTFT")  # fmt: skip
AVG_COLUMNS = {"R.Acc": "rel_accuracy", "R.TTFT": "rel_ttft", "R.FLOPs": "rel_flops",
               "Kept %": "kept_ratio"}  # fmt: skip
NOTES = (
    "R.* = percent of the unreduced run (reducer `none`) of the same model and "
    "dataset. Kept ratio = mean over samples of kept/input visual tokens. "
    "Eq. tokens = visual tokens averaged over decoder layers.",
    "Prefill FLOPs are analytic (causal attention, matmuls only; see "
    "docs/measuring.md). FLOPs % = each sample's prefill FLOPs over its own "
    "unreduced prefill, averaged (range over samples in brackets when it varies). "
    "TTFT = median over samples of per-sample median prefill "
    "times, with the interquartile range (IQR) of those medians; 'CPU' marks CPU "
    "timings, which are not GPU numbers; n/a = not measured.",
    "McNemar: exact binomial test on the answers where exactly one of the run and "
    "the unreduced run is correct. Agree = same predicted letter as unreduced.",
)


def _controls(summary: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """Return the controls that differ among the rows, and those that do not.

    The unreduced run's ``-`` (it reduces nothing) neither differs nor counts.
    """
    rows = [
        {k: r.get(f"ctl_{k}") for k in CONTROL_COLUMNS} for _, r in summary.iterrows()
    ]
    mixed = mixed_controls(rows)
    same: dict[str, str] = {}
    for key in CONTROL_COLUMNS:
        values = [str(r[key]) for r in rows if str(r[key]) not in ("None", "-", "?")]
        if key not in mixed and values:
            same[key] = values[0]
    return mixed, same


def controls_note(summary: pd.DataFrame) -> str:
    """Return the line(s) that state a table's controls before it.

    One ``controls:`` line with the values every reduced row shares, and, when
    rows differ in a control, the one warning line (those controls are then
    columns of the table).
    """
    if summary.empty or not summary.get("ctl_stored", pd.Series()).any():
        return ""  # runs recorded before controls were stored: nothing to state
    mixed, same = _controls(summary)
    lines = []
    if same:
        lines.append(
            "controls: "
            + " | ".join(f"{CONTROL_COLUMNS[k]} {v}" for k, v in same.items())
        )
    if mixed:
        lines.append(mixed_warning(mixed))
    return "".join(f"{line}\n" for line in lines)


def _table(summary: pd.DataFrame, headers: Sequence[str]) -> str:
    flops = summary["flops_prefill"]
    div, unit = flops_unit(float(flops.max()) if flops.notna().any() else 1.0)
    mixed = _controls(summary)[0] if "ctl_positions" in summary else []
    headers = list(headers)
    # Controls in which the rows differ become columns right after the method.
    at = headers.index("Method") + 1
    headers[at:at] = [CONTROL_COLUMNS[k] for k in mixed]
    rows = []
    for _, r in summary.iterrows():
        cells = _cells(r, div, unit)
        cells.update({CONTROL_COLUMNS[k]: str(r[f"ctl_{k}"]) for k in mixed})
        rows.append([cells[h] for h in headers])
    return markdown_table(headers, rows)


def summary_markdown(summary: pd.DataFrame, average: pd.DataFrame | None = None) -> str:
    """Return the Markdown report (main table, average table, notes)."""
    note = controls_note(summary)
    parts = ["# tokenred report\n\n"]
    if note:
        parts.append(note.replace("\n", "\n\n"))
    parts.append(_table(summary, MD_HEADERS))
    if average is not None and not average.empty:
        parts.append("\n## Average over datasets (mean of per-dataset ratios)\n\n")
        headers = ["Model", "Method", "Budget", "Datasets", *AVG_COLUMNS]
        rows = [
            [r["model"], r["method"], r["budget"], str(r["datasets"])]
            + [_num(r[col]) for col in AVG_COLUMNS.values()]
            for _, r in average.iterrows()
        ]
        parts.append(markdown_table(headers, rows))
    notes = list(NOTES)
    if summary["random_weights"].any():
        notes.append("**Some runs use random weights: their accuracy is meaningless.**")
    parts.append("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return "".join(parts)


# ---- figures

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")
"""Marker cycle of :func:`method_styles` (the colour cycle is matplotlib's tab10)."""
DODGE = 0.02
"""Half-width, as a fraction of the x range, over which methods sharing an x spread."""


def method_styles(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Return one ``(colour, marker)`` per method, the same in every figure.

    The unreduced run comes first (black circles), the others in sorted order, so a
    method keeps its style across the figures of a report whatever each figure
    happens to show.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = [to_hex(c) for c in colormaps["tab10"].colors]  # type: ignore[attr-defined]
    palette.remove(to_hex("tab:gray"))  # kept apart from the Pareto frontier's grey
    ordered = sorted(set(methods), key=lambda m: (m != "unreduced", m))
    styles: dict[str, tuple[str, str]] = {}
    others = [m for m in ordered if m != "unreduced"]
    if "unreduced" in ordered:
        styles["unreduced"] = ("#000000", "o")
    for i, method in enumerate(others):
        styles[method] = (palette[i % len(palette)], MARKERS[(i + 1) % len(MARKERS)])
    return styles


def _dodged(data: pd.DataFrame, x: str, order: Sequence[str]) -> pd.Series:
    """Return ``data[x]`` with points of different methods at one x spread apart.

    Points of several methods at the same x (e.g. every reducer at exactly 50 %)
    would hide each other's markers and error bars; each method gets a fixed slot
    within +-:data:`DODGE` of the x range. Points alone at their x stay exact.
    """
    values = data[x].astype(float)
    span = float(values.max() - values.min()) or abs(float(values.max())) or 1.0
    key = (values / (span * 1e-3)).round()
    methods_at = data.groupby(key)["method"].transform("nunique")
    present = [m for m in order if m in set(data["method"])]
    if len(present) < 2:
        return values
    slot = data["method"].map({m: i for i, m in enumerate(present)}).astype(float)
    offset = (slot / (len(present) - 1) - 0.5) * 2 * DODGE * span
    return values.where(methods_at < 2, values + offset)


def _label_close_budgets(ax: Axes, data: pd.DataFrame, xs: pd.Series) -> None:
    """Name the budget of points of one method that share (almost) one x.

    A reducer that keeps fewer tokens than its budget (STTM's thresholds) can land
    several budgets on the same x; labels keep those points apart.
    """
    span = float(xs.max() - xs.min()) or 1.0
    for _, group in data.groupby("method", sort=True):
        gx = xs[group.index]
        for _, close in group.groupby((gx / (0.02 * span)).round(), sort=True):
            if len(close) < 2:
                continue
            for rank, (idx, row) in enumerate(close.iterrows()):
                ax.annotate(
                    str(row["budget"]), (xs[idx], row["accuracy"]),
                    xytext=(6, 10 - 12 * rank), textcoords="offset points",
                    fontsize="x-small", va="center",
                )  # fmt: skip


def _panel(
    ax: Axes,
    data: pd.DataFrame,
    x: str,
    pareto: bool,
    empty: str,
    styles: dict[str, tuple[str, str]],
) -> None:
    """Draw one (model, dataset) panel: a line with 95 % CI error bars per method."""
    data = data.dropna(subset=[x, "accuracy"]).sort_values([x, "method"])
    if data.empty:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
        return
    xs = _dodged(data, x, list(styles))
    for method in (m for m in styles if m in set(data["method"])):
        rows = data[data["method"] == method]
        colour, marker = styles[method]
        acc = rows["accuracy"].to_numpy(float)
        low = (acc - rows["acc_ci_low"].to_numpy(float)).clip(min=0)
        high = (rows["acc_ci_high"].to_numpy(float) - acc).clip(min=0)
        ax.errorbar(xs[rows.index], acc, yerr=[low, high], fmt="none",
                    ecolor=colour, elinewidth=1, capsize=3, alpha=0.7)  # fmt: skip
        ax.plot(xs[rows.index], acc, color=colour, marker=marker, markersize=7,
                linewidth=1.5, label=method)  # fmt: skip
    _label_close_budgets(ax, data, xs)
    if pareto:
        front = data.iloc[pareto_front(data[x].to_numpy(), data["accuracy"].to_numpy())]
        ax.step(front[x], front["accuracy"], where="post", color="0.45", linestyle="--",
                linewidth=1, label="Pareto frontier")  # fmt: skip
    ax.grid(True, alpha=0.3)


def _legend(fig: Figure, styles: dict[str, tuple[str, str]], pareto: bool) -> None:
    """One legend below the panels, in :func:`method_styles` order."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=c, marker=m, markersize=7, label=method)
        for method, (c, m) in styles.items()
    ]
    if pareto:
        handles.append(
            Line2D([], [], color="0.45", linestyle="--", label="Pareto frontier")
        )
    fig.legend(handles=handles, loc="outside lower center", fontsize="small",
               ncols=min(len(handles), 4), frameon=False)  # fmt: skip


def _wrap(text: str, width_in: float, font_pt: float) -> str:
    """Wrap ``text`` to lines that fit ``width_in`` inches at ``font_pt`` points."""
    import textwrap

    chars = max(20, int(width_in * 72 / (0.55 * font_pt)))
    return "\n".join(textwrap.wrap(text, chars))


def _figure_specs(summary: pd.DataFrame, flop_unit: str) -> dict[str, tuple[Any, ...]]:
    """Return ``name -> (x column, x label, title, pareto, empty text)``."""
    cpu = bool((summary["device"] == "cpu").any())
    gpus = sorted(set(summary.loc[summary["device"] == "cuda", "device_name"]))
    clock = "CPU" if cpu else "GPU" + (": " + ", ".join(map(str, gpus)) if gpus else "")
    ttft_title = "Accuracy vs time to first token"
    if cpu:
        ttft_title += " (CPU latency, not a GPU number)"
    return {
        "acc_vs_ratio": ("kept_ratio", "Kept visual tokens (% of input, mean)",
                         "Accuracy vs kept-token ratio", False, "no token counts"),
        "acc_vs_ttft": ("ttft_ms", f"TTFT (ms, {clock})", ttft_title, True,
                        "latency not measured (measure.latency=false)"),
        "acc_vs_flops": ("flops_plot", f"Prefill FLOPs ({flop_unit}, analytic)",
                         "Accuracy vs prefill FLOPs", True, "FLOPs not recorded"),
    }  # fmt: skip


def plot_latency(summary: pd.DataFrame, latency: bool | None = None) -> bool:
    """Decide whether the report draws the accuracy-vs-TTFT figure.

    Args:
        summary: The summary frame (``ttft_ms`` and ``device`` columns).
        latency: True or False forces the choice (``tokenred report --latency`` /
            ``--no-latency``); None draws it only when some runs were timed and
            every timed run was timed on a GPU. CPU timings stay in the tables.
    """
    if latency is not None:
        return latency
    timed = summary[summary["ttft_ms"].notna()]
    return bool(len(timed)) and bool((timed["device"] == "cuda").all())


def make_figures(
    summary: pd.DataFrame, latency: bool | None = None
) -> dict[str, Figure]:
    """Return the report figures (not saved; see :func:`main_report`).

    One panel per (model, dataset); built on :class:`matplotlib.figure.Figure`
    directly, so no pyplot state or global backend is touched. ``acc_vs_ttft`` is
    left out unless :func:`plot_latency` says to draw it (FLOPs are the cost axis),
    and a figure whose x metric no run measured is left out rather than drawn
    empty. Each method keeps one colour and marker (:func:`method_styles`) across
    all figures; accuracy points carry their 95 % bootstrap CI as error bars.
    """
    from matplotlib.figure import Figure

    groups = sorted(set(zip(summary["model"], summary["dataset"], strict=True)))
    flops = summary["flops_prefill"]
    div, unit = flops_unit(float(flops.max()) if flops.notna().any() else 1.0)
    frame = summary.assign(flops_plot=flops / div)
    styles = method_styles(list(summary["method"]))
    suffix = " (random weights)" if summary["random_weights"].any() else ""
    width = 5.5 * max(1, len(groups))
    figures: dict[str, Figure] = {}
    specs = _figure_specs(summary, unit)
    if not plot_latency(summary, latency):
        del specs["acc_vs_ttft"]
    for name, (x, label, title, pareto, empty) in specs.items():
        if not (frame[x].notna() & frame["accuracy"].notna()).any():
            continue  # never measured: no figure at all
        fig = Figure(figsize=(width, 4.8), layout="constrained")
        axes = fig.subplots(1, max(1, len(groups)), squeeze=False)[0]
        for ax, (model, dataset) in zip(axes, groups, strict=False):
            mask = (frame["model"] == model) & (frame["dataset"] == dataset)
            _panel(ax, frame[mask], x, pareto, empty, styles)
            ax.set(xlabel=label, ylabel="Accuracy (%)")
            ax.set_title(_wrap(f"{model} · {dataset}", 5.2, 10), fontsize=10)
        _legend(fig, styles, pareto)
        fig.suptitle(_wrap(title + suffix, width - 0.3, 12), fontsize=12)
        figures[name] = fig
    return figures


def remove_stale_figures(out: Path, written: Sequence[str]) -> None:
    """Delete report figures in ``out`` that this report did not write.

    Rewriting a report folder after, say, turning latency off must not leave the
    old TTFT figure next to the new tables.
    """
    for name in FIGURES:
        if name in written:
            continue
        for ext in ("png", "svg"):
            (out / f"{name}.{ext}").unlink(missing_ok=True)


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


def metrics_markdown(frame: pd.DataFrame, *, breakdown_only: bool = False) -> str:
    """Return the per-run dataset metrics as a Markdown table.

    Metrics are percentages (one decimal) except the ``num_*`` sample counts, which
    are shown as whole numbers so they are not read as percentages.
    """
    if frame.empty:
        return ""
    fixed = ["model", "dataset", "method", "budget"]
    keys = [c for c in frame.columns if c not in fixed]
    if breakdown_only:
        keys = [k for k in keys if "/" in k]
    if not keys:
        return ""
    fmts = {k: "{:.0f}" if k.startswith("num_") else "{:.1f}" for k in keys}
    headers = ["Method", "Budget", *keys]
    rows = [
        [str(r["method"]), str(r["budget"]), *(_num(r.get(k), fmts[k]) for k in keys)]
        for _, r in frame.iterrows()
    ]
    return markdown_table(headers, rows)


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


def save_figures(figures: dict[str, Figure], out: Path) -> None:
    """Save each figure as PNG and SVG, byte-identical for identical data.

    Reports may be committed (``docs/study/``), so the SVG's date is left out and
    its element ids are salted with a constant instead of a random UUID.
    """
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "tokenred"}):
        for name, fig in figures.items():
            fig.savefig(out / f"{name}.png", dpi=150)
            fig.savefig(out / f"{name}.svg", metadata={"Date": None})


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
    table = controls_note(summary) + _table(summary, SHORT_HEADERS)
    breakdown = metrics_markdown(metrics_frame(runs), breakdown_only=True)
    return table + ("\n" + breakdown if breakdown else "")
