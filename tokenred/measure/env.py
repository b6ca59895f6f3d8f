"""What a run was measured on: the :class:`RunManifest` and its probes.

The manifest records package versions, the git commit, the device and the plugins,
collected once per run. Every probe degrades to ``None`` instead of failing: a
missing ``git`` binary or an uninstalled package must not stop a run.
:class:`RunManifest` is re-exported by :mod:`tokenred.results`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "tokenred",
    "torch",
    "transformers",
    "accelerate",
    "numpy",
    "pluggy",
    "omegaconf",
    "av",
    "flash-attn",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Return installed versions (None when a package is absent), plus Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Return ``{"sha": ..., "dirty": ...}`` of the checkout holding ``path``.

    Defaults to the tokenred source tree; both values are None outside a checkout.
    """
    here = Path(path) if path is not None else Path(__file__).resolve().parent
    sha = _git(["rev-parse", "HEAD"], here)
    if sha is None:
        return {"sha": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], here)
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def _cpu_model() -> str | None:
    """Return the CPU's model name (Linux ``/proc/cpuinfo``), None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip() or None
    return None


def device_info(device: str | None = "cpu") -> dict[str, Any]:
    """Return the device's kind (``cpu``/``cuda``), name and runtime versions."""
    import torch  # lazily: the report never needs torch

    dev = torch.device(device or "cpu")
    info: dict[str, Any] = {
        "kind": dev.type,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # Which CPU and which kernels (AVX-512, AVX2, ...) ran: their float results
        # differ in the last bits, so they define a "machine of the same kind".
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "cuda_version": torch.version.cuda,
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        info["name"] = torch.cuda.get_device_name(index)
        info["capability"] = list(torch.cuda.get_device_capability(index))
        info["cudnn_version"] = torch.backends.cudnn.version()
    else:
        info["name"] = platform.processor() or platform.machine() or sys.platform
    return info


def jsonable(value: Any) -> Any:
    """Convert enums, paths, dataclasses and non-finite floats to JSON values."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(jsonable(v) for v in value)  # sets have no stable order
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN/inf are not JSON; "not measured" is null
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunManifest:
    """Everything needed to interpret (and trust) a run's numbers.

    Attributes:
        run_id: The run's id (:func:`run_id` of ``config``).
        config: The resolved config as a plain dict.
        created: ISO time of the first session (kept on resume).
        updated: ISO time of this session.
        git: ``{"sha", "dirty"}`` of the tokenred checkout (None outside git).
        packages: Versions of python, torch, transformers, tokenred, ...
        device: ``kind`` (``cpu``/``cuda``), ``name``, ``cuda_version``, threads.
        attn_implementation: The attention backend the LLM ran with.
        plugins: ``{"name", "distribution", "version"}`` of every loaded plugin.
        random_weights: True when the model was built from a config (no
            checkpoint): accuracy is then meaningless.
        measurement: How costs were measured (FLOPs convention, latency protocol).
        controls: The resolved study-level controls (positions, stage, layer,
            frames, dtype, attention, threads; :mod:`tokenred.controls`).
        sessions: How many times the run was started (1 + resumes).
        schema_version: Version of the record and manifest schema.
    """

    run_id: str
    config: dict[str, Any]
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    git: dict[str, Any] = field(default_factory=dict)
    packages: dict[str, str | None] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    attn_implementation: str | None = None
    plugins: list[dict[str, Any]] = field(default_factory=list)
    random_weights: bool | None = None
    measurement: dict[str, Any] = field(default_factory=dict)
    controls: dict[str, Any] = field(default_factory=dict)
    sessions: int = 1
    schema_version: int = 1

    @classmethod
    def collect(
        cls,
        config: Mapping[str, Any],
        *,
        device: str | None = "cpu",
        attn_implementation: str | None = None,
        plugins: Iterable[Mapping[str, Any]] = (),
        random_weights: bool | None = None,
        measurement: Mapping[str, Any] | None = None,
        controls: Mapping[str, Any] | None = None,
    ) -> RunManifest:
        """Build a manifest for ``config``, probing versions, git and the device.

        Args:
            config: The resolved config as a plain dict.
            device: Device the model runs on.
            attn_implementation: LLM attention backend (``sdpa``, ``eager``, ...).
            plugins: Rows with ``name``, ``distribution`` and ``version`` (e.g.
                ``pm.plugin_rows()``).
            random_weights: Whether the model has random (config-built) weights.
            measurement: Cost settings to record (FLOPs convention, repeats...).
            controls: The run's resolved study-level controls.
        """
        from tokenred.results import run_id  # results imports this module

        rows = [
            {k: p.get(k) for k in ("name", "distribution", "version")} for p in plugins
        ]
        return cls(
            run_id=run_id(config),
            config=jsonable(config),
            git=git_state(),
            packages=package_versions(),
            device=device_info(device),
            attn_implementation=attn_implementation,
            plugins=rows,
            random_weights=random_weights,
            measurement=dict(measurement or {}),
            controls=dict(controls or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict."""
        out: dict[str, Any] = jsonable(self)
        return out
