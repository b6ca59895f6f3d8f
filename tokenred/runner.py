"""The experiment runner: orchestration only, identical for every reducer.

For each sample it decodes the video (or reads the cached vision features), runs the
model through the adapter with the configured reduction, scores the answer and
records tokens, FLOPs, latency and memory in an append-only run store. Nothing here
knows a particular model or reducer: the adapter owns the model, the reducer owns
the tokens, and the runner owns every measurement, so no reducer can opt out of or
customise how it is measured.

Measurement protocol per sample (see ``docs/measuring.md``):

* vision: the encoder + projector, timed ``repeats`` times after one untimed call
  (the call whose features are kept), once per video; cached with the features;
* prefill (time to first token, reducer included) and decode: ``warmup`` untimed
  then ``repeats`` timed prefill + greedy-decode passes; the median is reported;
* reducer: the reducer call inside the prefill, timed by the engine;
* e2e: vision + prefill + decode of one answer (video decoding excluded);
* KV reuse (``measure.kv_reuse = k``, query-agnostic reducers): one reduced prefix
  prefill per video, then up to ``k`` consecutive questions answered from copies of
  it; each record states what its answer computed (:mod:`tokenred.reuse`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenred.adapter import ReductionPlan, create_adapter
from tokenred.errors import DataError, ExitCode
from tokenred.featcache import CachedVideo, FeatureCache, cache_key
from tokenred.measure import Timer, measure_repeats, reset_peak, sample_flops
from tokenred.measure.flops import equivalent_tokens
from tokenred.measure.latency import summarize
from tokenred.results import RunManifest, RunStore, SampleRecord

if TYPE_CHECKING:
    from tokenred.adapter import Generation, ModelAdapter, PrefillResult
    from tokenred.data import Sample, VideoDataset
    from tokenred.plugins import TokenredPluginManager
    from tokenred.registry import Registries
    from tokenred.schema import ExperimentConfig, Study

log = logging.getLogger(__name__)

BASELINE_REDUCER = "none"


@dataclass
class RunOutcome:
    """What one experiment produced."""

    store: RunStore
    config: ExperimentConfig
    new_records: int = 0
    errors: int = 0
    reused: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------ config helpers
def config_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Return the resolved config as plain JSON-ready data (enums as values)."""
    from tokenred.measure.env import jsonable

    out: dict[str, Any] = jsonable(dataclasses.asdict(cfg))
    return out


def baseline_config(cfg: ExperimentConfig, registries: Registries) -> ExperimentConfig:
    """Return the unreduced companion of ``cfg``: same model, data, seed, measurement.

    Budget and insertion are normalised so that every reducer of a study shares one
    baseline run (and one run id).
    """
    from tokenred.schema import BudgetConfig, InsertionConfig

    none_cls = registries.reducers.get(BASELINE_REDUCER)
    return dataclasses.replace(
        cfg,
        reducer=none_cls.Config(name=BASELINE_REDUCER),
        budget=BudgetConfig(ratio=1.0, tokens=None),
        insertion=InsertionConfig(),
    )


def with_baselines(
    experiments: Sequence[ExperimentConfig], registries: Registries
) -> list[ExperimentConfig]:
    """Put the unreduced companion run first wherever ``measure.baseline`` asks.

    Duplicates (by run id) are dropped, so a study that already sweeps ``none``
    runs it once.
    """
    from tokenred.results import run_id

    out: list[ExperimentConfig] = []
    seen: set[str] = set()

    def add(c: ExperimentConfig) -> None:
        rid = run_id(config_dict(c))
        if rid not in seen:
            seen.add(rid)
            out.append(c)

    for cfg in experiments:
        if getattr(cfg.measure, "baseline", False):
            add(baseline_config(cfg, registries))
    for cfg in experiments:
        add(cfg)
    return out


def _run_root(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output.root) / cfg.name


# ------------------------------------------------------------------------ per video
class VideoSource:
    """Decode + encode videos through the feature cache, timing the encoder once."""

    def __init__(
        self,
        adapter: ModelAdapter,
        dataset: VideoDataset,
        cache: FeatureCache,
        *,
        device: str,
        latency: bool,
        repeats: int,
    ) -> None:
        self.adapter = adapter
        self.dataset = dataset
        self.cache = cache
        self.device = device
        self.latency = latency
        self.repeats = repeats
        self._last: tuple[str, CachedVideo] | None = None

    def get(self, sample: Sample) -> CachedVideo:
        """Return the sample's video features (memoised for consecutive questions).

        Raises:
            DataError: The video is missing, empty or corrupt.
        """
        sampling = self.dataset.config.frames
        key = cache_key(self.adapter, sample.video, sampling)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        entry = self.cache.load(key, device=self.device)
        if entry is None:
            entry = self._encode(sample)
            self.cache.save(key, entry)
        self._last = (key, entry)
        return entry

    def _encode(self, sample: Sample) -> CachedVideo:
        t0 = time.perf_counter_ns()
        decoded = self.dataset.decode(sample)
        decode_ms = (time.perf_counter_ns() - t0) / 1e6
        stamps = [float(t) for t in decoded.timestamps]
        feats = self.adapter.encode_video(decoded.frames, stamps)
        vision_ms: list[float] = []
        if self.latency:
            timed = measure_repeats(
                lambda timer: _timed_encode(
                    self.adapter, decoded.frames, stamps, timer
                ),
                warmup=0,
                repeats=self.repeats,
                device=self.device,
            )
            vision_ms = timed.phases.get("vision", [])
        return CachedVideo(
            features=feats,
            num_frames=int(decoded.frames.shape[0]),
            timestamps=stamps,
            vision_ms=vision_ms,
            decode_ms=decode_ms,
        )


def _timed_encode(
    adapter: ModelAdapter, frames: Any, stamps: list[float], timer: Timer
) -> None:
    with timer("vision"):
        adapter.encode_video(frames, stamps)


# ----------------------------------------------------------------------- per sample
@dataclass
class _Answered:
    generation: Generation
    phases: dict[str, list[float]]
    peak_bytes: int | None
    peak_kind: str | None


class SampleRunner:
    """Run one configured experiment on samples, measuring every sample alike."""

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

    def plan(self, sample_id: str, timer: Timer | None) -> ReductionPlan | None:
        """Return the reduction plan of one sample (None for the unreduced run)."""
        if self.unreduced:
            return None
        ins = self.cfg.insertion
        return ReductionPlan(
            reducer=self.reducer,
            stage=ins.stage,
            layer=ins.layer,
            budget=self.cfg.budget,
            positions=ins.positions,
            seed=self.cfg.seed,
            sample_id=sample_id,
            timer=timer,
            origin=self.origin,
        )

    def answer(self, video: CachedVideo, sample: Sample) -> _Answered:
        """Prefill + decode with the measurement protocol; return the last answer."""
        measure = self.cfg.measure
        max_new = self.cfg.model.max_new_tokens
        probe = reset_peak(self.device) if measure.memory else None

        def once(timer: Timer) -> Generation:
            plan = self.plan(sample.id, timer)
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
        return _Answered(generation, phases, peak, kind)

    def record(
        self, sample: Sample, video: CachedVideo, ans: _Answered
    ) -> SampleRecord:
        """Score one answer and assemble its record."""
        gen = ans.generation
        state: PrefillResult = gen.prefill
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
        from tokenred.results import FlopsRecord, MemoryRecord

        return SampleRecord(
            id=sample.id,
            video_id=sample.video_id,
            prediction=prediction,
            answer=sample.answer,
            correct=None if sample.answer is None else bool(correct),
            text=gen.text,
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

    def _latency(
        self, video: CachedVideo, ans: _Answered, steps: int
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


# ----------------------------------------------------------------------- one run
def run_experiment(
    cfg: ExperimentConfig,
    registries: Registries,
    pm: TokenredPluginManager | None = None,
    *,
    progress: bool = True,
) -> RunOutcome:
    """Run (or resume) one experiment and return its store.

    Raises:
        TokenredError: For configuration, compatibility or model-loading problems;
            per-sample data errors become error records instead.
    """
    runner = preflight(cfg, registries)
    adapter, dataset, reducer = runner.adapter, runner.dataset, runner.reducer
    reuse_k = cfg.measure.kv_reuse if reducer.query_agnostic else 0
    if cfg.measure.kv_reuse and not reducer.query_agnostic:
        log.warning(
            "reducer '%s' is query-dependent: KV-cache reuse is not measured for it "
            "(a video prefix cache cannot be shared across questions)",
            cfg.reducer.name,
        )

    conf = config_dict(cfg)
    # The weights are part of a run's identity: retrained or swapped weights at the
    # same path must not resume (or be reported as) the old weights' answers.
    keyed = {**conf, "model_weights": adapter.weights_identity()}
    store = RunStore.for_config(_run_root(cfg), keyed)
    if cfg.output.overwrite and store.path.exists():
        with store:
            store.reset()
    with store:
        from tokenred.config import to_yaml

        store.write_config(to_yaml(cfg))
        done = store.completed_ids(include_errors=False)
        samples = dataset.samples()
        todo = [s for s in samples if s.id not in done]
        outcome = RunOutcome(store=store, config=cfg, reused=len(samples) - len(todo))
        if not todo:
            log.info("run %s: all %d records present", store.path, len(samples))
            outcome.metrics = write_metrics(store, dataset)
            return outcome
        adapter.load()
        desc = adapter.describe()
        device = str(desc.get("device", cfg.model.device))
        manifest = RunManifest.collect(
            keyed,
            device=device,
            attn_implementation=desc.get("attn_implementation"),
            plugins=pm.plugin_rows() if pm is not None else (),
            random_weights=bool(desc.get("random_weights")),
            measurement={
                "flops_attention": "causal",
                "latency_clock": "cuda_events"
                if device.startswith("cuda")
                else "perf_counter",
                "warmup": cfg.measure.warmup,
                "repeats": cfg.measure.repeats,
                # KV-REUSE (issue 22): what the report's reuse table reads.
                "kv_reuse": {
                    "requested": cfg.measure.kv_reuse,
                    "applied": reuse_k,
                    "query_agnostic": bool(reducer.query_agnostic),
                },
                "model": desc,
            },
        )
        store.write_manifest(manifest)
        if pm is not None:
            pm.hook.before_run(config=cfg, manifest=manifest)
        runner.device = device
        cache_root = _feature_cache_root(cfg)
        source = VideoSource(
            adapter,
            dataset,
            FeatureCache(cache_root),
            device=device,
            latency=cfg.measure.latency,
            repeats=cfg.measure.repeats,
        )
        _run_samples(runner, source, todo, store, outcome, pm, reuse_k, progress)
        outcome.metrics = write_metrics(store, dataset)
        if pm is not None:
            pm.hook.after_run(store=store)
    return outcome


METRICS_FILE = "metrics.json"


def write_metrics(store: RunStore, dataset: VideoDataset) -> dict[str, float]:
    """Aggregate the run's records with the dataset's own scorer into metrics.json.

    The dataset decides the aggregation (official and the paper's where they
    differ, e.g. per task type, per duration, all-four-tries), so every reducer's
    run is scored by exactly the same rules.
    """
    import json

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
    path = store.path / METRICS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return metrics


def _feature_cache_root(cfg: ExperimentConfig) -> Path | None:
    if not getattr(cfg.output, "feature_cache", True):
        return None
    return Path(cfg.output.root) / "_features"


def _progress(items: Sequence[Any], desc: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    bar: Iterable[Any] = tqdm(items, desc=desc, unit="q", leave=False, disable=None)
    return bar


def _run_samples(
    runner: SampleRunner,
    source: VideoSource,
    todo: Sequence[Sample],
    store: RunStore,
    outcome: RunOutcome,
    pm: TokenredPluginManager | None,
    reuse_k: int,
    progress: bool,
) -> None:
    """Answer every pending sample, appending one record each."""
    cfg = runner.cfg
    label = f"{cfg.reducer.name}@{cfg.budget.describe()}"
    if reuse_k:
        _run_reused(runner, source, todo, store, outcome, pm, reuse_k, progress)
        return
    for sample in _progress(todo, label, progress):
        try:
            video = source.get(sample)
            record = runner.record(sample, video, runner.answer(video, sample))
        except DataError as exc:
            record = SampleRecord.failed(sample.id, sample.video_id, exc)
            log.warning("sample %s: %s", sample.id, record.error)
        _append(store, record, outcome, pm)


# KV-REUSE (issue 22): the per-video step lives in tokenred.reuse; this glue is
# what the runner rewrite has to port.
def _run_reused(
    runner: SampleRunner,
    source: VideoSource,
    todo: Sequence[Sample],
    store: RunStore,
    outcome: RunOutcome,
    pm: TokenredPluginManager | None,
    k: int,
    progress: bool,
) -> None:
    """Answer pending samples video by video, up to ``k`` from one prefix."""
    from tokenred.reuse import answer_video, reused_record, video_groups

    cfg, measure = runner.cfg, runner.cfg.measure
    label = f"{cfg.reducer.name}@{cfg.budget.describe()} (kv reuse)"
    for group in _progress(video_groups(todo, k), label, progress):
        try:
            video = source.get(group[0])
            probe = reset_peak(runner.device) if measure.memory else None
            answers = answer_video(
                runner.adapter,
                functools.partial(runner.plan, group[0].id),
                video.features,
                group,
                max_new_tokens=cfg.model.max_new_tokens,
                latency=measure.latency,
                warmup=measure.warmup,
                repeats=measure.repeats,
                device=runner.device,
            )
            peak = probe.peak_bytes() if probe is not None else None
            kind = probe.kind if probe is not None else None
            records = [
                reused_record(
                    runner.record(
                        ans.sample, video, _Answered(ans.generation, {}, peak, kind)
                    ),
                    answers,
                    ans,
                    arch=runner.adapter.arch if measure.flops else None,
                    vision_ms=video.vision_ms,
                    latency=measure.latency,
                )
                for ans in answers.answers
            ]
        except DataError as exc:
            records = [SampleRecord.failed(s.id, s.video_id, exc) for s in group]
            log.warning("video %s: %s", group[0].video_id, records[0].error)
        for record in records:
            _append(store, record, outcome, pm)


def _append(
    store: RunStore,
    record: SampleRecord,
    outcome: RunOutcome,
    pm: TokenredPluginManager | None,
) -> None:
    store.append(record)
    outcome.new_records += 1
    outcome.errors += record.status != "ok"
    if pm is not None:
        pm.hook.after_sample(record=record)


# ------------------------------------------------------------------ calibration
class _Recorder:
    """Keep-all reducer that remembers the tokens it was given (calibration only).

    It goes through the same engine as any reducer, so the recorded tokens are
    exactly what the configured reducer would see at the insertion point: the
    projected features for ``pre_llm``, the hidden states entering layer K for
    ``in_llm``.
    """

    def __init__(self, stages: frozenset[Any]) -> None:
        from tokenred.reducer import TokenReducer
        from tokenred.tokens import Reduction

        seen: list[Any] = []

        class Record(TokenReducer):
            """Record the visual tokens and keep them all."""

            name = "record"
            paper = reference = "-"

            def reduce(self, tokens: Any, ctx: Any) -> Any:
                import torch

                seen.append(
                    dataclasses.replace(tokens, features=tokens.features.clone())
                )
                keep = torch.arange(tokens.n, device=tokens.device)
                return Reduction.from_keep_index(tokens, keep)

        Record.stages = stages
        self.reducer = Record()
        self.seen = seen


def collect_tokens(
    cfg: ExperimentConfig, registries: Registries, *, videos: int
) -> tuple[list[Any], int | None]:
    """Return the original visual tokens of the first ``videos`` distinct videos.

    Returns:
        ``(token_sets, head_dim)`` at the configured insertion point.
    """
    from tokenred.schema import BudgetConfig

    reducer_cls = registries.reducers.get(cfg.reducer.name)
    adapter = create_adapter(registries.models, cfg.model)
    dataset = registries.datasets.get(cfg.data.name)(cfg.data)
    recorder = _Recorder(reducer_cls.stages)
    adapter.load()
    device = str(adapter.describe().get("device", cfg.model.device))
    source = VideoSource(
        adapter,
        dataset,
        FeatureCache(_feature_cache_root(cfg)),
        device=device,
        latency=False,
        repeats=1,
    )
    chosen: dict[str, Sample] = {}
    for sample in dataset.samples():
        chosen.setdefault(sample.video_id, sample)
        if len(chosen) >= videos:
            break
    for sample in chosen.values():
        try:
            video = source.get(sample)
        except DataError as exc:
            log.warning("calibration skips sample %s: %s", sample.id, exc)
            continue
        plan = ReductionPlan(
            reducer=recorder.reducer,
            stage=cfg.insertion.stage,
            layer=cfg.insertion.layer,
            budget=BudgetConfig(ratio=1.0, tokens=None),
            seed=cfg.seed,
            sample_id=sample.id,
        )
        adapter.prefill(video.features, sample.prompt, plan)
    head_dim = getattr(adapter, "head_dim", None)
    return recorder.seen, head_dim if isinstance(head_dim, int) else None


def calibrate_reducer(
    cfg: ExperimentConfig, registries: Registries, *, videos: int = 16
) -> tuple[dict[str, Any], dict[str, float]]:
    """Fit the configured reducer's parameters to ``budget.ratio`` on average.

    Raises:
        UsageError: Without a ratio budget, or for a reducer with no calibration.
    """
    from tokenred.errors import UsageError

    ratio = cfg.budget.ratio
    if ratio is None:
        msg = "calibrate needs an average ratio: pass --budget 0.3 (not a token count)"
        raise UsageError(msg)
    reducer_cls = registries.reducers.get(cfg.reducer.name)
    tokens, head_dim = collect_tokens(cfg, registries, videos=videos)
    if not tokens:
        msg = f"calibrate: no readable video among the first {videos} of the dataset"
        raise UsageError(msg)
    overrides, info = reducer_cls.calibrate(
        cfg.reducer, tokens, float(ratio), head_dim=head_dim
    )
    return overrides, {"videos": float(len(tokens)), **info}


# -------------------------------------------------------------------------- CLI
def run_study(
    study: Study,
    registries: Registries,
    pm: TokenredPluginManager | None = None,
    *,
    progress: bool = True,
) -> list[RunOutcome]:
    """Run every experiment of a study (unreduced baselines first)."""
    experiments = with_baselines(study.experiments, registries)
    for cfg in experiments:
        preflight(cfg, registries)
    outcomes = []
    for cfg in experiments:
        outcomes.append(run_experiment(cfg, registries, pm, progress=progress))
    return outcomes


def preflight(cfg: ExperimentConfig, registries: Registries) -> SampleRunner:
    """Build a run's parts and check they fit, before any weights load.

    ``run_study`` calls it for every study point before the first run starts;
    ``run_experiment`` uses the parts it returns (on CPU until the model loads).

    Raises:
        TokenredError: Unknown names, or a reducer/adapter/stage mismatch.
    """
    entry = registries.reducers.entry(cfg.reducer.name)
    reducer = entry.load()(cfg.reducer)
    adapter = create_adapter(registries.models, cfg.model)
    dataset = registries.datasets.get(cfg.data.name)(cfg.data)
    runner = SampleRunner(
        cfg, adapter, dataset, reducer, origin=entry.origin(), device="cpu"
    )
    plan = runner.plan("", None)
    if plan is not None:
        adapter.check_plan(plan)
    return runner


def run_from_cli(
    study: Study, registries: Registries, pm: TokenredPluginManager | None = None
) -> int:
    """Run a study from ``tokenred run`` and print the summary table.

    Returns:
        0 when every sample produced an answer, 1 when some samples errored.
    """
    import sys

    from tokenred.report import summary_table

    outcomes = run_study(study, registries, pm)
    errors = 0
    for out in outcomes:
        status = f"{out.new_records} new, {out.reused} reused" + (
            f", {out.errors} errors" if out.errors else ""
        )
        sys.stderr.write(f"run {out.store.path}: {status}\n")
        errors += sum(1 for r in out.store.records() if r.status != "ok")
    sys.stdout.write(summary_table([o.store for o in outcomes]))
    random = any(
        (o.store.read_manifest() or {}).get("random_weights") for o in outcomes
    )
    if random:
        sys.stdout.write(
            "note: the model has RANDOM weights (no trained checkpoint); accuracy "
            "is meaningless, costs are real\n"
        )
    return int(ExitCode.RUN_FAILED if errors else ExitCode.OK)


__all__ = [
    "RunOutcome",
    "baseline_config",
    "calibrate_reducer",
    "collect_tokens",
    "run_experiment",
    "run_from_cli",
    "run_study",
    "with_baselines",
]
