"""The report's figures: accuracy against kept ratio, prefill FLOPs and TTFT.

Built on :class:`matplotlib.figure.Figure` directly (no pyplot state), one panel
per (model, dataset), one colour and marker per method across every figure, and
saved byte-identically for identical data so they can be committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tokenred.measure.stats import pareto_front
from tokenred.report_tables import flops_unit

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURES = ("acc_vs_ratio", "acc_vs_ttft", "acc_vs_flops")
"""Every figure a report can write (stem; each as PNG and SVG)."""

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
