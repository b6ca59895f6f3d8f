"""Timer, summarize and the warm-up/repeat protocol."""

from __future__ import annotations

import math

import pytest
import torch

from tokenred.measure import Timer, measure_repeats, summarize


def _work(n: int = 64) -> float:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    return float((a @ a).sum())


def test_cpu_timer_records_nested_and_repeated_phases() -> None:
    timer = Timer("cpu")
    with timer("e2e"):
        with timer("prefill"):
            _work()
        for _ in range(3):
            with timer("decode"):
                _work(16)
    res = timer.results()
    assert timer.kind == "cpu"
    assert set(res) == {"e2e", "prefill", "decode"}
    assert len(res["decode"]) == 3 and len(res["prefill"]) == 1
    assert all(v >= 0 for vs in res.values() for v in vs)
    total = timer.totals()
    assert total["e2e"] >= total["prefill"] + total["decode"], (
        "outer phase encloses inner"
    )


def test_timer_records_interval_even_when_body_raises() -> None:
    timer = Timer()
    with pytest.raises(RuntimeError), timer("prefill"):
        raise RuntimeError("boom")
    assert len(timer.results()["prefill"]) == 1


def test_summarize() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["n"] == 4
    assert s["iqr"] == pytest.approx(1.5)  # inclusive quartiles 1.75 .. 3.25
    assert s["mean"] == 2.5
    one = summarize([7.0])
    assert one["iqr"] == 0.0 and one["median"] == 7.0
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["median"])


def test_measure_repeats_discards_warmup() -> None:
    calls: list[int] = []

    def fn(timer: Timer) -> int:
        calls.append(1)
        with timer("prefill"):
            _work()
        with timer("decode"):
            _work(8)
        with timer("decode"):
            _work(8)
        return len(calls)

    out = measure_repeats(fn, warmup=2, repeats=3)
    assert len(calls) == 5, "2 warm-up + 3 timed calls"
    assert out.value == 5, "value comes from the last timed call"
    assert len(out.phases["prefill"]) == 3 and len(out.phases["decode"]) == 3
    assert out.device_kind == "cpu"
    assert out.summary()["prefill"]["n"] == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_timer_uses_events() -> None:
    timer = Timer("cuda")
    a = torch.randn(2048, 2048, device="cuda")
    with timer("big"):
        for _ in range(10):
            a = a @ a / 2048
    with timer("small"):
        b = a[:16, :16] @ a[:16, :16]
    res = timer.results()
    assert timer.kind == "cuda" and b.is_cuda
    assert res["big"][0] > res["small"][0] > 0
