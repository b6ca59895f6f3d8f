"""KV-reuse grouping: which questions share one cached video prefix."""

from __future__ import annotations

import pytest

from tokenred.data import Sample
from tokenred.reuse import video_groups


def _sample(qid: str, video: str) -> Sample:
    return Sample(
        id=qid,
        video_id=video,
        video=f"/videos/{video}.mp4",
        question="?",
        options=("a", "b"),
        answer="A",
        prompt="?",
    )


def test_consecutive_questions_of_a_video_share_a_prefix() -> None:
    samples = [_sample(f"v{v}-q{k}", f"v{v}") for v in range(3) for k in range(3)]
    groups = video_groups(samples, 5)
    assert [[s.id for s in g] for g in groups] == [
        [f"v{v}-q{k}" for k in range(3)] for v in range(3)
    ]


def test_groups_hold_at_most_k_questions() -> None:
    samples = [_sample(f"a-q{k}", "a") for k in range(5)]
    assert [len(g) for g in video_groups(samples, 2)] == [2, 2, 1]
    assert [len(g) for g in video_groups(samples, 1)] == [1] * 5


def test_a_video_asked_again_later_gets_a_new_prefix() -> None:
    ids = [("a", "a"), ("b", "b"), ("a2", "a")]
    groups = video_groups([_sample(q, v) for q, v in ids], 5)
    assert [[s.id for s in g] for g in groups] == [["a"], ["b"], ["a2"]]
    with pytest.raises(ValueError, match="k must be >= 1"):
        video_groups([], 0)
