"""Golden tests: ``reference``-mode outputs pinned on small fixed inputs.

``golden_reference.json`` was written by ``make_golden.py`` (see its docstring for
the procedure: oracle cross-check and a 1e-3 decision margin on both thresholds).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenred_sttm.merge import MergeOptions, sttm_merge
from tokenred_sttm.reducer import STTMConfig, STTMReducer

from tokenred import ReduceContext, VisualTokens

GOLDEN = json.loads((Path(__file__).parent / "golden_reference.json").read_text())
CASES = {case["name"]: case for case in GOLDEN["cases"]}


def _grid(case: dict) -> torch.Tensor:
    t, h, w = case["grid"]
    return torch.tensor(case["input"], dtype=torch.float32).reshape(t, h, w, -1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_output_is_pinned(name: str) -> None:
    case = CASES[name]
    opts = MergeOptions(reference=True, **case["options"])
    got = sttm_merge(_grid(case), case["tau_s"], case["tau_t"], opts)
    assert got.tlbr.tolist() == case["tlbr"], "token regions/order changed"
    assert got.sizes.tolist() == case["sizes"], "token sizes changed"
    assert got.assignment.tolist() == case["assignment"], "assignment changed"
    want = torch.tensor(case["features"], dtype=torch.float32)
    torch.testing.assert_close(got.features, want, rtol=1e-6, atol=1e-6)


def test_reducer_reproduces_the_golden_in_threshold_mode() -> None:
    case = CASES["llava_14x14_root1"]
    grid = _grid(case)
    t, h, w, c = grid.shape
    tokens = VisualTokens.from_grid(grid.reshape(-1, c), (t, h, w))
    cfg = STTMConfig(budget_mode="threshold", tau_s=case["tau_s"], tau_t=case["tau_t"])  # type: ignore[arg-type]
    ctx = ReduceContext(budget=tokens.n, generator=torch.Generator())
    red = STTMReducer(cfg).reduce(tokens, ctx)
    assert red.assignment.tolist() == case["assignment"]
    want = torch.tensor(case["features"], dtype=torch.float32)
    torch.testing.assert_close(red.tokens.features, want, rtol=1e-6, atol=1e-6)
    # Members merge toward the earliest frame: no token's time centroid lies
    # before its representative's frame.
    box = torch.tensor(case["tlbr"], dtype=torch.float32)
    assert bool((red.tokens.coords[:, 0] >= box[:, 0]).all())
