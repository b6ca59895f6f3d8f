"""``results.json``: every run of a study in one machine-readable, versioned file.

The run stores (``<output.root>/<name>/<run_id>/``) stay the source of truth; this
file gathers, for the runs of one ``tokenred run`` invocation, each run's config,
controls, dataset metrics and costs, so a script or another tool reads one file
instead of walking folders. Its shape is the JSON Schema shipped in the package
(:data:`SCHEMA_PATH`, documented in ``docs/results.md``); ``schema_version`` goes up
whenever a field changes meaning or disappears (adding optional fields does not).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenred.results import RunStore

RESULTS_FILE = "results.json"
RESULTS_SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "results.schema.json"
"""The JSON Schema (draft 2020-12) that every ``results.json`` satisfies."""

COST_COLUMNS = (
    "kept_tokens",
    "kept_ratio",
    "eq_tokens",
    "flops_prefill",
    "flops_vision",
    "peak_bytes",
    "ttft_ms",
    "ttft_iqr_ms",
    "e2e_ms",
    "e2e_iqr_ms",
)
"""Summary columns that are costs (means over answered samples; latency medians)."""

RELATIVE_COLUMNS = ("rel_accuracy", "rel_flops", "rel_ttft", "agreement")


def load_schema() -> dict[str, Any]:
    """Return the ``results.json`` JSON Schema as a dict."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def study_results(name: str, stores: Sequence[RunStore]) -> dict[str, Any]:
    """Return the ``results.json`` document of ``stores`` (one study's runs).

    Args:
        name: The study's name (``name`` of its configs).
        stores: The run stores, in run order (unreduced baselines first).
    """
    from tokenred import __version__
    from tokenred.report import load_runs, samples_frame, summary_frame

    paths = [s.path for s in stores]
    runs = load_runs(paths) if paths else []
    samples = samples_frame(runs) if runs else None
    summary: dict[str, dict[str, Any]] = {}
    if samples is not None and not samples.empty:
        for row in summary_frame(samples).to_dict(orient="records"):
            summary[str(row["run_id"])] = {str(k): _plain(v) for k, v in row.items()}
    return {
        "schema": "tokenred.results",
        "schema_version": RESULTS_SCHEMA_VERSION,
        "tokenred_version": __version__,
        "study": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": [_run_entry(store, summary) for store in stores],
    }


def _run_entry(
    store: RunStore, summary: Mapping[str, dict[str, Any]]
) -> dict[str, Any]:
    manifest = store.read_manifest() or {}
    run_id = str(manifest.get("run_id", store.path.name))
    config = dict(manifest.get("config") or {})
    records = store.records()
    errors = sum(r.status != "ok" for r in records)
    row = summary.get(run_id, {})
    measurement = dict(manifest.get("measurement") or {})
    measure_cfg = dict(config.get("measure") or {})
    return {
        "run_id": run_id,
        "path": store.path.name,
        "reducer": str((config.get("reducer") or {}).get("name", "?")),
        "method": row.get("method"),
        "budget": row.get("budget"),
        "config": config,
        "controls": {
            "seed": config.get("seed"),
            "model_weights": config.get("model_weights"),
            "random_weights": bool(manifest.get("random_weights")),
            "device": manifest.get("device") or {},
            "measure": measure_cfg,
            "compute": measurement.get("compute") or {},
            "latency_clock": measurement.get("latency_clock"),
            "git": manifest.get("git") or {},
        },
        "samples": {
            "total": len(records),
            "ok": len(records) - errors,
            "errors": errors,
        },
        "metrics": {k: _plain(v) for k, v in _metrics(store).items()},
        "accuracy": {
            "accuracy": row.get("accuracy"),
            "ci_low": row.get("acc_ci_low"),
            "ci_high": row.get("acc_ci_high"),
        },
        "costs": {k: row.get(k) for k in COST_COLUMNS},
        "relative": {k: row.get(k) for k in RELATIVE_COLUMNS},
    }


def _metrics(store: RunStore) -> dict[str, Any]:
    path = store.path / "metrics.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _plain(value: Any) -> Any:
    """JSON-ready scalar: numpy scalars become Python's, non-finite floats null."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | bytes):
        value = item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_study_results(stores: Sequence[RunStore]) -> list[Path]:
    """Write one ``results.json`` per study folder of ``stores`` (atomically).

    The runs of a study live in ``<output.root>/<name>/``; runs a sweep sent to
    another folder get that folder's file.

    Returns:
        The files written.
    """
    by_folder: dict[Path, list[RunStore]] = {}
    for store in stores:
        by_folder.setdefault(store.path.parent, []).append(store)
    written = []
    for folder, group in by_folder.items():
        doc = study_results(folder.name, group)
        path = folder / RESULTS_FILE
        _atomic_write(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
        written.append(path)
    return written


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = [
    "RESULTS_FILE",
    "RESULTS_SCHEMA_VERSION",
    "SCHEMA_PATH",
    "load_schema",
    "study_results",
    "write_study_results",
]
