"""Video decoding and writing with PyAV, and the paper's frame-sampling rules.

Decoding is sequential (PyAV cannot seek frame-accurately in every container), but
only the sampled frames are converted to RGB: conversion dominates the cost
(reference/environment.md section 5). Every failure to read a video becomes a
:class:`VideoError` carrying the path and a one-line reason, so the runner can turn
it into a per-sample error record and go on with the rest of the run.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenred.errors import DataError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from tokenred.data import FrameSampling

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".avi", ".mov")
"""File extensions tried, in order, when a loader resolves a video id to a file."""
X264_OPTIONS: dict[str, str] = {
    "preset": "veryfast",
    "threads": "1",
    # The macroblock-tree rate control reads uninitialised lookahead memory when
    # the width is not a multiple of 64 (e.g. 112 px): the same frames then gave
    # different bytes, and sometimes different pixels, from run to run.
    "x264-params": "mbtree=0",
}
"""libx264 settings of :func:`write_video`, chosen for byte-identical output."""
MIN_DECODED_SHARE = 0.9
"""Below this share of the header's frame count decoding, a video is truncated."""


class VideoError(DataError):
    """A video file is missing, empty, corrupt or unreadable.

    Attributes:
        path: The video file.
        reason: A short reason, e.g. ``"file not found"``.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        """Build the one-line message from the path and the reason."""
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


@dataclass(frozen=True)
class DecodedVideo:
    """The sampled frames of one video and where they sit in time."""

    frames: np.ndarray
    """[T, H, W, 3] uint8 RGB, only the sampled frames."""
    timestamps: np.ndarray
    """[T] float64 seconds of each sampled frame."""
    fps: float
    """Average frame rate of the source stream."""
    duration: float
    """Source duration in seconds (``source_frames / fps``)."""
    source_frames: int
    """Number of frames in the source video."""
    indices: np.ndarray
    """[T] int64 source frame index of each sampled frame."""


def sample_frame_indices(
    num_source: int, source_fps: float, sampling: FrameSampling
) -> np.ndarray:
    """Return the source frame indices to keep, following the paper's sampler.

    * ``num_frames`` set: ``linspace(0, n-1, num_frames)`` truncated to int (the
      LLaVA rule; indices repeat when the video is shorter than ``num_frames``).
    * otherwise ``fps``: every ``source_fps / fps`` frames (``ceil(k * intv)``), with
      the last frame appended; when that exceeds ``max_frames`` it switches to
      ``linspace(0, n-1, max_frames)`` (STTM ``process_video_with_decord``).
    * neither: every frame, capped at ``max_frames`` the same way.

    Args:
        num_source: Frames in the source video (>= 1).
        source_fps: Average frame rate of the source.
        sampling: The sampling policy.

    Returns:
        [T] int64 indices in increasing order.
    """
    n = int(num_source)
    if n < 1:
        msg = f"cannot sample from a video with {n} frames"
        raise ValueError(msg)
    if sampling.num_frames is not None:
        return _linspace(n, sampling.num_frames)
    if sampling.fps is not None and source_fps > 0:
        intv = source_fps / sampling.fps
        idx = np.ceil(np.arange(math.ceil((n - 1) / intv)) * intv)
        if n == 1 or idx.size == 0 or idx[-1] != n - 1:
            idx = np.concatenate([idx, [n - 1]])
        idx = np.minimum(idx, n - 1).astype(np.int64)
    else:
        idx = np.arange(n, dtype=np.int64)
    if idx.size > sampling.max_frames:
        return _linspace(n, sampling.max_frames)
    out: np.ndarray = idx
    return out


def _linspace(n: int, k: int) -> np.ndarray:
    """Return ``k`` indices spread over ``[0, n-1]``, truncated (the LLaVA rule)."""
    out: np.ndarray = np.linspace(0, n - 1, k).astype(np.int64)
    return out


def _open(path: Path) -> Any:
    import av

    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        raise VideoError(path, f"not a readable video ({_why(exc)})") from exc
    except OSError as exc:
        raise VideoError(path, f"cannot open ({exc.strerror or exc})") from exc


def _why(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).strip() or type(exc).__name__


def _count_frames(path: Path) -> int:
    """Count video packets by demuxing only (for containers without a frame count)."""
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size > 0)
    except av.FFmpegError as exc:
        raise VideoError(path, f"corrupt stream ({_why(exc)})") from exc
    finally:
        container.close()


def _stream_info(path: Path) -> tuple[int, float]:
    """Return (frame count, average fps) of the first video stream."""
    container = _open(path)
    try:
        if not container.streams.video:
            raise VideoError(path, "no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        n = int(stream.frames or 0)
    finally:
        container.close()
    if n <= 0:
        n = _count_frames(path)
    if n <= 0:
        raise VideoError(path, "the video stream has no frames")
    return n, fps


def _decode_frames(
    path: Path, wanted: Iterable[int], size: tuple[int, int] | None
) -> tuple[dict[int, np.ndarray], dict[int, float], int]:
    """Decode sequentially, converting only ``wanted`` frames.

    Returns:
        ``(rgb by index, time by index, frames decoded)``; decoding stops after the
        last wanted index.
    """
    import av

    want = set(wanted)
    last = max(want)
    rgb: dict[int, np.ndarray] = {}
    times: dict[int, float] = {}
    count = 0
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            count = i + 1
            if i in want:
                out = frame
                if size is not None:
                    out = frame.reformat(width=size[1], height=size[0])
                rgb[i] = out.to_ndarray(format="rgb24")
                times[i] = float(frame.time) if frame.time is not None else math.nan
            if i >= last:
                break
    except av.FFmpegError as exc:
        raise VideoError(path, f"corrupt stream ({_why(exc)})") from exc
    finally:
        container.close()
    return rgb, times, count


def decode_video(
    path: str | Path,
    sampling: FrameSampling,
    *,
    size: tuple[int, int] | None = None,
) -> DecodedVideo:
    """Decode the frames that ``sampling`` selects from a video file.

    Args:
        path: The video file.
        sampling: Which frames to keep (see :func:`sample_frame_indices`).
        size: Optional ``(height, width)`` to resize each kept frame to (swscale
            bicubic); ``None`` keeps the source resolution.

    Returns:
        The decoded frames and their timestamps.

    Raises:
        VideoError: The file is missing, empty, not a video, has no frames or cannot
            be decoded up to the frames sampling needs.
    """
    p = Path(path)
    if not p.is_file():
        raise VideoError(p, "file not found" if not p.exists() else "not a file")
    if p.stat().st_size == 0:
        raise VideoError(p, "file is empty (0 bytes)")
    n, fps = _stream_info(p)
    idx = sample_frame_indices(n, fps, sampling)
    rgb, times, decoded = _decode_frames(p, idx.tolist(), size)
    if len(rgb) < len(set(idx.tolist())):
        if decoded < n * MIN_DECODED_SHARE:
            raise VideoError(p, f"truncated: only {decoded} of {n} frames decode")
        # The container's frame count slightly overstated the decodable frames
        # (common for damaged tails): resample over what actually decodes.
        log.warning("%s: header says %d frames, %d decode", p, n, decoded)
        n = decoded
        idx = sample_frame_indices(n, fps, sampling)
        rgb, times, decoded = _decode_frames(p, idx.tolist(), size)
        if len(rgb) < len(set(idx.tolist())):
            raise VideoError(p, f"decoding stopped after {decoded} frames")
    frames = np.stack([rgb[i] for i in idx.tolist()])  # [T, H, W, 3]
    stamps = np.array([times[i] for i in idx.tolist()], dtype=np.float64)
    if fps > 0:
        stamps = np.where(np.isnan(stamps), idx / fps, stamps)
    return DecodedVideo(
        frames=frames,
        timestamps=stamps,
        fps=fps,
        duration=n / fps if fps > 0 else 0.0,
        source_frames=n,
        indices=idx,
    )


def write_video(
    path: str | Path, frames: np.ndarray, fps: float, *, crf: int = 18
) -> Path:
    """Write RGB frames as an H.264 mp4, deterministically and atomically.

    libx264 runs single-threaded with fixed settings (:data:`X264_OPTIONS`), explicit
    timestamps and zeroed line padding, so the same frames give the same bytes; the
    file is written next to ``path`` and renamed into place, so a concurrent reader
    never sees a half-written video.

    Args:
        path: Destination ``.mp4`` path (parent directories are created).
        frames: [T, H, W, 3] uint8 RGB; H and W must be even (yuv420p).
        fps: Frame rate written into the stream.
        crf: x264 constant rate factor (lower is higher quality).

    Returns:
        The path written.
    """
    import av

    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        msg = f"write_video: expected [T, H, W, 3] uint8 frames, got {arr.shape} "
        msg += f"{arr.dtype}"
        raise ValueError(msg)
    if arr.shape[1] % 2 or arr.shape[2] % 2:
        msg = f"write_video: yuv420p needs even H and W, got {arr.shape[1:3]}"
        raise ValueError(msg)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rate = _as_rate(fps)
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        options: dict[str, object] = {**X264_OPTIONS, "crf": str(crf)}
        stream.options = options
        for i, rgb in enumerate(arr):
            frame = _yuv420p_frame(rgb)
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, out)
    return out


def _yuv420p_frame(rgb: np.ndarray) -> Any:
    """Convert one RGB frame to a yuv420p frame whose line padding is zeroed.

    swscale leaves the padding at the end of each chroma line (56 -> 64 bytes at
    112 px) uninitialised and x264 reads it, so without this the encoded bytes
    varied from run to run although the decoded pixels did not.
    """
    import av

    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    for plane in frame.planes:
        if plane.line_size > plane.width:
            # [buffer] -> [rows, line_size]; zero the bytes past the visible width
            rows = np.frombuffer(memoryview(plane), np.uint8)
            rows = rows.reshape(-1, plane.line_size).copy()
            rows[:, plane.width :] = 0
            plane.update(rows.tobytes())
    return frame


def _as_rate(fps: float) -> Any:
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
