"""The report's KV-reuse table: per-question cost with and without a shared prefix.

A run with ``measure.kv_reuse = k`` answers up to ``k`` questions of a video from one
reduced prefix, and each of its records carries what that answer computed
(:mod:`tokenred.reuse`): the first answer of a video the prefix and its question,
later answers their question only. The mean over a run's records is therefore the
per-question cost with reuse; the same reducer's run without reuse gives the cost
without. This table sets the two side by side for every reducer and budget:

* accuracy (of the answers without reuse; "same answers" says what reuse changed);
* prefill FLOPs per question, without and with reuse, and the saving;
* the cost of answering all questions of a video (its answers' prefill FLOPs
  summed), without and with reuse, the comparison in which a query-agnostic
  reducer's shared prefix pays off, and the same with reuse in units of one answer
  without it: 1.0 would mean the other questions came for free;
* mean end-to-end latency per question (vision, prefill, decoding), without and
  with reuse, on the clock the runs used;
* how many answers are the same letter with and without reuse.

Query-dependent reducers (``query_agnostic = False``, e.g. FastV) cannot share a
prefix; the runner answers them with full prefills, and the table lists them as
*not reusable* instead of showing numbers that were not measured with reuse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from tokenred.report import Run

NOT_REUSABLE = "not reusable"
KV_SUFFIX = " +kv reuse"
"""Appended to the method label of a run that answered from shared prefixes."""
REUSE_FILE = "reuse"
"""Stem of the table files ``reuse.md`` / ``reuse.csv``."""


def reuse_state(run: Run) -> dict[str, Any]:
    """Return ``{requested, applied, query_agnostic}`` of a run's KV reuse.

    New runs record it in the manifest; for older ones it is inferred from the
    config and the records (``query_agnostic`` is then unknown, None).
    """
    recorded = (run.manifest.get("measurement") or {}).get("kv_reuse")
    if isinstance(recorded, dict):
        return {
            "requested": int(recorded.get("requested") or 0),
            "applied": int(recorded.get("applied") or 0),
            "query_agnostic": recorded.get("query_agnostic"),
        }
    requested = int(run.get("measure.kv_reuse", 0) or 0)
    reused = any("kv_reuse" in r.meta for r in run.records if r.status == "ok")
    return {
        "requested": requested,
        "applied": requested if reused else 0,
        "query_agnostic": None,
    }


def wants_reuse_table(runs: Sequence[Run]) -> bool:
    """Whether a report should carry the reuse table.

    True when a run asked for KV reuse or asks several questions about a video
    (where reuse would pay).
    """
    for run in runs:
        if reuse_state(run)["requested"] > 0:
            return True
        videos = [r.video_id for r in run.records if r.video_id]
        if len(set(videos)) < len(videos):
            return True
    return False


def _mean(values: Sequence[float | None]) -> float:
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else math.nan


def _e2e(record: Any) -> float | None:
    entry = record.latency_ms.get("e2e")
    if isinstance(entry, dict) and entry.get("median") is not None:
        return float(entry["median"])
    return None


def _run_costs(run: Run) -> dict[str, Any]:
    """Return the per-question and per-video costs of one run."""
    ok = [r for r in run.records if r.status == "ok"]
    scored = [r.correct for r in ok if r.correct is not None]
    per_video: dict[str, list[int]] = {}
    for r in ok:
        if r.flops.prefill is not None:
            per_video.setdefault(r.video_id or r.id, []).append(int(r.flops.prefill))
    return {
        "n": len(ok),
        "videos": len({r.video_id or r.id for r in ok}),
        "accuracy": 100 * _mean([float(c) for c in scored]),
        "flops": _mean([r.flops.prefill for r in ok]),
        "video_flops": _mean([float(sum(v)) for v in per_video.values()]),
        "e2e_ms": _mean([_e2e(r) for r in ok]),
        "predictions": {r.id: r.prediction for r in ok},
        "device": (run.manifest.get("device") or {}).get("kind", "?"),
    }


def reuse_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Return one row per (model, dataset, reducer, insertion, budget).

    Runs that differ only in ``measure.kv_reuse`` are paired: the one without
    reuse gives the ``*_full`` columns, the one with reuse the ``*_reuse`` columns.
    """
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run in runs:
        info = run.info()
        key = tuple(
            info[k] for k in ("model", "dataset", "reducer", "stage", "layer", "budget")
        )
        entry = groups.setdefault(key, {"info": info, "agnostic": None})
        state = reuse_state(run)
        if state["query_agnostic"] is not None:
            entry["agnostic"] = bool(state["query_agnostic"])
        if state["applied"] > 0:
            entry["reuse"] = _run_costs(run)
            entry["k"] = state["applied"]
        elif state["requested"] == 0 or state["query_agnostic"] is False:
            entry.setdefault("full", _run_costs(run))
    rows = []
    for entry in groups.values():
        rows.append(_row(entry))
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["_base"] = frame["reducer"] != "none"
    frame["_amount"] = -frame["budget"].str.extract(r"([0-9.]+)")[0].astype(float)
    frame = frame.sort_values(["model", "dataset", "_base", "method", "_amount"])
    return frame.drop(columns=["_base", "_amount"]).reset_index(drop=True)


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    info = entry["info"]
    full, reuse = entry.get("full"), entry.get("reuse")
    reusable = entry["agnostic"] is not False
    row: dict[str, Any] = {
        k: info[k] for k in ("model", "dataset", "reducer", "budget")
    }
    row["method"] = str(info["method"]).removesuffix(KV_SUFFIX)
    row["reusable"] = reusable
    row["device"] = (full or reuse or {}).get("device", "?")
    row["questions_per_video"] = (
        full["n"] / full["videos"] if full and full["videos"] else math.nan
    )
    row["kv_reuse"] = entry.get("k", 0)
    row["accuracy"] = (full or reuse or {}).get("accuracy", math.nan)
    row["flops_full"] = full["flops"] if full else math.nan
    row["video_flops_full"] = full["video_flops"] if full else math.nan
    row["video_flops_reuse"] = (
        reuse["video_flops"] if (reuse and reusable) else math.nan
    )
    row["e2e_ms_full"] = full["e2e_ms"] if full else math.nan
    row["flops_reuse"] = reuse["flops"] if (reuse and reusable) else math.nan
    row["e2e_ms_reuse"] = reuse["e2e_ms"] if (reuse and reusable) else math.nan
    row["flops_saved_pct"] = 100 * (1 - row["flops_reuse"] / row["flops_full"])
    # A whole video's prefill with reuse, in answers without reuse.
    row["video_in_answers"] = (
        reuse["video_flops"] / full["flops"]
        if (reuse and full and reusable)
        else math.nan
    )
    same = math.nan
    if full and reuse and reusable:
        ids = set(full["predictions"]) & set(reuse["predictions"])
        if ids:
            hits = sum(full["predictions"][i] == reuse["predictions"][i] for i in ids)
            same = 100 * hits / len(ids)
    row["same_answers_pct"] = same
    return row


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def reuse_markdown(frame: pd.DataFrame) -> str:
    """Return the reuse table as Markdown, with its notes."""
    from tokenred.report_tables import flops_unit, markdown_table

    if frame.empty:
        return ""
    top = frame["flops_full"].max()
    div, unit = flops_unit(float(top) if not math.isnan(top) else 1.0)
    cpu = bool((frame["device"] == "cpu").any())
    clock = "CPU ms" if cpu else "ms"
    headers = [
        "Model",
        "Dataset",
        "Method",
        "Budget",
        "Q/video",
        "Acc %",
        f"Prefill/question ({unit})",
        f"with reuse ({unit})",
        "Saved %",
        f"Prefill/video ({unit})",
        f"with reuse ({unit})",
        "Video / 1 answer",
        f"e2e/question ({clock})",
        f"with reuse ({clock})",
        "Same answers %",
    ]
    rows = []
    for _, r in frame.iterrows():
        video_full = _num(r["video_flops_full"] / div, "{:.3g}")
        if not r["reusable"]:
            reuse_cells = [NOT_REUSABLE] * 2 + [video_full] + [NOT_REUSABLE] * 2
            tail = [_num(r["e2e_ms_full"], "{:.1f}"), NOT_REUSABLE, NOT_REUSABLE]
        else:
            reuse_cells = [
                _num(r["flops_reuse"] / div, "{:.3g}"),
                _num(r["flops_saved_pct"], "{:.1f}"),
                video_full,
                _num(r["video_flops_reuse"] / div, "{:.3g}"),
                _num(r["video_in_answers"], "{:.2f}"),
            ]
            tail = [
                _num(r["e2e_ms_full"], "{:.1f}"),
                _num(r["e2e_ms_reuse"], "{:.1f}"),
                _num(r["same_answers_pct"], "{:.1f}"),
            ]
        rows.append(
            [
                r["model"],
                r["dataset"],
                r["method"],
                r["budget"],
                _num(r["questions_per_video"], "{:.1f}"),
                _num(r["accuracy"], "{:.1f}"),
                _num(r["flops_full"] / div, "{:.3g}"),
                *reuse_cells,
                *tail,
            ]
        )
    notes = [
        "Acc %: accuracy of the answers without reuse (Same answers % says how "
        "many reuse left unchanged).",
        "Prefill/question: mean analytic prefill FLOPs of one answer (causal "
        "attention, matmuls only). Without reuse every answer prefills the whole "
        "prompt; with reuse (`measure.kv_reuse`) the first answer of a video "
        "prefills the reduced prefix (system prompt, video, and the instruction "
        "all its questions begin with) and its own question, later answers only "
        "their own question against the cached prefix.",
        "Prefill/video: prefill FLOPs of answering all questions of a video, "
        "summed (mean over videos). Video / 1 answer: that sum with reuse divided "
        "by one answer without reuse.",
        "e2e/question: mean end-to-end latency (vision once per video, prefill, "
        "decoding) per answer; n/a when latency was not measured."
        + (" CPU timings are not GPU numbers." if cpu else ""),
        f"{NOT_REUSABLE}: a query-dependent reducer (`query_agnostic = False`, e.g. "
        "FastV) selects tokens for each question, so a video prefix cannot be "
        "shared; it was run with full prefills only.",
    ]
    return (
        "# KV-cache reuse: cost per question\n\n"
        + markdown_table(headers, rows)
        + "\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )
