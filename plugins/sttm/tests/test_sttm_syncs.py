"""STTM reads the device a small, fixed number of times per reduction.

On CUDA every read-back (``.item()``, ``.tolist()``, ``nonzero``, boolean-mask
indexing, ``unique``, ...) makes the host wait for the device. These tests count
the ops that would, on CPU (:func:`tokenred.testing.record_host_reads`, the proxy
``benchmarks/gpu_suite.py`` uses too), and check that the count does not grow with
the number of frames.
"""

from __future__ import annotations

import pytest
import torch
from sttm_inputs import blocky_video
from tokenred_sttm.reducer import STTMConfig, STTMReducer

from tokenred import ReduceContext, VisualTokens
from tokenred.testing import record_host_reads


def _reads(frames: int, cfg: STTMConfig, frac: float) -> tuple[int, dict[str, float]]:
    video = blocky_video((frames, 14, 14), channels=16, seed=frames)
    tokens = VisualTokens.from_grid(video.reshape(-1, 16), (frames, 14, 14))
    budget = max(1, int(frac * tokens.n))
    ctx = ReduceContext(budget=budget, generator=torch.Generator())
    reducer = STTMReducer(cfg)
    with record_host_reads() as reads:
        red = reducer.reduce(tokens, ctx)
    return len(reads), red.info


def _label_blocks(rounds: int, first: int) -> int:
    """Read-backs of a labelling: blocks of ``first``, ``first // 2``, then x2."""
    blocks, done, block = 0, 0, first
    while done < rounds:
        blocks += 1
        done += block
        block = max(block // 2, 1) if blocks == 1 else 2 * block
    return max(blocks, 1)


@pytest.mark.parametrize("mode", ["reference", "fixed"])
def test_fixed_thresholds_read_back_a_constant_number_of_times(mode: str) -> None:
    cfg = STTMConfig(mode=mode, budget_mode="threshold", tau_s=0.8, tau_t=0.6)  # type: ignore[arg-type]
    for frames in (2, 8, 24, 48):
        count, info = _reads(frames, cfg, 1.0)
        # The level below the root (one on 14x14), the cut, the pair cosines, the
        # edge count, the averages and the input check: 6, plus the labelling's
        # blocks. Its first block is log2(T) + 1 rounds (+2 for full components);
        # full components of a near-static video take about T rounds, read back
        # log2 times.
        first = frames.bit_length() + (2 if mode == "fixed" else 0)
        assert count == 6 + _label_blocks(int(info["prop_rounds"]), first), frames
        assert count <= 7 + (mode == "fixed") * frames.bit_length(), frames


@pytest.mark.parametrize("mode", ["reference", "fixed"])
def test_search_reads_back_per_probe_not_per_frame(mode: str) -> None:
    cfg = STTMConfig(mode=mode)  # type: ignore[arg-type]
    for frames in (2, 24):
        for frac in (0.2, 0.5):
            count, info = _reads(frames, cfg, frac)
            evals = info["search_evals"]
            # each probe: cut, cache misses, cosines, edges, labelling (+ a level
            # when the walk deepens); the fill's bisection: one per step (<= 20)
            assert count <= 6 * evals + 45, (frames, frac, count, evals)
