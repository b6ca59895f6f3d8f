"""What a run writes next to its records: the manifest and the aggregate metrics.

A study writes one more file, ``results.json`` in its folder
(:func:`tokenred.results_json.write_study_results`, re-exported here so the runner
finds every file it writes in one module).

The run store (:mod:`tokenred.results`) owns the files and their atomic writes;
this module decides what goes into them, so the runner only says *when*.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tokenred.results import RunManifest
from tokenred.results_json import write_study_results

if TYPE_CHECKING:
    from tokenred.adapter import ModelAdapter
    from tokenred.data import VideoDataset
    from tokenred.plugins import TokenredPluginManager
    from tokenred.results import RunStore
    from tokenred.schema import ExperimentConfig


def loaded_device(adapter: ModelAdapter, cfg: ExperimentConfig) -> str:
    """Return the device the loaded model runs on (``model.device`` resolved)."""
    return str(adapter.describe().get("device", cfg.model.device))


def collect_manifest(
    keyed: Mapping[str, Any],
    cfg: ExperimentConfig,
    adapter: ModelAdapter,
    pm: TokenredPluginManager | None,
    *,
    compute: Mapping[str, Any] | None = None,
    kv_reuse: Mapping[str, Any] | None = None,
    controls: Mapping[str, Any] | None = None,
    parallel: Mapping[str, Any] | None = None,
) -> RunManifest:
    """Build the manifest of a run whose model is loaded.

    Args:
        keyed: The serialised config plus the weights identity (the run id's input).
        cfg: The run's config (for the measurement settings).
        adapter: The loaded adapter (device, kernel, random weights).
        pm: The plugin manager, whose plugins are listed with their versions.
        compute: The thread and determinism settings the run used
            (:class:`tokenred.determinism.ComputeSettings`).
        kv_reuse: The ``measure.kv_reuse`` request and what applied
            (:func:`tokenred.reuse.manifest_entry`); the report's reuse table
            reads it.
        controls: The run's resolved study-level controls
            (:func:`tokenred.controls.describe_controls`).
        parallel: World size, launcher and each rank's host and device
            (:meth:`tokenred.distributed.World.describe`).
    """
    desc = adapter.describe()
    device = loaded_device(adapter, cfg)
    return RunManifest.collect(
        keyed,
        device=device,
        attn_implementation=desc.get("attn_implementation"),
        plugins=pm.plugin_rows() if pm is not None else (),
        random_weights=bool(desc.get("random_weights")),
        controls=controls,
        measurement={
            "flops_attention": "causal",
            "latency_clock": "cuda_events"
            if device.startswith("cuda")
            else "perf_counter",
            "warmup": cfg.measure.warmup,
            "repeats": cfg.measure.repeats,
            "compute": dict(compute or {}),
            # absent (not "none applied") when the caller did not say
            **({"kv_reuse": dict(kv_reuse)} if kv_reuse is not None else {}),
            "parallel": dict(parallel or {"world_size": 1}),
            "model": desc,
        },
    )


def write_metrics(store: RunStore, dataset: VideoDataset) -> dict[str, float]:
    """Aggregate the run's records with the dataset's own scorer into metrics.json.

    The dataset decides the aggregation (official and the paper's where they
    differ, e.g. per task type, per duration, all-four-tries), so every reducer's
    run is scored by exactly the same rules.
    """
    rows = [
        {
            "id": r.id,
            "prediction": r.prediction,
            "correct": r.correct,
            "error": r.error if r.status != "ok" else None,
            "meta": r.meta,
        }
        for r in store.records()
    ]
    metrics = {k: float(v) for k, v in dataset.aggregate(rows).items()}
    store.write_metrics(metrics)
    return metrics


__all__ = [
    "collect_manifest",
    "loaded_device",
    "write_metrics",
    "write_study_results",
]
