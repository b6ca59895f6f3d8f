"""KV-cache reuse: one reduced video prefix answers several questions of a video.

A query-agnostic reducer (one whose output does not depend on the question) can
reduce a video once and serve every question about it from copies of that prefix
cache. With ``measure.kv_reuse = k`` the runner hands each video's answered samples
to :meth:`KVReuse.annotate`, which prefills the reduced prefix once per chunk of at
most ``k`` questions, answers each question from a copy, and adds the amortised
time per question (and whether the reused answer equals the full-prefill answer)
to the records. Query-dependent reducers are never reused: their prefix cannot be
shared across questions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenred.measure import Timer
from tokenred.measure.latency import summarize

if TYPE_CHECKING:
    from tokenred.data import Sample
    from tokenred.featcache import CachedVideo
    from tokenred.protocol import SampleProtocol
    from tokenred.results import SampleRecord

log = logging.getLogger(__name__)


@dataclass
class ReuseTiming:
    """What one question answered from a shared prefix cost."""

    questions: int
    prefix_ms: float
    answer_ms: float
    text: str

    @property
    def per_question_ms(self) -> float:
        """The prefix amortised over the questions, plus this question's answer."""
        return self.prefix_ms / self.questions + self.answer_ms


class KVReuse:
    """The per-video KV-reuse step of a run.

    Args:
        protocol: The run's protocol (adapter, plan, device, answer length).
        k: Questions answered from one prefix, at most.
    """

    def __init__(self, protocol: SampleProtocol, k: int) -> None:
        self.protocol = protocol
        self.k = k

    @classmethod
    def for_run(cls, protocol: SampleProtocol) -> KVReuse | None:
        """Return the step when ``measure.kv_reuse`` asks for it and can apply."""
        k = protocol.cfg.measure.kv_reuse
        if not k:
            return None
        if not protocol.reducer.query_agnostic:
            log.warning(
                "reducer '%s' is query-dependent: KV-cache reuse is not measured for "
                "it (a video prefix cache cannot be shared across questions)",
                protocol.cfg.reducer.name,
            )
            return None
        return cls(protocol, k)

    def annotate(
        self,
        group: Sequence[Sample],
        measured: Sequence[tuple[SampleRecord, CachedVideo | None]],
    ) -> None:
        """Measure reuse over one video's answered questions; extend their records.

        Args:
            group: The video's pending questions, in run order.
            measured: Their records and features from the protocol (features are
                None where the video could not be read; those are left alone).
        """
        answered = [
            (sample, record)
            for sample, (record, video) in zip(group, measured)
            if video is not None
        ]
        video = next((v for _, v in measured if v is not None), None)
        if video is None:
            return
        for start in range(0, len(answered), self.k):
            chunk = answered[start : start + self.k]
            timings = self._measure(video, [s for s, _ in chunk])
            for (_, record), reuse in zip(chunk, timings):
                record.latency_ms["kv_reuse_per_question"] = summarize(
                    [reuse.per_question_ms]
                )
                record.meta["kv_reuse"] = {
                    "questions": reuse.questions,
                    "prefix_ms": reuse.prefix_ms,
                    "answer_ms": reuse.answer_ms,
                    "same_answer": reuse.text == record.text,
                }

    def _measure(
        self, video: CachedVideo, samples: Sequence[Sample]
    ) -> list[ReuseTiming]:
        """Prefill the reduced prefix once, then answer each question from a copy."""
        protocol = self.protocol
        adapter = protocol.adapter
        timer = Timer(protocol.device)
        plan = protocol.plan(samples[0].id)
        with timer("prefix"):
            prefix = adapter.prefill_prefix(video.features, plan)
        texts = []
        for sample in samples:
            with timer("answer"):
                gen = adapter.answer(
                    prefix, sample.prompt, protocol.cfg.model.max_new_tokens
                )
            texts.append(gen.text)
        res = timer.results()
        prefix_ms = res["prefix"][0]
        return [
            ReuseTiming(len(samples), prefix_ms, answer_ms, text)
            for answer_ms, text in zip(res["answer"], texts)
        ]


__all__ = ["KVReuse", "ReuseTiming"]
