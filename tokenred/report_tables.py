"""The report's Markdown: the summary table, its notes and controls line, metrics.

:mod:`tokenred.report` builds the frames; this module only formats them. Numbers
are rounded here and nowhere else, so the CSV files keep full precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from tokenred.controls import (
    CONTROL_COLUMNS,
    mixed_controls,
    mixed_warning,
)


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


def summary_table_markdown(summary: pd.DataFrame, headers: Sequence[str]) -> str:
    """Return the summary rows as a Markdown table with the given column headers.

    A control in which the rows differ (position policy, stage, layer, ...) becomes
    a column right after the method, so a mixed table says what else varied.
    """
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
    parts.append(summary_table_markdown(summary, MD_HEADERS))
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
