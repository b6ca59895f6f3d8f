from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from tokenred.data import FrameSampling
from tokenred.errors import ConfigError, DataError
from tokenred.video import VideoError, decode_video, sample_frame_indices, write_video


def idx(n: int, src_fps: float, **kw: object) -> list[int]:
    return sample_frame_indices(n, src_fps, FrameSampling(**kw)).tolist()  # type: ignore[arg-type]


def test_uniform_sampling_is_llava_linspace() -> None:
    assert idx(12, 4.0, num_frames=4) == [0, 3, 7, 11]
    assert idx(32, 8.0, num_frames=16) == [
        0,
        2,
        4,
        6,
        8,
        10,
        12,
        14,
        16,
        18,
        20,
        22,
        24,
        26,
        28,
        31,
    ]
    # Shorter than requested: frames repeat so T is exactly num_frames.
    assert idx(3, 1.0, num_frames=5) == [0, 0, 1, 1, 2]


def test_fps_sampling_matches_sttm_rule() -> None:
    # intv = 30 / 1; ceil(k * 30) for k < ceil(99 / 30) = 4, then the last frame.
    assert idx(100, 30.0, fps=1.0) == [0, 30, 60, 90, 99]
    # The last frame is not duplicated when it is already on the lattice.
    assert idx(91, 30.0, fps=1.0) == [0, 30, 60, 90]
    # Fractional interval: 29.97 fps -> ceil(k * 29.97).
    assert idx(70, 29.97, fps=1.0) == [0, 30, 60, 69]
    assert idx(1, 30.0, fps=1.0) == [0]
    # 2 fps on a 4 fps video: every other frame.
    assert idx(9, 4.0, fps=2.0) == [0, 2, 4, 6, 8]


def test_fps_sampling_caps_with_uniform_frames() -> None:
    out = idx(1000, 1.0, fps=1.0, max_frames=128)
    assert len(out) == 128 and out[0] == 0 and out[-1] == 999
    assert out == np.linspace(0, 999, 128, dtype=int).tolist()
    assert len(idx(180, 1.0, fps=1.0, max_frames=180)) == 180  # VNBench: no cap hit
    assert idx(10, 0.0, fps=None, max_frames=4) == [0, 3, 6, 9]  # all frames, capped
    assert idx(3, 0.0, fps=None) == [0, 1, 2]


def test_frame_sampling_validates_and_keys() -> None:
    assert FrameSampling(num_frames=16).key() == "n16"
    assert FrameSampling().key() == "fps1-max128"
    assert FrameSampling(fps=None, max_frames=8).key() == "fpsall-max8"
    for bad in ({"num_frames": 0}, {"fps": 0.0}, {"max_frames": 0}):
        with pytest.raises(ConfigError):
            FrameSampling(**bad)  # type: ignore[arg-type]


def test_decode_returns_only_sampled_frames(tiny_video: Path) -> None:
    out = decode_video(tiny_video, FrameSampling(num_frames=4))
    assert out.frames.shape == (4, 64, 64, 3) and out.frames.dtype == np.uint8
    assert out.indices.tolist() == [0, 3, 7, 11]
    np.testing.assert_allclose(out.timestamps, np.array([0, 3, 7, 11]) / 4.0)
    assert out.fps == 4.0 and out.source_frames == 12 and out.duration == 3.0
    # The white square moves 3 px per frame: its left edge is at 2 + 3 t.
    for k, t in enumerate(out.indices):
        cols = np.flatnonzero(out.frames[k, 28, :, 0] > 200)
        assert abs(cols[0] - (2 + 3 * t)) <= 1, "frame content does not match index"


def test_decode_fps_sampling_and_resize(tiny_video: Path) -> None:
    out = decode_video(tiny_video, FrameSampling(fps=1.0), size=(32, 48))
    assert out.indices.tolist() == [0, 4, 8, 11]
    assert out.frames.shape == (4, 32, 48, 3)


def test_decode_container_without_frame_count(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w", format="matroska") as c:
        s = c.add_stream("libx264", rate=5)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for t in range(10):
            frame = np.full((32, 32, 3), 20 * t, np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode())
    out = decode_video(path, FrameSampling(num_frames=3))
    assert out.source_frames == 10 and out.indices.tolist() == [0, 4, 9]
    assert abs(int(out.frames[2].mean()) - 180) <= 3


def test_write_video_is_deterministic(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    a = write_video(tmp_path / "a.mp4", frames, 8.0)
    b = write_video(tmp_path / "b.mp4", frames, 8.0)
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*tmp")), "temporary files left behind"
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", frames[:, :31], 8.0)


def _broken(tmp_path: Path, tiny_video: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = tiny_video.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(4096))
    elif kind == "text":
        path.write_text("this is not a video\n")
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "file not found"),
        ("empty", "empty"),
        ("truncated", "not a readable video"),
        ("random", "not a readable video"),
        ("text", "not a readable video"),
        ("directory", "not a file"),
    ],
)
def test_broken_videos_raise_video_error(
    tmp_path: Path, tiny_video: Path, kind: str, reason: str
) -> None:
    path = _broken(tmp_path, tiny_video, kind)
    with pytest.raises(VideoError) as info:
        decode_video(path, FrameSampling(num_frames=4))
    err = info.value
    assert isinstance(err, DataError)
    assert err.path == str(path) and reason in err.reason
    assert str(path) in str(err) and "\n" not in str(err)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_faststart_file(
    tmp_path: Path, tiny_video: Path, keep: float
) -> None:
    """The index (moov) survives at the front but the frame data is cut off."""
    src = tmp_path / "fast.mp4"
    with (
        av.open(str(tiny_video)) as inp,
        av.open(str(src), "w", format="mp4", options={"movflags": "faststart"}) as out,
    ):
        stream_in = inp.streams.video[0]
        stream_out = out.add_stream_from_template(stream_in)
        for packet in inp.demux(stream_in):
            if packet.dts is None:
                continue
            packet.stream = stream_out
            out.mux(packet)
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VideoError) as info:
        decode_video(cut, FrameSampling(num_frames=4))
    assert info.value.reason
    # The intact file decodes (the remux itself is sound).
    assert decode_video(src, FrameSampling(num_frames=4)).frames.shape[0] == 4
