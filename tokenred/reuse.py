"""KV-cache reuse: one reduced video prefix answers several questions, each accounted.

Benchmarks such as Video-MME ask several questions about one video. For a
query-agnostic reducer the reduced video does not depend on the question, so the
prefix (system prompt + reduced video + the prompt text all its questions begin
with, e.g. the benchmark's instruction) is prefilled once and every question's own
tokens are prefilled after a copy of its KV cache
(:meth:`ModelAdapter.prefill_prefix`, :meth:`ModelAdapter.prefill_question`), as a
server with prefix caching would share them. :class:`KVReuse` is the per-video step of a
run with ``measure.kv_reuse = k``: the runner hands it one video's pending
questions (:func:`tokenred.videos.by_video`); it answers them in runs of up to
``k`` from one prefix each (:func:`video_groups`) and turns each answer into a
record that says what *that answer* computed, so that summing the records of a
video gives the video's cost:

* ``flops.prefill``: the question's tokens against the cached prefix
  (:func:`~tokenred.measure.flops.suffix_flops`), plus the prefix itself
  (:func:`~tokenred.measure.flops.prefix_flops`) for the first answer of the
  prefix, the one that built it. Under the causal convention prefix + suffix is
  exactly the full prefill, so nothing is lost or counted twice;
* ``latency_ms``: ``prefix`` (first answer only), ``question_prefill``,
  ``prefill`` (what this answer waited for before its first token: prefix +
  question for the first answer, question alone after), ``decode_per_token`` and
  ``e2e`` (vision, first answer only, + prefill + decode);
* ``meta.kv_reuse``: the split in numbers (questions sharing the prefix, this
  answer's index, prefix and question tokens and FLOPs, the timed medians, and
  each answer's even share of the prefix, ``prefix_share_flops`` /
  ``prefix_share_ms``, for an amortised view).

The mean over a run's records is therefore the per-question cost with reuse, which
the report sets beside the same reducer's run without reuse. Query-dependent
reducers (``query_agnostic = False``, e.g. FastV) never reach this step: the
runner answers them with full prefills, their manifest records
``measurement.kv_reuse.applied = 0`` (:func:`manifest_entry`) and the report marks
them not reusable.

Seeded reducers draw once per prefix: the prefix's plan is seeded from the first
question's id, so a random reducer's reused answers can differ from its
full-prefill answers (each seeded from its own id); deterministic reducers (STTM,
pooling, ToMe, ...) give the same answers either way (tested).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokenred.errors import DataError
from tokenred.measure import (
    Timer,
    measure_repeats,
    reset_peak,
    reuse_flops,
    summarize,
    timing,
)
from tokenred.protocol import Answered
from tokenred.results import SampleRecord

if TYPE_CHECKING:
    from tokenred.arch import ArchSpec
    from tokenred.data import Sample
    from tokenred.featcache import CachedVideo
    from tokenred.model_io import Generation, PrefillResult, PrefixCache
    from tokenred.protocol import SampleProtocol
    from tokenred.videos import VideoSource

log = logging.getLogger(__name__)


@dataclass
class ReusedAnswer:
    """One question answered from a shared prefix.

    Attributes:
        sample: The question.
        generation: Its greedy answer (``generation.prefill.stats.prefix_schedule``
            is the per-layer length of the reused prefix).
        index: Position among the questions sharing the prefix (0 built it).
        question_ms: Timed repeats of the question's prefill after the prefix.
        decode_ms: Timed repeats of its decoding (all steps).
    """

    sample: Sample
    generation: Generation
    index: int
    question_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)

    @property
    def question_tokens(self) -> int:
        """Tokens prefilled after the prefix (the same on every layer)."""
        stats = self.generation.prefill.stats
        prefix = stats.prefix_schedule or [0] * len(stats.schedule)
        return int(stats.schedule[0] - prefix[0])


@dataclass
class VideoAnswers:
    """Every answer of one prefix, with the prefix's own state and timings.

    Attributes:
        prefix: The prefill state of the shared prefix.
        answers: One entry per question, in dataset order.
        prefix_ms: Timed repeats of the prefix prefill (reducer included).
        reducer_ms: Timed repeats of the reducer inside the prefix prefill.
        shared_tokens: Prompt tokens after the video that the prefix holds because
            every question begins with them.
    """

    prefix: PrefillResult
    answers: list[ReusedAnswer]
    prefix_ms: list[float] = field(default_factory=list)
    reducer_ms: list[float] = field(default_factory=list)
    shared_tokens: int = 0


def video_groups(samples: Sequence[Sample], k: int) -> list[list[Sample]]:
    """Split samples into runs of consecutive questions about one video.

    A run holds at most ``k`` questions; a video's questions that are not
    consecutive (or more than ``k``) get a prefix of their own, as a server that
    keeps ``k`` answers per cached prefix would. The runner passes one video's
    questions at a time, so there this is a split into chunks of ``k``.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        msg = f"video_groups: k must be >= 1, got {k}"
        raise ValueError(msg)
    groups: list[list[Sample]] = []
    for sample in samples:
        last = groups[-1] if groups else None
        if last is not None and last[0].video_id == sample.video_id and len(last) < k:
            last.append(sample)
        else:
            groups.append([sample])
    return groups


def manifest_entry(protocol: SampleProtocol) -> dict[str, Any]:
    """Return the manifest's ``measurement.kv_reuse`` entry of a run.

    ``requested`` is ``measure.kv_reuse``, ``applied`` the questions actually
    answered per prefix (0 for a query-dependent reducer), ``query_agnostic`` the
    reducer's flag; the report's reuse table reads them.
    """
    requested = protocol.cfg.measure.kv_reuse
    agnostic = bool(protocol.reducer.query_agnostic)
    return {
        "requested": requested,
        "applied": requested if agnostic else 0,
        "query_agnostic": agnostic,
    }


class KVReuse:
    """The per-video KV-reuse step of a run: its records are the reused answers.

    Args:
        protocol: The run's protocol (adapter, plan, device, answer length, and
            the record assembly every answer shares).
        k: Questions answered from one prefix, at most.
    """

    def __init__(self, protocol: SampleProtocol, k: int) -> None:
        self.protocol = protocol
        self.k = k

    @classmethod
    def for_run(cls, protocol: SampleProtocol) -> KVReuse | None:
        """Return the step when ``measure.kv_reuse`` asks for it and can apply."""
        k = manifest_entry(protocol)["applied"]
        if protocol.cfg.measure.kv_reuse and not k:
            log.warning(
                "reducer '%s' is query-dependent: KV-cache reuse is not measured for "
                "it (a video prefix cache cannot be shared across questions)",
                protocol.cfg.reducer.name,
            )
        return cls(protocol, k) if k else None

    def records(
        self, group: Sequence[Sample], source: VideoSource
    ) -> list[SampleRecord]:
        """Answer one video's questions from shared prefixes; one record each.

        Args:
            group: The video's pending questions, in run order.
            source: Where the video's features come from.

        Returns:
            One record per question, in order; every question of a prefix whose
            video cannot be read gets an error record.
        """
        records: list[SampleRecord] = []
        for chunk in video_groups(group, self.k):
            try:
                records += self._answer(chunk, source)
            except DataError as exc:
                failed = [
                    SampleRecord.failed(s.id, s.video_id, exc, s.meta) for s in chunk
                ]
                log.warning("video %s: %s", chunk[0].video_id, failed[0].error)
                records += failed
        return records

    def _answer(
        self, chunk: Sequence[Sample], source: VideoSource
    ) -> list[SampleRecord]:
        protocol = self.protocol
        measure = protocol.cfg.measure
        video = source.get(chunk[0])
        probe = reset_peak(protocol.device) if measure.memory else None
        answers = self.answer_video(video, chunk)
        peak = probe.peak_bytes() if probe is not None else None
        kind = probe.kind if probe is not None else None
        return [
            reused_record(
                protocol.record(
                    ans.sample, video, Answered(ans.generation, {}, peak, kind)
                ),
                answers,
                ans,
                arch=protocol.adapter.arch if measure.flops else None,
                vision_ms=video.vision_ms,
                latency=measure.latency,
            )
            for ans in answers.answers
        ]

    def answer_video(
        self, video: CachedVideo, samples: Sequence[Sample]
    ) -> VideoAnswers:
        """Prefill the video prefix once and answer every question of ``samples``.

        With ``measure.latency`` the whole group (prefix, then each question's
        prefill and decoding) runs ``warmup`` untimed and ``repeats`` timed times,
        as a single answer does in the full-prefill protocol; the answers of the
        last repeat are kept (greedy decoding makes every repeat's answers equal).
        The prefix's plan is seeded from the first question's id.

        Raises:
            CompatibilityError: The reducer is query-dependent, or the adapter
                cannot prefill a question after a prefix.
        """
        protocol = self.protocol
        adapter = protocol.adapter
        measure = protocol.cfg.measure
        max_new = protocol.cfg.model.max_new_tokens

        def once(timer: Timer) -> tuple[PrefixCache, list[Generation]]:
            plan = protocol.plan(samples[0].id)
            with timing(timer):
                with timer("prefix"):
                    prefix = adapter.prefill_prefix(
                        video.features, plan, prompts=[s.prompt for s in samples]
                    )
                generations = []
                for j, sample in enumerate(samples):
                    with timer(f"q{j}.prefill"):
                        state = adapter.prefill_question(prefix, sample.prompt)
                    with timer(f"q{j}.decode"):
                        generations.append(adapter.decode(state, max_new))
            return prefix, generations

        phases: dict[str, list[float]] = {}
        if measure.latency:
            rep = measure_repeats(
                once,
                warmup=measure.warmup,
                repeats=measure.repeats,
                device=protocol.device,
            )
            (prefix, generations), phases = rep.value, rep.phases
        else:
            prefix, generations = once(Timer(protocol.device))
        answers = [
            ReusedAnswer(
                sample=sample,
                generation=gen,
                index=j,
                question_ms=phases.get(f"q{j}.prefill", []),
                decode_ms=phases.get(f"q{j}.decode", []),
            )
            for j, (sample, gen) in enumerate(zip(samples, generations, strict=True))
        ]
        return VideoAnswers(
            prefix=prefix.prefill,
            answers=answers,
            prefix_ms=phases.get("prefix", []),
            reducer_ms=phases.get("reducer", []),
            shared_tokens=len(prefix.shared_ids),
        )


def reused_record(
    record: SampleRecord,
    group: VideoAnswers,
    answer: ReusedAnswer,
    *,
    arch: ArchSpec | None,
    vision_ms: Sequence[float] = (),
    latency: bool,
) -> SampleRecord:
    """Return ``record`` (built from a reused answer) with reuse accounting.

    ``record`` is what the protocol assembles for any answer (prediction, tokens,
    schedule, decode FLOPs, memory); this replaces its prefill FLOPs and latency
    with what the reused answer computed and adds ``meta.kv_reuse``.

    Args:
        record: The answer's record as the protocol built it.
        group: The prefix the answer came from.
        answer: The answer.
        arch: The model's shape; None leaves ``flops`` as it is (FLOPs off).
        vision_ms: Timed repeats of the video's vision encoder.
        latency: Whether latency was measured.
    """
    owns = answer.index == 0
    q_tokens = answer.question_tokens
    prefix_schedule = list(group.prefix.stats.schedule)
    info: dict[str, Any] = {
        "questions": len(group.answers),
        "index": answer.index,
        "owns_prefix": owns,
        "prefix_tokens": prefix_schedule[0] if prefix_schedule else 0,
        "shared_prompt_tokens": group.shared_tokens,
        "question_tokens": q_tokens,
    }
    flops = record.flops
    if arch is not None and record.flops.prefill is not None:
        parts = reuse_flops(
            arch,
            prefix_schedule,
            q_tokens,
            owns_prefix=owns,
            attention=record.flops.attention,
        )
        flops = dataclasses.replace(record.flops, prefill=parts["prefill"])
        info["prefix_flops"] = parts["prefix"]
        info["prefix_share_flops"] = parts["prefix"] / len(group.answers)
        info["question_flops"] = parts["question"]
    latency_ms: dict[str, dict[str, float] | None] = {}
    if latency:
        latency_ms = _latency(group, answer, vision_ms, owns)
        info["prefix_ms"] = summarize(group.prefix_ms)["median"]
        info["prefix_share_ms"] = info["prefix_ms"] / len(group.answers)
        info["question_ms"] = summarize(answer.question_ms)["median"]
        info["decode_ms"] = summarize(answer.decode_ms)["median"]
    return dataclasses.replace(
        record,
        flops=flops,
        latency_ms=latency_ms,
        meta={**record.meta, "kv_reuse": info},
    )


def _latency(
    group: VideoAnswers,
    answer: ReusedAnswer,
    vision_ms: Sequence[float],
    owns: bool,
) -> dict[str, dict[str, float] | None]:
    """Latency phases of one reused answer (see the module docstring)."""
    steps = answer.generation.decode_steps
    question = list(answer.question_ms)
    prefill = (
        [p + q for p, q in zip(group.prefix_ms, question, strict=True)]
        if owns
        else question
    )
    decode = list(answer.decode_ms)
    vision = summarize(vision_ms)["median"] if (owns and vision_ms) else 0.0
    e2e = [vision + p + d for p, d in zip(prefill, decode, strict=True)]
    per_token = [d / steps for d in decode] if steps > 0 else []
    return {
        "vision": summarize(vision_ms) if (owns and vision_ms) else None,
        "reducer": summarize(group.reducer_ms) if (owns and group.reducer_ms) else None,
        "prefix": summarize(group.prefix_ms) if owns else None,
        "question_prefill": summarize(question),
        "prefill": summarize(prefill),
        "decode_per_token": summarize(per_token) if per_token else None,
        "e2e": summarize(e2e),
    }


__all__ = [
    "KVReuse",
    "ReusedAnswer",
    "VideoAnswers",
    "manifest_entry",
    "reused_record",
    "video_groups",
]
