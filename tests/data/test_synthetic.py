from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tokenred.builtin.synthetic import (
    VOCABULARY,
    SyntheticConfig,
    SyntheticDataset,
    ensure_split,
    make_sample,
    words,
)
from tokenred.builtin.synthetic_render import COLORS
from tokenred.data import Sample
from tokenred.errors import ConfigError
from tokenred.video import decode_video, write_video

N = 48  # three balanced blocks of 16


def dataset(root: Path, **kw: object) -> SyntheticDataset:
    return SyntheticDataset(SyntheticConfig(root=str(root), **kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return dataset(tmp_path_factory.mktemp("synth"), num_videos=N)


# -- an oracle that answers from the decoded frames only ----------------------------


def color_presence(frames: np.ndarray, color: str) -> np.ndarray:
    """[T, H, W] bool: pixels within 50 of the palette colour on every channel."""
    ref = np.array(COLORS[color])
    return np.abs(frames.astype(int) - ref).max(axis=-1) < 50  # [T, H, W]


def present(mask: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape[0], -1).sum(axis=1) >= 40  # [T]


def color_in(text: str) -> str:
    return next(w for w in words(text) if w in COLORS)


def oracle(sample: Sample, frames: np.ndarray) -> str:
    task, opts = sample.meta["task"], list(sample.options)
    if task == "needle_color":
        brief = [o for o in opts if 1 <= present(color_presence(frames, o)).sum() <= 2]
        return sample.letters[opts.index(brief[0])] if len(brief) == 1 else "?"
    mask = (
        color_presence(frames, color_in(sample.question)) if task != "order" else None
    )
    if task == "direction":
        assert mask is not None
        first, last = (np.argwhere(mask[t]).mean(axis=0) for t in (0, -1))
        dy, dx = last - first
        move = (
            ("right" if dx > 0 else "left")
            if abs(dx) > abs(dy)
            else ("down" if dy > 0 else "up")
        )
        return sample.letters[opts.index(move)]
    if task == "count":
        assert mask is not None
        on = present(mask).astype(int)
        flashes = int(on[0] + np.sum(np.diff(on) == 1))
        return sample.letters[opts.index(str(flashes))]
    firsts = {}
    for o in opts:
        on = present(color_presence(frames, color_in(o)))
        if on.any():
            firsts[o] = int(np.flatnonzero(on)[0])
    return sample.letters[opts.index(min(firsts, key=firsts.__getitem__))]


def test_oracle_reading_decoded_frames_scores_100(generated: SyntheticDataset) -> None:
    samples = generated.samples()
    wrong = []
    for s in samples:
        frames = generated.decode_frames(s).frames
        assert frames.shape == (16, 112, 112, 3)
        if oracle(s, frames) != s.answer:
            wrong.append((s.id, s.meta["task"], s.meta["state"]))
    assert not wrong, f"oracle failed on {len(wrong)}/{len(samples)}: {wrong[:3]}"


def test_needle_is_in_exactly_one_sampled_frame(generated: SyntheticDataset) -> None:
    for s in generated.samples():
        if s.meta["task"].startswith("needle"):
            frames = generated.decode_frames(s).frames
            on = present(color_presence(frames, s.meta["state"]["color"]))
            assert on.sum() == 1, f"{s.id}: needle seen in {on.sum()} sampled frames"


def test_answers_and_tasks_are_balanced(generated: SyntheticDataset) -> None:
    samples = generated.samples()
    assert Counter(s.answer for s in samples) == {L: N // 4 for L in "ABCD"}
    tasks = Counter(s.meta["task"].split("_")[0] for s in samples)
    assert tasks == {t: N // 4 for t in ("needle", "direction", "count", "order")}


def test_only_colour_questions_have_answer_coloured_targets(
    generated: SyntheticDataset,
) -> None:
    """Direction and count ask about a distractor-coloured object, needle and order
    about answer-coloured ones: an object's colour never names a non-colour answer."""
    from tokenred.builtin.synthetic_render import ANSWER_COLORS, DISTRACTOR_COLORS

    for s in generated.samples():
        task, state = s.meta["task"], s.meta["state"]
        if task in ("direction", "count"):
            assert state["color"] in DISTRACTOR_COLORS, s.id
        elif task == "order":
            assert {state["first"], state["second"]} <= set(ANSWER_COLORS), s.id
        else:
            assert task == "needle_color" and state["color"] in ANSWER_COLORS, s.id
            assert not set(state["persistent"]) & set(ANSWER_COLORS), s.id


def test_prompts_use_the_template_and_the_vocabulary(
    generated: SyntheticDataset,
) -> None:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    vocab = set(VOCABULARY)
    assert VOCABULARY == sorted(VOCABULARY)
    for s in generated.samples():
        assert s.prompt.startswith("Select the best answer")
        assert "\nA. " in s.prompt and s.prompt.endswith("The best answer is:")
        tokens = [t for t, _ in pre.pre_tokenize_str(s.prompt)]
        assert tokens == words(s.prompt)
        assert set(tokens) <= vocab, set(tokens) - vocab
        assert set(s.letters) <= vocab


def test_generation_is_deterministic_and_prefix_stable(
    generated: SyntheticDataset, tmp_path: Path
) -> None:
    small = dataset(tmp_path / "b", num_videos=16)
    a_samples, b_samples = generated.samples()[:16], small.samples()
    assert [s.prompt for s in a_samples] == [s.prompt for s in b_samples]
    for a, b in zip(a_samples, b_samples):
        assert Path(a.video).read_bytes() == Path(b.video).read_bytes()
        np.testing.assert_array_equal(
            generated.decode_frames(a).frames, small.decode_frames(b).frames
        )
    # Growing the split to N reproduces the same annotation bytes.
    grown = dataset(tmp_path / "b", num_videos=N)
    grown.samples()
    assert (
        grown.annotation_path().read_bytes() == generated.annotation_path().read_bytes()
    )
    other = dataset(tmp_path / "c", num_videos=16, seed=1).samples()
    assert [s.prompt for s in other] != [s.prompt for s in b_samples]


def test_reencoding_in_one_process_is_byte_identical(tmp_path: Path) -> None:
    """x264 once read uninitialised memory at 112 px (mbtree, line padding): the
    first encode of a clip in a process could differ from later ones."""
    cfg = SyntheticConfig()
    clips = [make_sample(cfg, "test", i)[1] for i in range(48)]
    digests: dict[int, set[bytes]] = {}
    for _ in range(2):
        for i, frames in enumerate(clips):
            path = write_video(tmp_path / f"{i}.mp4", frames, cfg.fps)
            digests.setdefault(i, set()).add(path.read_bytes())
    assert all(len(d) == 1 for d in digests.values()), "x264 output is not reproducible"


def test_splits_differ_and_limit_applies(tmp_path: Path) -> None:
    train = dataset(tmp_path, split="train", num_videos=16, limit=5).samples()
    test = dataset(tmp_path, split="test", num_videos=16).samples()
    assert len(train) == 5 and train[0].id == "synth-train-00000"
    assert {s.prompt for s in train}.isdisjoint({s.prompt for s in test}) or (
        [s.meta["state"] for s in train] != [s.meta["state"] for s in test[:5]]
    )
    with pytest.raises(ConfigError, match="unknown split"):
        dataset(tmp_path, split="dev", num_videos=1).samples()
    with pytest.raises(ConfigError, match="multiple"):
        SyntheticConfig(source_frames=30, slots=16)


def test_default_root_is_a_keyed_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ds = SyntheticDataset(SyntheticConfig(num_videos=2))
    assert ds.root.parent == tmp_path / "tokenred" / "synthetic"
    assert ds.root != SyntheticDataset(SyntheticConfig(seed=3)).root
    assert ds.root == SyntheticDataset(SyntheticConfig(num_videos=9)).root
    assert len(ds.samples()) == 2 and Path(ds.samples()[0].video).is_file()


def test_concurrent_generation_is_safe(tmp_path: Path) -> None:
    cfg = SyntheticConfig(root=str(tmp_path), num_videos=8)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            ensure_split(tmp_path, cfg, "test", 8)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    samples = dataset(tmp_path, num_videos=8).samples()
    assert len(samples) == 8
    for s in samples:
        assert decode_video(s.video, SyntheticConfig().frames).frames.shape[0] == 16
    assert not list(tmp_path.rglob(".*.tmp")), "temporary files left behind"


def test_missing_video_is_regenerated(
    generated: SyntheticDataset, tmp_path: Path
) -> None:
    ds = dataset(tmp_path, num_videos=4)
    victim = Path(ds.samples()[2].video)
    original = victim.read_bytes()
    victim.unlink()
    assert (
        Path(dataset(tmp_path, num_videos=4).samples()[2].video).read_bytes()
        == original
    )


# -- several questions per video (data.questions_per_video) -------------------------

ONE_QUESTION_DIGEST = "27875c3a6c26fb3a3c29c1ad6f5566e5b3d40e3a2a9a8fbc0074b95f9a55bbd0"
"""SHA-256 of the annotation records and frames of the first 20 test and train
samples before questions_per_video existed: K = 1 must keep generating them."""


def test_one_question_per_video_is_byte_identical_to_before() -> None:
    import hashlib
    import json

    from tokenred.builtin.synthetic import make_video

    cfg = SyntheticConfig()
    assert cfg.questions_per_video == 1
    assert cfg.cache_key() == "61f17f1d4397b514", "the K = 1 cache key changed"
    digest = hashlib.sha256()
    for split in ("test", "train"):
        for i in range(20):
            records, frames = make_video(cfg, split, i)
            assert len(records) == 1
            digest.update(json.dumps(records[0], sort_keys=True).encode())
            digest.update(frames.tobytes())
    assert digest.hexdigest() == ONE_QUESTION_DIGEST


@pytest.fixture(scope="module")
def asked_four(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    root = tmp_path_factory.mktemp("synth4")
    return dataset(root, num_videos=12, questions_per_video=4)


def test_several_questions_share_one_video(asked_four: SyntheticDataset) -> None:
    samples = asked_four.samples()
    assert len(samples) == 48
    by_video: dict[str, list[Sample]] = {}
    for s in samples:
        by_video.setdefault(s.video_id, []).append(s)
    assert len(by_video) == 12
    for vid, qs in by_video.items():
        assert [s.id for s in qs] == [f"{vid}-q{k}" for k in range(4)]
        assert len({s.video for s in qs}) == 1
        assert sorted(s.meta["task"] for s in qs) == sorted(
            ["needle_color", "direction", "count", "order"]
        )
        assert sorted(s.answer or "" for s in qs) == list("ABCD")
    assert len(list((asked_four.root / "videos").rglob("*.mp4"))) == 12
    assert asked_four.root.name != SyntheticConfig().cache_key()


def test_oracle_answers_every_question_of_a_shared_video(
    asked_four: SyntheticDataset,
) -> None:
    """Each question stays answerable from the frames with the others' objects on
    screen (the needle is the only brief object, the mover the only one moving)."""
    wrong = []
    frames: dict[str, np.ndarray] = {}
    for s in asked_four.samples():
        if s.video not in frames:
            frames[s.video] = asked_four.decode_frames(s).frames
        if oracle(s, frames[s.video]) != s.answer:
            wrong.append((s.id, s.meta["task"], s.meta["state"]))
    assert not wrong, f"oracle failed on {len(wrong)}: {wrong[:3]}"


def test_five_questions_add_a_second_mover(tmp_path: Path) -> None:
    samples = dataset(tmp_path, num_videos=6, questions_per_video=5).samples()
    assert len(samples) == 30
    for k in range(6):
        qs = samples[5 * k : 5 * k + 5]
        movers = [s.meta["state"] for s in qs if s.meta["task"] == "direction"]
        assert len(movers) == 2
        assert movers[0]["color"] == movers[1]["color"]
        assert movers[0]["shape"] != movers[1]["shape"] != "circle"
        assert len({s.question for s in qs}) == 5, "a question repeats"
    with pytest.raises(ConfigError, match="questions_per_video"):
        SyntheticConfig(questions_per_video=6)
    with pytest.raises(ConfigError, match="questions_per_video"):
        SyntheticConfig(questions_per_video=0)


def test_a_root_holds_one_question_layout_only(
    asked_four: SyntheticDataset, tmp_path: Path
) -> None:
    root = str(asked_four.root)
    with pytest.raises(ConfigError, match="several questions per video"):
        SyntheticDataset(SyntheticConfig(root=root, num_videos=2)).samples()
    with pytest.raises(ConfigError, match="one question per video"):
        one = dataset(tmp_path, num_videos=2)
        one.samples()
        dataset(tmp_path, num_videos=2, questions_per_video=3).samples()


def test_one_question_per_video_keeps_the_run_ids_of_earlier_stores() -> None:
    """``questions_per_video = 1`` is what every run had before the key existed, so
    it is left out of the run id (stores resume); any other value is part of it."""
    from tokenred.config import load_config, to_dict
    from tokenred.results import run_id

    def ids(k: int) -> tuple[str, str]:
        cfg = load_config(overrides=[f"data.questions_per_video={k}"])
        full = to_dict(cfg)
        legacy = {**full, "data": dict(full["data"])}
        del legacy["data"]["questions_per_video"]
        return run_id(full), run_id(legacy)

    one, before = ids(1)
    assert one == before
    three, _ = ids(3)
    assert three != one
