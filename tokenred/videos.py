"""Where a run gets a sample's visual tokens: the feature cache, or decode + encode.

A sweep over reducers and budgets reads each video's features once per model; the
vision encoder is timed when the features are computed and the timing travels with
the cached entry, so every run of a study reports the same vision latency.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tokenred.featcache import (
    CachedVideo,
    FeatureCache,
    cache_key,
    feature_cache_root,
)
from tokenred.measure import Timer, measure_repeats

if TYPE_CHECKING:
    from tokenred.adapter import ModelAdapter
    from tokenred.data import Sample, VideoDataset
    from tokenred.schema import ExperimentConfig


class VideoSource:
    """Decode + encode videos through the feature cache, timing the encoder once.

    Args:
        adapter: The loaded model adapter (its vision tower encodes).
        dataset: The dataset that decodes a sample's frames.
        cache: The feature cache (a disabled cache always misses).
        device: Where the encoder runs (selects the timing clock).
        latency: Whether to time the encoder.
        repeats: Timed encoder repeats.
    """

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

    @classmethod
    def for_run(
        cls,
        cfg: ExperimentConfig,
        adapter: ModelAdapter,
        dataset: VideoDataset,
        *,
        device: str,
        timed: bool,
    ) -> VideoSource:
        """Return the source of a run (or calibration) configured by ``cfg``.

        Args:
            cfg: Supplies the feature cache location and the encoder repeats.
            adapter: The loaded adapter.
            dataset: The run's dataset.
            device: Where the model runs.
            timed: Whether to time the encoder (``measure.latency`` of a run).
        """
        return cls(
            adapter,
            dataset,
            FeatureCache(feature_cache_root(cfg)),
            device=device,
            latency=timed,
            repeats=cfg.measure.repeats if timed else 1,
        )

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
        decoded = self.dataset.decode_frames(sample)
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


def by_video(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Group samples by video, in order of each video's first question.

    A video's questions are answered together, so its features are read once and
    the KV-reuse step sees all of them.
    """
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.video_id, []).append(sample)
    return list(groups.values())


def _timed_encode(
    adapter: ModelAdapter, frames: Any, stamps: list[float], timer: Timer
) -> None:
    with timer("vision"):
        adapter.encode_video(frames, stamps)


__all__ = ["VideoSource", "by_video"]
