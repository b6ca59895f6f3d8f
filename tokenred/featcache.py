"""On-disk cache of vision-encoder outputs, keyed by model, video and frame sampling.

A sweep over reducers and budgets decodes and encodes each video once, as the STTM
authors pre-extract features for the same reason. Entries are written atomically
(temporary file, then rename), so a killed run never leaves a torn entry, and two
processes encoding the same video at once both end with an identical, valid entry.

A cached entry stores the features exactly (safetensors keeps the dtype and bits),
so cached and uncached runs produce identical records apart from timings; the
vision latency measured when the entry was written travels with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenred.adapter import ModelAdapter
    from tokenred.data import FrameSampling
    from tokenred.model_io import VideoFeatures
    from tokenred.schema import ExperimentConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the meaning of a cached entry changes."""


@dataclass
class CachedVideo:
    """A video's features plus what was measured when they were computed.

    Attributes:
        features: The adapter's visual tokens.
        num_frames: Frames decoded.
        timestamps: Seconds of the sampled frames.
        vision_ms: Timed repeats of the vision encoder + projector, in ms (empty when
            latency was not measured).
        decode_ms: Wall time of decoding the sampled frames, in ms.
        hit: Whether the entry came from disk.
    """

    features: VideoFeatures
    num_frames: int
    timestamps: list[float] = field(default_factory=list)
    vision_ms: list[float] = field(default_factory=list)
    decode_ms: float | None = None
    hit: bool = False


def feature_cache_root(cfg: ExperimentConfig) -> Path | None:
    """Return ``output.root/_features``, or None when ``output.feature_cache`` is off.

    Runs and calibration share it, so a study's videos are encoded once.
    """
    if not cfg.output.feature_cache:
        return None
    return Path(cfg.output.root) / "_features"


def _video_identity(path: str) -> dict[str, Any]:
    """Name a video file by path, size and modification time (cheap, no hashing)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return {"path": str(p.resolve()), "size": None, "mtime_ns": None}
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(adapter: ModelAdapter, video_path: str, sampling: FrameSampling) -> str:
    """Return the hex key of one (model, video, frame sampling) triple.

    The model part is the adapter's manifest description (name, family, checkpoint
    path, dtype, device kind, random-weight seed) so a different checkpoint or
    precision never reuses another model's features.
    """
    desc = adapter.describe()
    model = {
        k: desc.get(k) for k in ("name", "family", "path", "dtype", "random_weights")
    }
    model["seed"] = getattr(adapter.config, "seed", None)
    model["weights"] = desc.get("weights_fingerprint")
    model["device_type"] = str(desc.get("device", "cpu")).split(":")[0]
    payload = {
        "v": CACHE_VERSION,
        "model": model,
        "video": _video_identity(video_path),
        "sampling": sampling.key(),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class FeatureCache:
    """Directory of ``<key>.safetensors`` + ``<key>.json`` entries.

    Args:
        root: Cache directory; None disables caching (every lookup misses).
    """

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.root is not None
        return self.root / f"{key}.safetensors", self.root / f"{key}.json"

    def load(self, key: str, device: str | None = None) -> CachedVideo | None:
        """Return the cached entry or None (also for an unreadable entry)."""
        if self.root is None:
            return None
        tensors, meta = self._paths(key)
        if not (tensors.is_file() and meta.is_file()):
            return None
        from tokenred.model_io import VideoFeatures

        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            feats = VideoFeatures.load(tensors, device=device)
        except Exception as exc:  # a damaged entry is recomputed, never fatal
            log.warning("feature cache entry %s unreadable (%s); recomputing", key, exc)
            return None
        return CachedVideo(
            features=feats,
            num_frames=int(info["num_frames"]),
            timestamps=[float(t) for t in info.get("timestamps", [])],
            vision_ms=[float(t) for t in info.get("vision_ms", [])],
            decode_ms=info.get("decode_ms"),
            hit=True,
        )

    def save(self, key: str, entry: CachedVideo) -> None:
        """Write an entry atomically (no-op when caching is off)."""
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tensors, meta = self._paths(key)
        suffix = f".{os.getpid()}.tmp"
        tmp_t = tensors.with_name(tensors.name + suffix)
        tmp_m = meta.with_name(meta.name + suffix)
        entry.features.save(tmp_t)
        info = {
            "num_frames": entry.num_frames,
            "timestamps": entry.timestamps,
            "vision_ms": entry.vision_ms,
            "decode_ms": entry.decode_ms,
            "version": CACHE_VERSION,
        }
        tmp_m.write_text(json.dumps(info), encoding="utf-8")
        # Tensors first: a reader only trusts an entry whose .json exists.
        os.replace(tmp_t, tensors)
        os.replace(tmp_m, meta)
