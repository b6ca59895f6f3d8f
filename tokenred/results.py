"""Per-sample records and the crash-safe run store.

A run directory holds::

    <root>/<run_id>/
        config.yaml      resolved config, as the runner wrote it
        manifest.json    RunManifest: versions, git commit, device, plugins, times
        samples.jsonl    one SampleRecord per line, append-only
        metrics.json     the dataset's aggregate metrics over the records
        .lock            fcntl.flock'ed while a process writes; holds its pid

``run_id`` is a short hash of the resolved config without its ``output`` section, so
re-running a config finds its directory and resumes it. Each record is written,
flushed and fsync'ed as one line; a kill can at worst leave a torn last line, which
:meth:`RunStore.open` detects and drops. A second writer gets :class:`RunLockedError`
at once instead of waiting (a wait would hide a mistaken double launch).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tokenred.errors import ExitCode, TokenredError
from tokenred.measure.env import RunManifest, jsonable

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RETIRED_FIELDS = frozenset({"agree_with_unreduced"})
"""Record keys older stores may hold that no longer mean anything (never set);
reading drops them instead of carrying them in ``meta['_extra']``."""
__all__ = ["RunManifest", "RunStore", "SampleRecord", "run_id"]
LATENCY_PHASES = ("vision", "reducer", "prefill", "decode_per_token", "e2e")


class RunStoreError(TokenredError):
    """A run directory is unusable (corrupt file, duplicate record, not open)."""

    exit_code = ExitCode.RUN_FAILED


class RunLockedError(RunStoreError):
    """Another process is writing to the same run directory."""


def canonical_config(config: Mapping[str, Any]) -> str:
    """Return the canonical JSON of a resolved config, without ``output``."""
    body = {k: v for k, v in jsonable(config).items() if k != "output"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def run_id(config: Mapping[str, Any], length: int = 12) -> str:
    """Return the run id: a short sha256 of :func:`canonical_config`.

    Key order, enum-vs-string spelling and the ``output`` section do not change it;
    any other value does.
    """
    return hashlib.sha256(canonical_config(config).encode()).hexdigest()[:length]


@dataclass
class FlopsRecord:
    """Analytic FLOPs of one sample (``None`` when not computed).

    Attributes:
        prefill: LLM prefill (all layers at their scheduled length, LM head at one
            position).
        decode_per_token: Mean FLOPs of one decode step over the steps taken.
        vision: Vision tower + projector for the sample's video.
        attention: Attention counting convention (``"causal"`` or ``"full"``).
    """

    prefill: int | None = None
    decode_per_token: float | None = None
    vision: int | None = None
    attention: str = "causal"


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
        prediction: Extracted answer letter, or None.
        answer: Gold letter, or None.
        correct: ``prediction == answer`` (None when unknown).
        text: Raw generated text.
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
    prediction: str | None = None
    answer: str | None = None
    correct: bool | None = None
    text: str = ""
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
        cls, id: str, video_id: str, error: BaseException | str, **kw: Any
    ) -> SampleRecord:
        """Return an error record with a one-line message."""
        is_exc = isinstance(error, BaseException)
        text = f"{type(error).__name__}: {error}" if is_exc else str(error)
        return cls(
            id=id,
            video_id=video_id,
            status="error",
            error=text.splitlines()[0] if text else "error",
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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RunStore:
    """Append-only store of one run's records, safe against kills and double runs.

    Reading (:meth:`records`, :meth:`read_manifest`) needs no lock. Writing needs
    :meth:`open`, which takes an exclusive ``fcntl.flock`` on ``.lock``, drops a torn
    last line and loads the ids already done; use it as a context manager.

    Args:
        path: The run directory (``<root>/<run_id>``).
    """

    CONFIG = "config.yaml"
    MANIFEST = "manifest.json"
    SAMPLES = "samples.jsonl"
    METRICS = "metrics.json"
    LOCK = ".lock"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._fh: IO[str] | None = None
        self._status: dict[str, str] = {}
        self._session = 1

    @classmethod
    def for_config(
        cls, root: str | os.PathLike[str], config: Mapping[str, Any]
    ) -> RunStore:
        """Return the store of ``config`` under ``root`` (not yet opened)."""
        return cls(Path(root) / run_id(config))

    @property
    def samples_path(self) -> Path:
        """Path of ``samples.jsonl``."""
        return self.path / self.SAMPLES

    @property
    def is_open(self) -> bool:
        """Whether this object holds the write lock."""
        return self._lock_fd is not None

    def __enter__(self) -> RunStore:
        return self.open() if not self.is_open else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> RunStore:
        """Take the write lock, repair a torn tail and load completed ids.

        Raises:
            RunLockedError: Another process holds the lock.
            RunStoreError: ``samples.jsonl`` is corrupt before its last line.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            msg = (
                f"run directory {self.path} is being written by another process "
                f"(pid {holder}); wait for it to finish, or set a different output.root"
            )
            raise RunLockedError(msg) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        try:
            self._repair_tail()
            self._status = {r.id: r.status for r in self.records()}
            previous = self.read_manifest() or {}
            self._session = int(previous.get("sessions", 0)) + 1
            self._fh = open(self.samples_path, "a", encoding="utf-8")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the samples file and release the lock (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _require_open(self, what: str) -> None:
        if not self.is_open:
            msg = (
                f"{what} on run {self.path} needs the write lock; call RunStore.open()"
            )
            raise RunStoreError(msg)

    def _repair_tail(self) -> None:
        """Drop an unterminated or unparsable last line left by a kill."""
        path = self.samples_path
        if not path.exists():
            return
        data = path.read_bytes()
        keep = len(data)
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
        else:
            last_start = data.rfind(b"\n", 0, max(0, keep - 1)) + 1
            try:
                if keep:
                    json.loads(data[last_start:keep])
            except ValueError:
                keep = last_start
        if keep != len(data):
            log.warning(
                "dropped a torn last record (%d bytes) from %s", len(data) - keep, path
            )
            with open(path, "r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())

    def reset(self) -> None:
        """Delete every record, the manifest and the config (``output.overwrite``)."""
        self._require_open("reset")
        if self._fh is not None:
            self._fh.close()
        for name in (self.SAMPLES, self.MANIFEST, self.CONFIG):
            (self.path / name).unlink(missing_ok=True)
        self._status, self._session = {}, 1
        self._fh = open(self.samples_path, "a", encoding="utf-8")

    def write_config(self, yaml_text: str) -> None:
        """Write the resolved config as YAML text (atomically)."""
        self._require_open("write_config")
        _atomic_write(self.path / self.CONFIG, yaml_text)

    def read_config(self) -> str | None:
        """Return the config YAML text, or None."""
        path = self.path / self.CONFIG
        return path.read_text(encoding="utf-8") if path.exists() else None

    def write_manifest(self, manifest: RunManifest) -> None:
        """Write the manifest; keeps the first ``created``, counts ``sessions``."""
        self._require_open("write_manifest")
        previous = self.read_manifest() or {}
        data = manifest.to_dict()
        data["created"] = previous.get("created") or data["created"]
        data["sessions"] = self._session
        text = json.dumps(jsonable(data), indent=2, sort_keys=True, allow_nan=False)
        _atomic_write(self.path / self.MANIFEST, text + "\n")

    def write_metrics(self, metrics: Mapping[str, float]) -> None:
        """Write the dataset's aggregate metrics as sorted JSON (atomically)."""
        self._require_open("write_metrics")
        text = json.dumps(dict(metrics), indent=2, sort_keys=True)
        _atomic_write(self.path / self.METRICS, text)

    def read_metrics(self) -> dict[str, float] | None:
        """Return the aggregate metrics, or None when the run has none yet."""
        path = self.path / self.METRICS
        if not path.is_file():
            return None
        data: dict[str, float] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def read_manifest(self) -> dict[str, Any] | None:
        """Return the manifest dict, or None when there is none yet."""
        path = self.path / self.MANIFEST
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def completed_ids(self, *, include_errors: bool = True) -> set[str]:
        """Return ids already recorded; without errors when they should be retried."""
        self._require_open("completed_ids")
        return {i for i, s in self._status.items() if include_errors or s == "ok"}

    def append(self, record: SampleRecord) -> None:
        """Append one record durably (write, flush, fsync).

        Raises:
            RunStoreError: The id already has an ``ok`` record (no duplicates), or the
                store is not open.
        """
        self._require_open("append")
        if self._status.get(record.id) == "ok":
            msg = f"sample '{record.id}' is already recorded in {self.samples_path}"
            raise RunStoreError(msg)
        assert self._fh is not None
        self._fh.write(record.to_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._status[record.id] = record.status

    def records(self, *, latest: bool = True) -> list[SampleRecord]:
        """Return the records in file order; a retried id keeps only its last record.

        An unterminated last line (a writer killed mid-line, or one still writing) is
        skipped, never repaired, so reading is safe without the lock.

        Raises:
            RunStoreError: A line other than the last is not valid JSON.
        """
        path = self.samples_path
        if not path.exists():
            return []
        lines = path.read_bytes().split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        out: dict[str, SampleRecord] | list[SampleRecord] = {} if latest else []
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                record = SampleRecord.from_dict(json.loads(line.decode("utf-8")))
            except (ValueError, TypeError) as exc:  # UnicodeDecodeError included
                if number == len(complete) and not tail:
                    continue  # a torn last line that happened to end in a newline
                msg = f"{path}:{number} is not a valid record ({exc}); fix or delete it"
                raise RunStoreError(msg) from exc
            if isinstance(out, dict):
                out.pop(record.id, None)
                out[record.id] = record
            else:
                out.append(record)
        return list(out.values()) if isinstance(out, dict) else out
