"""The crash-safe run store (its records are in :mod:`tokenred.records`).

A run directory holds::

    <root>/<run_id>/
        config.yaml      resolved config, as the runner wrote it
        manifest.json    RunManifest: versions, git commit, device, plugins, times
        samples.jsonl    one SampleRecord per line, append-only
        metrics.json     the dataset's aggregate metrics over the records
        .lock            fcntl.flock'ed while a process writes; holds its pid
        .append.lock     flock'ed around each append when several ranks share a run
        samples.quarantine.jsonl   lines that did not fit the schema (if any)

``run_id`` is a short hash of the resolved config without its ``output`` section, so
re-running a config finds its directory and resumes it. Each record is written,
flushed and fsync'ed as one line; a kill can at worst leave a torn last line, which
:meth:`RunStore.open` detects and drops. A second writer gets :class:`RunLockedError`
at once instead of waiting (a wait would hide a mistaken double launch).

Every line is validated on read (:func:`record_problem`): one foreign or damaged
line is skipped with a warning and moved aside on the next open, instead of making
every later resume or report fail or disagree. A write that fails (full disk,
read-only file system) raises :class:`RunStoreError` naming the file, and leaves the
store as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tokenred.errors import ExitCode, TokenredError
from tokenred.measure.env import RunManifest, jsonable
from tokenred.records import (
    LATENCY_PHASES,
    RETIRED_FIELDS,
    SCHEMA_VERSION,
    FlopsRecord,
    InvalidLine,
    MemoryRecord,
    SampleRecord,
    record_problem,
)

log = logging.getLogger(__name__)

__all__ = [
    "LATENCY_PHASES",
    "QUARANTINE",
    "RETIRED_FIELDS",
    "SCHEMA_VERSION",
    "FlopsRecord",
    "MemoryRecord",
    "RunLockedError",
    "RunManifest",
    "RunStore",
    "RunStoreError",
    "SampleRecord",
    "read_samples",
    "record_problem",
    "run_id",
    "strict_json",
    "unusable_note",
    "write_json",
]
QUARANTINE = "samples.quarantine.jsonl"


class RunStoreError(TokenredError):
    """A run directory is unusable (corrupt file, duplicate record, not open)."""

    exit_code = ExitCode.RUN_FAILED


class RunLockedError(RunStoreError):
    """Another process is writing to the same run directory."""


IMPLIED_BEFORE: dict[tuple[str, str], Any] = {
    ("data", "questions_per_video"): 1,
    ("model", "device_map"): None,
}
"""Config keys added after run stores existed, with the value every earlier run had.

At that value such a key is left out of the run id, so stores written before the
key existed keep their ids and resume; any other value is part of the id.
"""


def canonical_config(config: Mapping[str, Any]) -> str:
    """Return the canonical JSON of a resolved config, without ``output``.

    Keys of :data:`IMPLIED_BEFORE` at their implied value are left out too.
    """
    body = {k: v for k, v in jsonable(config).items() if k != "output"}
    for (section, key), implied in IMPLIED_BEFORE.items():
        part = body.get(section)
        if isinstance(part, dict) and key in part and part[key] == implied:
            body[section] = {k: v for k, v in part.items() if k != key}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def run_id(config: Mapping[str, Any], length: int = 12) -> str:
    """Return the run id: a short sha256 of :func:`canonical_config`.

    Key order, enum-vs-string spelling and the ``output`` section do not change it;
    any other value does.
    """
    return hashlib.sha256(canonical_config(config).encode()).hexdigest()[:length]


def read_samples(path: Path) -> tuple[list[SampleRecord], list[InvalidLine]]:
    """Parse ``samples.jsonl``: valid records in file order, and the lines that are not.

    An unterminated last line (a writer killed mid-line, or one still writing) is
    neither: it is skipped, never repaired, so reading is safe without the lock.

    Raises:
        RunStoreError: ``path`` exists but is not a regular file.
    """
    _require_file(path, "the run's record file")
    if not path.exists():
        return [], []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise store_error("read", path, exc) from exc
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    records: list[SampleRecord] = []
    invalid: list[InvalidLine] = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        text = line.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(line.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError included
            if number == len(complete) and not tail:
                continue  # a torn last line that happened to end in a newline
            invalid.append(InvalidLine(number, text, f"not JSON ({exc})"))
            continue
        problem = record_problem(parsed)
        if problem is None:
            try:
                records.append(SampleRecord.from_dict(parsed))
                continue
            except (TypeError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
        invalid.append(InvalidLine(number, text, problem))
    return records, invalid


def unusable_note(run_dirs: list[Path]) -> str:
    """Explain why stores hold no records when they hold invalid or quarantined lines.

    Returns an empty string when every store is simply empty.
    """
    invalid = quarantined = 0
    for run_dir in run_dirs:
        invalid += len(read_samples(Path(run_dir) / RunStore.SAMPLES)[1])
        side = Path(run_dir) / QUARANTINE
        if side.is_file():
            quarantined += sum(
                1 for line in side.open(encoding="utf-8") if line.strip()
            )
    parts = []
    if invalid:
        parts.append(
            f"{invalid} line(s) of samples.jsonl do not fit the record schema (see the "
            "warnings; a rerun moves them to samples.quarantine.jsonl and runs those "
            "samples again)"
        )
    if quarantined:
        parts.append(f"{quarantined} line(s) are in samples.quarantine.jsonl")
    return "; ".join(parts)


def _invalid_summary(path: Path, invalid: list[InvalidLine]) -> str:
    first = invalid[0]
    return (
        f"{len(invalid)} line(s) of {path} do not fit the record schema "
        f"(line {first.number}: {first.reason})"
    )


def _require_file(path: Path, what: str) -> None:
    if path.exists() and not path.is_file():
        msg = (
            f"{path} should be {what} but is a "
            f"{'directory' if path.is_dir() else 'special file'}; move it away "
            f"(e.g. mv {path} {path}.bak) and rerun"
        )
        raise RunStoreError(msg)


# ------------------------------------------------------------------- writing safely
_WRITE_FIX = {
    errno.ENOSPC: "free disk space, or set output.root to another disk",
    errno.EDQUOT: "free space within your disk quota, or set output.root elsewhere",
    errno.EROFS: "the file system is read-only; set output.root to a writable place",
    errno.EACCES: "fix the permissions, or set output.root to a writable place",
    errno.EPERM: "fix the permissions, or set output.root to a writable place",
    errno.EISDIR: "a directory is in the way; move it away",
}


def store_error(action: str, path: Path, exc: OSError) -> RunStoreError:
    """Turn an OSError on a run-store file into one line naming the file and fix."""
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc)
    fix = _WRITE_FIX.get(exc.errno or 0, "check the disk and the path")
    msg = (
        f"cannot {action} {path}: {reason}{f' ({code})' if code else ''}; {fix}. "
        "Records already written are kept; rerun to resume"
    )
    return RunStoreError(msg)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (os.write may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def strict_json(obj: Any, **kwargs: Any) -> str:
    """Return strict JSON: NaN and infinity become null (Python would write NaN).

    Args:
        obj: A JSON-able value; enums, paths and dataclasses are converted too.
        **kwargs: Passed to :func:`json.dumps` (``indent``, ``sort_keys``...).
    """
    return json.dumps(jsonable(obj), allow_nan=False, **kwargs)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict, indented JSON atomically (e.g. ``metrics.json``).

    Raises:
        RunStoreError: Naming the file when it cannot be written (full disk, ...).
    """
    _atomic_write(Path(path), strict_json(obj, indent=2, sort_keys=True) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # the old file, if any, is untouched
        raise store_error("write", path, exc) from exc


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
        self._fd: int | None = None
        self._status: dict[str, str] = {}
        self._attempts: dict[str, int] = {}
        self._session = 1
        self._shared = False
        self._joined = False
        self.invalid_lines: list[InvalidLine] = []
        """Lines the last :meth:`records` call skipped."""

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
        """Whether this object holds the write lock (or joined its holder)."""
        return self._lock_fd is not None or self._joined

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
        lock = self.path / self.LOCK
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            _require_file(lock, "the run's lock file")
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise store_error("create", lock, exc) from exc
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
        self._lock_fd = fd
        try:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as exc:
                raise store_error("write", lock, exc) from exc
            self._repair_tail()
            self._quarantine()
            self._load_status()
            previous = self._manifest_or_set_aside()
            self._session = int(previous.get("sessions", 0)) + 1
            self._open_samples()
        except BaseException:
            self.close()
            raise
        return self

    def share(self) -> RunStore:
        """Let other processes :meth:`join` this open store (data-parallel ranks).

        From now on every append, this process's included, takes a short
        exclusive ``flock`` on ``.append.lock``, so lines of different ranks never
        interleave and a line torn by a killed rank cannot swallow the next one.
        """
        self._require_open("share")
        self._shared = True
        return self

    def join(self) -> RunStore:
        """Append to a store that another process holds open and shares.

        The holder (rank 0) took the run lock and repaired the file before the
        other ranks join (the caller orders that with a barrier); a joined store
        reads the recorded ids and appends under the short append lock, and never
        writes the config, manifest or metrics.
        """
        self._joined, self._shared = True, True
        try:
            self._load_status()
            self._open_samples()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the samples file and release the lock (idempotent)."""
        self._joined = self._shared = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
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
        _require_file(path, "the run's record file")
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
            try:
                with open(path, "r+b") as fh:
                    fh.truncate(keep)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise store_error("repair", path, exc) from exc

    def reset(self) -> None:
        """Delete every record, the manifest and the config (``output.overwrite``)."""
        self._require_open("reset")
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for name in (self.SAMPLES, self.MANIFEST, self.CONFIG):
            try:
                (self.path / name).unlink(missing_ok=True)
            except OSError as exc:
                raise store_error("delete", self.path / name, exc) from exc
        self._status, self._attempts, self._session = {}, {}, 1
        self._open_samples()

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
        text = strict_json(dict(metrics), indent=2, sort_keys=True)  # NaN -> null
        _atomic_write(self.path / self.METRICS, text)

    def read_metrics(self) -> dict[str, float] | None:
        """Return the aggregate metrics, or None when the run has none yet."""
        path = self.path / self.METRICS
        if not path.is_file():
            return None
        data: dict[str, float] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def read_manifest(self) -> dict[str, Any] | None:
        """Return the manifest dict, or None when there is none yet.

        Raises:
            RunStoreError: The manifest is not a JSON object (naming the file).
        """
        path = self.path / self.MANIFEST
        if not path.exists():
            return None
        _require_file(path, "the run's manifest")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise store_error("read", path, exc) from exc
        except ValueError as exc:  # UnicodeDecodeError included
            msg = (
                f"{path} is not valid JSON ({exc}); move it away and rerun the "
                "config to rewrite it (its records are kept)"
            )
            raise RunStoreError(msg) from None
        if not isinstance(data, dict):
            msg = (
                f"{path} holds a JSON {type(data).__name__}, not a manifest object; "
                "move it away and rerun the config to rewrite it"
            )
            raise RunStoreError(msg)
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
        assert self._fd is not None
        record.attempts = self._attempts.get(record.id, 0) + 1
        line = (record.to_json() + "\n").encode("utf-8")
        if self._shared:
            with self._append_lock():
                self._write_line(self._fd, line, fresh_line=True)
        else:
            self._write_line(self._fd, line, fresh_line=False)
        self._status[record.id] = record.status
        self._attempts[record.id] = record.attempts

    def _write_line(self, fd: int, line: bytes, *, fresh_line: bool) -> None:
        """Write one record line durably; on failure cut it so nothing changes.

        With ``fresh_line`` (shared stores) an unterminated tail left by a killed
        rank is first ended with a newline, so it stays one invalid line (moved
        aside on the next open) instead of corrupting this record.
        """
        size = os.fstat(fd).st_size
        if fresh_line and size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            _write_all(fd, line)
            os.fsync(fd)
        except OSError as exc:
            # Cut a partly written line so the store stays exactly as it was.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise store_error("write", self.samples_path, exc) from exc

    @contextlib.contextmanager
    def _append_lock(self) -> Iterator[None]:
        """Hold ``.append.lock`` exclusively for one append (blocking, short)."""
        path = self.path / ".append.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise store_error("create", path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def records(self, *, latest: bool = True) -> list[SampleRecord]:
        """Return the records in file order; a retried id keeps only its last record.

        An unterminated last line (a writer killed mid-line, or one still writing) is
        skipped, never repaired, so reading is safe without the lock. Lines that do
        not fit the record schema are skipped with one warning; the next
        :meth:`open` moves them to ``samples.quarantine.jsonl``.

        Raises:
            RunStoreError: ``samples.jsonl`` is not a regular file.
        """
        records, invalid = read_samples(self.samples_path)
        self.invalid_lines = invalid
        if invalid:
            log.warning(
                "%s; skipped (they move to %s when the run is next opened)",
                _invalid_summary(self.samples_path, invalid),
                self.path / QUARANTINE,
            )
        if not latest:
            return records
        out: dict[str, SampleRecord] = {}
        for record in records:
            out.pop(record.id, None)
            out[record.id] = record
        return list(out.values())

    # ------------------------------------------------------- repairs under the lock
    def _open_samples(self) -> None:
        try:
            self._fd = os.open(
                self.samples_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644
            )
        except OSError as exc:
            raise store_error("open", self.samples_path, exc) from exc

    def _load_status(self) -> None:
        """Latest status and attempt count per id (old files count their lines)."""
        self._status, self._attempts = {}, {}
        for r in self.records(latest=False):
            self._status[r.id] = r.status
            self._attempts[r.id] = max(r.attempts, self._attempts.get(r.id, 0) + 1)

    def _quarantine(self) -> None:
        """Move lines that are not valid records to the quarantine side file.

        They are kept, with their line number and the reason, so nothing is lost;
        ``samples.jsonl`` is rewritten atomically without them.
        """
        path = self.samples_path
        _, invalid = read_samples(path)
        if not invalid:
            return
        side = self.path / QUARANTINE
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        entries = "".join(
            json.dumps(
                {"line": b.number, "reason": b.reason, "text": b.text, "moved": stamp},
                ensure_ascii=False,
            )
            + "\n"
            for b in invalid
        )
        bad = {b.number for b in invalid}
        lines = path.read_bytes().split(b"\n")
        kept = b"".join(
            line + b"\n"
            for number, line in enumerate(lines[:-1], start=1)
            if number not in bad
        )
        try:
            with open(side, "a", encoding="utf-8") as fh:
                fh.write(entries)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise store_error("write", side, exc) from exc
        _atomic_write_bytes(path, kept + lines[-1])
        log.warning("%s; moved them to %s", _invalid_summary(path, invalid), side)

    def _manifest_or_set_aside(self) -> dict[str, Any]:
        """Return the previous manifest; a corrupt one is renamed, not trusted."""
        try:
            return self.read_manifest() or {}
        except RunStoreError as exc:
            path = self.path / self.MANIFEST
            aside = path.with_name(path.name + ".corrupt")
            try:
                os.replace(path, aside)
            except OSError as err:
                raise store_error("move", path, err) from err
            log.warning("%s; kept it as %s and write a new one", exc, aside)
            return {}
