"""CPU and CUDA give the same groups (run with ``-m gpu`` on a CUDA machine)."""

from __future__ import annotations

import pytest
import torch
from sttm_inputs import blocky_video
from tokenred_sttm.merge import MergeOptions, sttm_merge
from tokenred_sttm.reducer import STTMConfig, STTMReducer

from tokenred import ReduceContext, VisualTokens
from tokenred.testing import parametrize_with_checks

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reference", [True, False])
def test_cuda_matches_cpu(dtype: torch.dtype, reference: bool) -> None:
    grid = blocky_video((6, 20, 36), channels=64, seed=3).to(dtype)
    opts = MergeOptions(reference=reference)
    cpu = sttm_merge(grid, 0.85, 0.6, opts)
    gpu = sttm_merge(grid.cuda(), 0.85, 0.6, opts)
    assert torch.equal(cpu.assignment, gpu.assignment.cpu())
    assert torch.equal(cpu.tlbr, gpu.tlbr.cpu())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(
        cpu.features.float(), gpu.features.cpu().float(), rtol=tol, atol=tol
    )


def test_cuda_search_matches_cpu() -> None:
    grid = blocky_video((8, 14, 14), channels=64, seed=4)
    tokens = VisualTokens.from_grid(grid.reshape(-1, 64), (8, 14, 14))
    red = STTMReducer(STTMConfig())
    ctx = ReduceContext(budget=500, generator=torch.Generator())
    cpu = red.reduce(tokens, ctx)
    gpu_tokens = VisualTokens.from_grid(grid.reshape(-1, 64).cuda(), (8, 14, 14))
    gpu = red.reduce(gpu_tokens, ctx)
    assert torch.equal(cpu.assignment, gpu.assignment.cpu())
    assert cpu.info["tau_s"] == gpu.info["tau_s"]


@parametrize_with_checks(
    [STTMReducer(STTMConfig()), STTMReducer(STTMConfig(mode="fixed"))],  # type: ignore[arg-type]
    device="cuda",
    dtype=torch.bfloat16,
)
def test_contract_cuda_bfloat16(reducer: STTMReducer, check: object) -> None:
    check(reducer)  # type: ignore[operator]
