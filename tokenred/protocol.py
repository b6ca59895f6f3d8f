"""The per-sample measurement protocol, identical for every reducer.

One sample goes through the same steps whatever the reducer (see
``docs/measuring.md``):

* prefill (time to first token, reducer included) and greedy decode: ``warmup``
  untimed, then ``repeats`` timed passes; the median is reported;
* reducer: the reducer call inside the prefill, reported by the insertion engine to
  the repeat's active timer (:func:`tokenred.measure.timing`);
* vision: measured once per video by :class:`~tokenred.videos.VideoSource`;
* e2e: vision + prefill + decode of one answer (video decoding excluded);
* peak memory over the sample, FLOPs from the achieved token schedule.

The protocol then scores the answer with the dataset's scorer and assembles the
:class:`~tokenred.results.SampleRecord`. No reducer can opt out of or customise it.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenred.adapter import create_adapter
from tokenred.controls import describe_controls, resolve_config
from tokenred.determinism import ComputeSettings, compute_settings
from tokenred.errors import DataError
from tokenred.measure import Timer, measure_repeats, reset_peak, sample_flops, timing
from tokenred.measure.flops import equivalent_tokens, prefill_flops
from tokenred.measure.latency import summarize
from tokenred.plan import ReductionPlan, check_flops_reachable
from tokenred.reducer import BASELINE_REDUCER
from tokenred.results import FlopsRecord, MemoryRecord, SampleRecord
from tokenred.tokens import Stage

if TYPE_CHECKING:
    from tokenred.adapter import ModelAdapter
    from tokenred.data import Sample, VideoDataset
    from tokenred.featcache import CachedVideo
    from tokenred.model_io import Generation
    from tokenred.registry import Registries
    from tokenred.reuse import KVReuse
    from tokenred.schema import ExperimentConfig
    from tokenred.videos import VideoSource

log = logging.getLogger(__name__)


@dataclass
class Answered:
    """One sample's last answer and what was measured while producing it."""

    generation: Generation
    phases: dict[str, list[float]]
    peak_bytes: int | None
    peak_kind: str | None


class SampleProtocol:
    """Measure, answer and record one configured experiment's samples alike.

    Args:
        cfg: The run's config.
        adapter: The model adapter.
        dataset: The dataset (it scores answers).
        reducer: The reducer instance (unused for the unreduced baseline).
        origin: ``"name (dist version)"`` of the reducer, for error messages.
        device: Where the model runs (selects the timing clock); the runner sets it
            once the model is loaded.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        adapter: ModelAdapter,
        dataset: VideoDataset,
        reducer: Any,
        *,
        origin: str,
        device: str,
    ) -> None:
        self.cfg = cfg
        self.adapter = adapter
        self.dataset = dataset
        self.reducer = reducer
        self.origin = origin
        self.device = device
        self.unreduced = cfg.reducer.name == BASELINE_REDUCER
        self._budget_noted = False

    @classmethod
    def for_config(
        cls, cfg: ExperimentConfig, registries: Registries
    ) -> SampleProtocol:
        """Build the reducer, the (unloaded) adapter and the dataset of ``cfg``.

        Raises:
            UnknownNameError: A reducer, model or dataset name is not registered.
        """
        entry = registries.reducers.entry(cfg.reducer.name)
        reducer = entry.load()(cfg.reducer)
        adapter = create_adapter(registries.models, cfg.model)
        dataset = registries.datasets.get(cfg.data.name)(cfg.data)
        unreduced = cfg.reducer.name == BASELINE_REDUCER
        # The controls (insertion point, positions) come from the config or the
        # model family's defaults, never from the reducer: the protocol's cfg is
        # the resolved one, which keys the run and goes into its manifest.
        cfg = resolve_config(cfg, adapter, unreduced=unreduced)
        layers = adapter.num_layers()
        if not unreduced and cfg.budget.flops is not None and layers:
            check_flops_reachable(cfg.budget.flops, cfg.insertion.layer or 0, layers)
        return cls(cfg, adapter, dataset, reducer, origin=entry.label(), device="cpu")

    def controls(self) -> dict[str, Any]:
        """Return the run's resolved study-level controls (manifest, header line)."""
        return describe_controls(self.cfg, unreduced=self.unreduced)

    def kv_reuse(self) -> KVReuse | None:
        """Return the per-video KV-reuse step when ``measure.kv_reuse`` applies.

        None without reuse, and for a query-dependent reducer (it warns): a video
        prefix cache cannot be shared across questions then.
        """
        from tokenred.reuse import KVReuse

        return KVReuse.for_run(self)

    def kv_reuse_entry(self) -> dict[str, Any]:
        """Return the manifest's ``kv_reuse`` entry (requested, applied, why)."""
        from tokenred.reuse import manifest_entry

        return manifest_entry(self)

    def compute_settings(self) -> AbstractContextManager[ComputeSettings]:
        """Return the run's thread and determinism settings as a context manager.

        ``measure.threads`` and ``measure.deterministic`` hold for the whole run and
        are restored afterwards, so answers do not depend on the caller's settings.
        """
        measure = self.cfg.measure
        return compute_settings(measure.threads, measure.deterministic)

    def plan(self, sample_id: str) -> ReductionPlan | None:
        """Return the reduction plan of one sample (None for the unreduced run)."""
        if self.unreduced:
            return None
        ins = self.cfg.insertion
        return ReductionPlan(
            reducer=self.reducer,
            stage=ins.stage if ins.stage is not None else Stage.PRE_LLM,
            layer=ins.layer or 0,
            budget=self.cfg.budget,
            positions=ins.positions,
            seed=self.cfg.seed,
            sample_id=sample_id,
            origin=self.origin,
        )

    def measure(
        self, sample: Sample, source: VideoSource
    ) -> tuple[SampleRecord, CachedVideo | None]:
        """Answer one sample under the protocol; a data error becomes its record.

        Returns:
            The record and the video features it was answered from (None when the
            video could not be read).
        """
        try:
            video = source.get(sample)
            return self.record(sample, video, self.answer(video, sample)), video
        except DataError as exc:
            record = SampleRecord.failed(
                sample.id, sample.video_id, exc, sample.meta, **_question(sample)
            )
            log.warning("sample %s: %s", sample.id, record.error)
            return record, None

    def answer(self, video: CachedVideo, sample: Sample) -> Answered:
        """Prefill + decode with the measurement protocol; return the last answer."""
        measure = self.cfg.measure
        max_new = self.cfg.model.max_new_tokens
        probe = reset_peak(self.device) if measure.memory else None

        def once(timer: Timer) -> Generation:
            plan = self.plan(sample.id)
            with timing(timer):
                with timer("prefill"):
                    state = self.adapter.prefill(video.features, sample.prompt, plan)
                with timer("decode"):
                    return self.adapter.decode(state, max_new)

        if measure.latency:
            rep = measure_repeats(
                once,
                warmup=measure.warmup,
                repeats=measure.repeats,
                device=self.device,
            )
            generation, phases = rep.value, rep.phases
        else:
            generation, phases = once(Timer(self.device)), {}
        peak = probe.peak_bytes() if probe is not None else None
        kind = probe.kind if probe is not None else None
        return Answered(generation, phases, peak, kind)

    def record(self, sample: Sample, video: CachedVideo, ans: Answered) -> SampleRecord:
        """Score one answer and assemble its record."""
        gen = ans.generation
        state = gen.prefill.stats
        self._note_budget(state.n_visual_in)
        prediction, correct = self.dataset.score(gen.text, sample)
        flops = None
        if self.cfg.measure.flops:
            flops = sample_flops(
                self.adapter.arch,
                state.schedule,
                decode_steps=gen.decode_steps,
                vision_seq_len=video.features.vision_seq_len,
                vision_num_seqs=video.features.vision_num_seqs,
                n_visual=video.features.n,
            )
            # The same prompt unreduced: every layer at the full prefill length.
            full = [state.prompt_len] * self.adapter.arch.layers
            flops["prefill_unreduced"] = prefill_flops(self.adapter.arch, full).total
        return SampleRecord(
            id=sample.id,
            video_id=sample.video_id,
            prediction=prediction,
            answer=sample.answer,
            correct=None if sample.answer is None else bool(correct),
            text=gen.text,
            **_question(sample),
            n_visual_in=state.n_visual_in,
            n_visual_out=state.n_visual_out,
            budget_tokens=state.budget
            if state.budget is not None
            else state.n_visual_in,
            schedule=list(state.schedule),
            visual_schedule=list(state.visual_schedule),
            equivalent_tokens=equivalent_tokens(state.visual_schedule),
            flops=FlopsRecord(**flops) if flops else FlopsRecord(),
            latency_ms=self._latency(video, ans, gen.decode_steps),
            memory=MemoryRecord(
                peak_bytes=ans.peak_bytes,
                peak_kind=ans.peak_kind,
                kv_cache_bytes=state.kv_cache_bytes,
            ),
            reduction_info={k: float(v) for k, v in state.reduction_info.items()},
            meta={
                **dict(sample.meta),
                "num_frames": video.num_frames,
                "decode_steps": gen.decode_steps,
                "feature_cache_hit": video.hit,
            },
        )

    def _note_budget(self, n_visual: int) -> None:
        """Warn once per run when the budget is clamped (see ``clamp_note``)."""
        if self.unreduced or self._budget_noted:
            return
        note = self.cfg.budget.clamp_note(n_visual)
        if note is not None:
            self._budget_noted = True
            log.warning("%s (said once per run; records hold the kept count)", note)

    def _latency(
        self, video: CachedVideo, ans: Answered, steps: int
    ) -> dict[str, dict[str, float] | None]:
        if not self.cfg.measure.latency:
            return {}
        ph = ans.phases
        prefill = ph.get("prefill", [])
        decode = ph.get("decode", [])
        per_token = [d / steps for d in decode] if steps > 0 else []
        vision = video.vision_ms
        vis_med = summarize(vision)["median"] if vision else 0.0
        e2e = [vis_med + p + d for p, d in zip(prefill, decode)]
        return {
            "vision": summarize(vision) if vision else None,
            "reducer": summarize(ph["reducer"]) if "reducer" in ph else None,
            "prefill": summarize(prefill),
            "decode_per_token": summarize(per_token) if per_token else None,
            "e2e": summarize(e2e),
        }


def _question(sample: Sample) -> dict[str, Any]:
    """The record fields that let a failure be read without rerunning it."""
    return {"prompt": sample.prompt, "options": list(sample.options)}


__all__ = ["Answered", "SampleProtocol"]
