"""Per-sample records: what one answered question leaves in a run store.

:class:`SampleRecord` (with its :class:`FlopsRecord` and :class:`MemoryRecord`) is
one line of ``samples.jsonl``. Every line is validated on read
(:func:`record_problem`, :func:`read_samples`), so a foreign or damaged line is
reported and set aside instead of failing a resume or a report;
:mod:`tokenred.results` is the store that writes and reads them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenred.measure.env import jsonable

SCHEMA_VERSION = 1
RETIRED_FIELDS = frozenset({"agree_with_unreduced"})
"""Record keys older stores may hold that no longer mean anything (never set);
reading drops them instead of carrying them in ``meta['_extra']``."""
LATENCY_PHASES = ("vision", "reducer", "prefill", "decode_per_token", "e2e")


@dataclass
class FlopsRecord:
    """Analytic FLOPs of one sample (``None`` when not computed).

    Attributes:
        prefill: LLM prefill (all layers at their scheduled length, LM head at one
            position).
        decode_per_token: Mean FLOPs of one decode step over the steps taken.
        vision: Vision tower + projector for the sample's video.
        attention: Attention counting convention (``"causal"`` or ``"full"``).
        prefill_unreduced: The same prompt's prefill with every visual token kept
            (the denominator of a ``budget.flops`` budget).
    """

    prefill: int | None = None
    decode_per_token: float | None = None
    vision: int | None = None
    attention: str = "causal"
    prefill_unreduced: int | None = None

    @property
    def prefill_ratio(self) -> float | None:
        """Achieved prefill FLOPs over the unreduced prefill of the same sample."""
        if self.prefill is None or not self.prefill_unreduced:
            return None
        return self.prefill / self.prefill_unreduced


@dataclass
class MemoryRecord:
    """Memory of one sample.

    Attributes:
        peak_bytes: Peak during the sample (see ``peak_kind``).
        peak_kind: ``cuda_allocated``, ``cpu_rss`` or ``cpu_rss_process``.
        kv_cache_bytes: Bytes of the KV cache right after prefill.
    """

    peak_bytes: int | None = None
    peak_kind: str | None = None
    kv_cache_bytes: int | None = None


@dataclass
class SampleRecord:
    """One answered (or failed) question; one JSON line of ``samples.jsonl``.

    Attributes:
        id: Sample id, unique within the dataset.
        video_id: Video the question belongs to.
        status: ``"ok"`` or ``"error"``.
        error: One-line error message when ``status == "error"``.
        attempts: How many records this sample has had in the store, this one
            included (a failed sample is retried on every rerun; the latest wins).
        prediction: Extracted answer letter, or None.
        answer: Gold letter, or None.
        correct: ``prediction == answer`` (None when unknown).
        text: Raw generated text.
        prompt: The full user text the model was given (instruction, question,
            lettered options, answer cue), so a wrong answer can be read without
            rerunning; None in records written before it was kept.
        options: The option texts, in letter order (None in older records).
        n_visual_in: Visual tokens before reduction.
        n_visual_out: Visual tokens after reduction (achieved, not requested).
        budget_tokens: The requested budget resolved to tokens.
        schedule: Sequence length of each decoder layer at prefill.
        visual_schedule: Visual tokens at each decoder layer at prefill.
        equivalent_tokens: Layer average of ``visual_schedule``.
        flops: Analytic FLOPs.
        latency_ms: Per phase (``vision``, ``reducer``, ``prefill``,
            ``decode_per_token``, ``e2e``) a summary ``{median, iqr, mean, min, max,
            n}`` in ms, or None when latency was not measured.
        memory: Peak memory and KV-cache bytes.
        reduction_info: Diagnostics the reducer reported.
        meta: Dataset metadata (task, duration bucket, ...) and extras.
        schema_version: Version of this schema.
    """

    id: str
    video_id: str = ""
    status: str = "ok"
    error: str | None = None
    attempts: int = 1
    prediction: str | None = None
    answer: str | None = None
    correct: bool | None = None
    text: str = ""
    prompt: str | None = None
    options: list[str] | None = None
    n_visual_in: int | None = None
    n_visual_out: int | None = None
    budget_tokens: int | None = None
    schedule: list[int] = field(default_factory=list)
    visual_schedule: list[int] = field(default_factory=list)
    equivalent_tokens: float | None = None
    flops: FlopsRecord = field(default_factory=FlopsRecord)
    latency_ms: dict[str, dict[str, float] | None] = field(default_factory=dict)
    memory: MemoryRecord = field(default_factory=MemoryRecord)
    reduction_info: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def failed(
        cls,
        id: str,
        video_id: str,
        error: BaseException | str,
        meta: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> SampleRecord:
        """Return an error record with a one-line message.

        Args:
            id: The sample id.
            video_id: Its video.
            error: The exception (or message) that failed it.
            meta: The sample's dataset metadata (task, duration, ...), kept so that
                failures can be broken down like answers.
            **kw: Further record fields.
        """
        is_exc = isinstance(error, BaseException)
        text = f"{type(error).__name__}: {error}" if is_exc else str(error)
        return cls(
            id=id,
            video_id=video_id,
            status="error",
            error=text.splitlines()[0] if text else "error",
            meta=dict(meta or {}),
            **kw,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict (non-finite floats become null)."""
        out: dict[str, Any] = jsonable(self)
        return out

    def to_json(self) -> str:
        """Return the record as one JSON line (no trailing newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleRecord:
        """Build a record from its JSON dict; unknown keys go to ``meta['_extra']``."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        extra = {
            k: v for k, v in data.items() if k not in names and k not in RETIRED_FIELDS
        }
        kwargs["flops"] = FlopsRecord(**_known(FlopsRecord, data.get("flops") or {}))
        kwargs["memory"] = MemoryRecord(
            **_known(MemoryRecord, data.get("memory") or {})
        )
        record = cls(**kwargs)
        if extra:
            record.meta = {**record.meta, "_extra": extra}
        return record


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


# ------------------------------------------------------------ validation on read
STATUSES = ("ok", "error")
"""Side file (in the run directory) of lines that did not fit the record schema."""

_OPTIONAL: dict[str, tuple[type, ...]] = {
    "error": (str,),
    "prediction": (str,),
    "answer": (str,),
    "correct": (bool,),
    "prompt": (str,),
    "options": (list,),
    "agree_with_unreduced": (bool,),
    "n_visual_in": (int,),
    "n_visual_out": (int,),
    "budget_tokens": (int,),
    "equivalent_tokens": (int, float),
    "flops": (dict,),
    "memory": (dict,),
}
_REQUIRED_TYPE: dict[str, tuple[type, ...]] = {
    "video_id": (str,),
    "text": (str,),
    "attempts": (int,),
    "schedule": (list,),
    "visual_schedule": (list,),
    "latency_ms": (dict,),
    "reduction_info": (dict,),
    "meta": (dict,),
    "schema_version": (int,),
}


def record_problem(data: Any) -> str | None:
    """Return why a parsed JSON line is not a :class:`SampleRecord`, or None.

    Cheap structural checks only: enough that one foreign or damaged line cannot make
    every later report, resume or score fail or disagree.
    """
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not a record object"
    rid = data.get("id")
    if not isinstance(rid, str) or not rid:
        return f"'id' must be a non-empty string, got {rid!r}"
    if data.get("status", "ok") not in STATUSES:
        return f"'status' must be one of {', '.join(STATUSES)}, got {data['status']!r}"
    for key, types in _OPTIONAL.items():
        value = data.get(key)
        if value is not None and not _is(value, types):
            return f"'{key}' must be {_names(types)} or null, got {value!r}"
    for key, types in _REQUIRED_TYPE.items():
        if key in data and not _is(data[key], types):
            return f"'{key}' must be {_names(types)}, got {data[key]!r}"
    version = data.get("schema_version", SCHEMA_VERSION)
    if version > SCHEMA_VERSION:
        return (
            f"schema_version {version} is newer than this tokenred's "
            f"{SCHEMA_VERSION}; upgrade tokenred"
        )
    return None


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not a count
    return isinstance(value, types)


def _names(types: tuple[type, ...]) -> str:
    words = {str: "a string", bool: "true/false", int: "an integer", float: "a number"}
    words |= {dict: "an object", list: "a list"}
    return " or ".join(words.get(t, t.__name__) for t in types)


@dataclass(frozen=True)
class InvalidLine:
    """A line of ``samples.jsonl`` that is not a valid record."""

    number: int
    text: str
    reason: str
