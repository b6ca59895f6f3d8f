"""Analytic FLOPs of answers from a cached video prefix (KV reuse)."""

from __future__ import annotations

import pytest

from tokenred.arch import ArchSpec
from tokenred.measure import prefill_flops, prefix_flops, reuse_flops, suffix_flops
from tokenred.measure.flops import MeasurementError


@pytest.mark.parametrize(
    "prefix",
    [
        [700] * 4,  # unreduced
        [210] * 4,  # pre-LLM reduction to 30 %
        [700, 700, 210, 210],  # in-LLM reduction at layer K = 2
        [0] * 4,  # no prefix: the suffix is the whole prefill
    ],
)
@pytest.mark.parametrize("question", [1, 37])
def test_prefix_plus_suffix_is_the_full_prefill_exactly(
    toy_arch: ArchSpec, prefix: list[int], question: int
) -> None:
    full = prefill_flops(toy_arch, [p + question for p in prefix])
    head = prefix_flops(toy_arch, prefix)
    tail = suffix_flops(toy_arch, prefix, question)
    assert head.total + tail.total == full.total
    for a, b, c in zip(head.per_layer, tail.per_layer, full.per_layer, strict=True):
        assert a + b == c
    assert head.lm_head == 0 and tail.lm_head == full.lm_head


def test_the_full_convention_overcounts_a_split_prefill(toy_arch: ArchSpec) -> None:
    """Why reuse is charged causally: the square double-counts the prefix rows."""
    full = prefill_flops(toy_arch, [100] * 4, attention="full").total
    split = (
        prefix_flops(toy_arch, [90] * 4, attention="full").total
        + suffix_flops(toy_arch, [90] * 4, 10, attention="full").total
    )
    assert split < full


def test_reuse_flops_charge_the_prefix_to_its_owner_only(toy_arch: ArchSpec) -> None:
    owner = reuse_flops(toy_arch, [200] * 4, 30, owns_prefix=True)
    later = reuse_flops(toy_arch, [200] * 4, 30, owns_prefix=False)
    assert owner["prefix"] == later["prefix"] == prefix_flops(toy_arch, [200] * 4).total
    assert owner["question"] == later["question"]
    assert owner["prefill"] == owner["prefix"] + owner["question"]
    assert later["prefill"] == later["question"]
    # Five answers from one prefix cost one prefix and five suffixes.
    five = owner["prefill"] + 4 * later["prefill"]
    single = prefill_flops(toy_arch, [230] * 4).total
    assert five == single + 4 * owner["question"] < 5 * single


def test_suffix_flops_reject_a_negative_question(toy_arch: ArchSpec) -> None:
    with pytest.raises(MeasurementError, match="question_tokens"):
        suffix_flops(toy_arch, [10] * 4, -1)
    with pytest.raises(MeasurementError, match="one non-negative count"):
        suffix_flops(toy_arch, [10] * 3, 5)


def test_five_answers_from_a_reduced_7b_prefix_cost_under_1_3_answers() -> None:
    """docs/measuring.md's worked example: LLaVA-OneVision-7B (Qwen2-7B), 32 frames
    (6,272 visual tokens) reduced to 30 %, 15 text tokens before the video and an
    85-token prompt after it, whose first 35 (the instruction, the same for every
    question) the prefix holds."""
    qwen7b = ArchSpec(
        family="qwen2",
        layers=28,
        hidden_size=3584,
        heads=28,
        kv_heads=4,
        head_dim=128,
        intermediate_size=18944,
        vocab_size=152064,
    )
    video = [15 + round(0.3 * 6272)] * 28
    one = prefill_flops(qwen7b, [p + 85 for p in video]).total
    prefix = [p + 35 for p in video]
    five = [reuse_flops(qwen7b, prefix, 50, owns_prefix=k == 0) for k in range(5)]
    total = sum(f["prefill"] for f in five)
    assert total / one == pytest.approx(1.104, abs=1e-3)
    # without the shared instruction in the prefix: 1.18 answers
    bare = [reuse_flops(qwen7b, video, 85, owns_prefix=k == 0) for k in range(5)]
    assert sum(f["prefill"] for f in bare) / one == pytest.approx(1.177, abs=1e-3)
