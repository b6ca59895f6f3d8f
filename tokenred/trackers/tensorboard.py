"""TensorBoard event files, written with ``tensorboardX`` (no TensorFlow, no network).

Chosen over W&B offline and MLflow's file store because it is the lightest real
option: ``tensorboardX`` needs only numpy and protobuf, writes the standard event
files any TensorBoard reads, and needs no account, server or sync step. Install it
with ``pip install 'tokenred[tensorboard]'``; enable it with
``output.trackers=[tensorboard]``. Events go to ``<run dir>/tensorboard/``, so
``tensorboard --logdir runs/<study>`` shows every run of a study side by side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tensorboardX import SummaryWriter

from tokenred.trackers import Tracker

if TYPE_CHECKING:
    from tokenred.results import RunStore, SampleRecord
    from tokenred.schema import ExperimentConfig

LOG_DIR = "tensorboard"


class TensorBoardTracker(Tracker):
    """Per-sample scalars, running accuracy and the final metrics as event files.

    Scalars (step = this run's n-th new sample):

    - ``sample/correct`` (0/1), ``sample/kept_tokens``, ``sample/kept_ratio``,
      ``sample/flops_prefill`` and ``sample/e2e_ms`` when measured;
    - ``running/accuracy`` (%, over this invocation's scored samples);
    - ``metrics/<name>`` at the end: the dataset's ``metrics.json``.

    The run's config goes in as text (``config``) and its identity as hparams
    (reducer, budget, model, dataset), so TensorBoard's HParams tab compares runs.
    """

    name = "tensorboard"

    def __init__(
        self, config: ExperimentConfig, manifest: Mapping[str, Any], run_dir: Path
    ) -> None:
        super().__init__(config, manifest, run_dir)
        self.log_dir = run_dir / LOG_DIR
        self.writer = SummaryWriter(logdir=str(self.log_dir))
        self._scored = 0
        self._correct = 0
        body = json.dumps(manifest.get("config", {}), indent=2, sort_keys=True)
        self.writer.add_text("config", f"```\n{body}\n```", 0)

    def log_sample(self, record: SampleRecord, step: int) -> None:
        """Write the sample's scalars and the running accuracy."""
        add = self.writer.add_scalar
        if record.correct is not None:
            self._scored += 1
            self._correct += int(record.correct)
            add("sample/correct", float(record.correct), step)
            add("running/accuracy", 100.0 * self._correct / self._scored, step)
        if record.n_visual_out is not None:
            add("sample/kept_tokens", float(record.n_visual_out), step)
            if record.n_visual_in:
                ratio = record.n_visual_out / record.n_visual_in
                add("sample/kept_ratio", ratio, step)
        if record.flops.prefill is not None:
            add("sample/flops_prefill", float(record.flops.prefill), step)
        e2e = (record.latency_ms or {}).get("e2e")
        if e2e:
            add("sample/e2e_ms", float(e2e["median"]), step)

    def finish(self, store: RunStore | None, metrics: Mapping[str, float]) -> None:
        """Write the aggregate metrics and hparams, then close the event file."""
        for key, value in sorted(metrics.items()):
            if value is not None:
                self.writer.add_scalar(f"metrics/{key}", float(value), self._scored)
        cfg = self.config
        hparams = {
            "reducer": cfg.reducer.name,
            "budget": cfg.budget.describe(),
            "model": str(cfg.model.name),
            "dataset": str(cfg.data.name),
            "stage": str(getattr(cfg.insertion.stage, "value", cfg.insertion.stage)),
        }
        final = {f"hparam/{k}": float(v) for k, v in metrics.items() if v is not None}
        if final:
            self.writer.add_hparams(hparams, final, name="hparams")
        self.writer.close()


__all__ = ["LOG_DIR", "TensorBoardTracker"]
