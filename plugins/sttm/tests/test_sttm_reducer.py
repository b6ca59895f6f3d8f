"""The ``sttm`` reducer: contract suite in every mode, config, registration, order."""

from __future__ import annotations

import pytest
import torch
from sttm_inputs import blocky_video
from tokenred_sttm.merge import MergeOptions, STTMMode, sttm_merge
from tokenred_sttm.reducer import STTMConfig, STTMReducer

from tokenred import ReduceContext, VisualTokens, get_plugin_manager
from tokenred.errors import ConfigError
from tokenred.registry import Registries
from tokenred.testing import parametrize_with_checks

CONFIGS = [
    STTMConfig(),
    STTMConfig(mode="fixed"),  # type: ignore[arg-type]
    STTMConfig(budget_mode="threshold"),  # type: ignore[arg-type]
    STTMConfig(mode="fixed", budget_mode="threshold", tau_s=0.8, tau_t=0.5),  # type: ignore[arg-type]
    STTMConfig(sim_per_head=True, head_dim=4, weighted_avg=True, root_level=0),
    STTMConfig(spatial=False, budget_mode="threshold"),  # type: ignore[arg-type]
    STTMConfig(temporal=False, mode="fixed"),  # type: ignore[arg-type]
]


@parametrize_with_checks([STTMReducer(cfg) for cfg in CONFIGS])
def test_contract(reducer: STTMReducer, check: object) -> None:
    check(reducer)  # type: ignore[operator]


def _ctx(budget: int, head_dim: int | None = None) -> ReduceContext:
    return ReduceContext(
        budget=budget, generator=torch.Generator().manual_seed(0), head_dim=head_dim
    )


def test_registered_through_the_entry_point() -> None:
    registries = Registries.from_plugin_manager(get_plugin_manager())
    entry = registries.reducers.entry("sttm")
    assert entry.load() is STTMReducer
    assert entry.dist == "tokenred-sttm"
    meta = STTMReducer.metadata()
    assert meta["stages"] == ["in_llm", "pre_llm"]
    assert meta["exact_budget"] is False and meta["query_agnostic"] is True
    assert meta["position_policy"] == "reassign"
    assert meta["reference"] == "https://github.com/HYUNJS/STTM@00736c7"


def test_output_order_is_the_reference_order() -> None:
    grid = blocky_video((4, 10, 18), seed=3)
    t, h, w, c = grid.shape
    tokens = VisualTokens.from_grid(grid.reshape(-1, c), (t, h, w))
    cfg = STTMConfig(budget_mode="threshold", tau_s=0.85, tau_t=0.6)  # type: ignore[arg-type]
    red = STTMReducer(cfg).reduce(tokens, _ctx(tokens.n))
    ref = sttm_merge(grid, 0.85, 0.6, MergeOptions())
    tl = ref.tlbr[:, 0] * h * w + ref.tlbr[:, 1] * w + ref.tlbr[:, 2]
    assert torch.equal(red.representatives(), tl), "outputs follow (t, y0, x0) order"
    assert torch.equal(red.tokens.features, ref.features)
    assert torch.equal(red.tokens.sizes, ref.sizes.float())
    assert torch.equal(red.assignment, ref.assignment)
    assert red.n_out < tokens.n


def test_info_reports_what_was_used() -> None:
    grid = blocky_video((3, 14, 14), seed=1)
    tokens = VisualTokens.from_grid(grid.reshape(-1, 8), (3, 14, 14))
    red = STTMReducer(STTMConfig()).reduce(tokens, _ctx(150))
    for key in ("tau_s", "tau_t", "lambda", "n_spatial", "n_out", "search_evals"):
        assert key in red.info, key
    assert red.info["n_out"] == red.n_out <= 150
    assert red.info["n_spatial"] >= red.n_out


def test_config_validation() -> None:
    assert STTMConfig(mode="fixed").mode is STTMMode.FIXED  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"mode|STTMMode"):
        STTMConfig(mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="root_level"):
        STTMConfig(root_level=-1)
    with pytest.raises(ConfigError, match="tau_s"):
        STTMConfig(tau_s=float("nan"))
    with pytest.raises(ConfigError, match=r"budget_mode|BudgetMode"):
        STTMConfig(budget_mode="exact")  # type: ignore[arg-type]


def test_per_head_similarity_needs_a_head_width() -> None:
    tokens = VisualTokens.from_grid(torch.randn(2 * 49, 8), (2, 7, 7))
    red = STTMReducer(STTMConfig(sim_per_head=True))
    with pytest.raises(ConfigError, match="head_dim"):
        red.reduce(tokens, _ctx(50))
    with pytest.raises(ConfigError, match="head_dim"):
        red.reduce(tokens, _ctx(50, head_dim=3))
    assert red.reduce(tokens, _ctx(50, head_dim=4)).n_out <= 50


def test_per_head_similarity_changes_decisions() -> None:
    # Heads that disagree: head 0 is blocky, head 1 is noise.
    grid = blocky_video((2, 14, 14), channels=4, seed=6, noise=0.01)
    noise = torch.randn(2, 14, 14, 4, generator=torch.Generator().manual_seed(0))
    feats = torch.cat([grid * 10, noise], dim=-1)
    whole = sttm_merge(feats, 0.85, 2.0, MergeOptions())
    per_head = sttm_merge(feats, 0.85, 2.0, MergeOptions(head_dim=4))
    assert per_head.features.shape[0] > whole.features.shape[0]


def test_output_wrapping_equals_from_assignment() -> None:
    # The reducer wraps its already-ordered output without a reordering copy.
    from tokenred_sttm.reducer import _reduction

    from tokenred import Reduction

    grid = blocky_video((3, 10, 18), seed=4)
    tokens = VisualTokens.from_grid(grid.reshape(-1, 8), (3, 10, 18))
    res = sttm_merge(grid, 0.85, 0.55, MergeOptions())
    got = _reduction(tokens, res.assignment, res.features, {})
    want = Reduction.from_assignment(tokens, res.assignment, features=res.features)
    assert torch.equal(got.assignment, want.assignment)
    assert torch.equal(got.tokens.features, want.tokens.features)
    assert torch.equal(got.tokens.sizes, want.tokens.sizes)
    torch.testing.assert_close(got.tokens.coords, want.tokens.coords)


@pytest.mark.parametrize("mode", ["reference", "fixed"])
@pytest.mark.parametrize("budget_mode", ["threshold", "search"])
def test_outputs_in_first_patch_order(mode: str, budget_mode: str) -> None:
    # The reducer relies on this order instead of checking it at run time (a
    # check would read the device): output k's earliest patch precedes output
    # k+1's, after the fill's refinements too.
    for seed, grid in enumerate([(4, 10, 18), (6, 7, 9), (5, 14, 14)]):
        video = blocky_video(grid, seed=seed)
        t, h, w, c = video.shape
        tokens = VisualTokens.from_grid(video.reshape(-1, c), (t, h, w))
        cfg = STTMConfig(mode=mode, budget_mode=budget_mode)  # type: ignore[arg-type]
        for frac in (0.1, 0.3, 0.6, 0.9):
            red = STTMReducer(cfg).reduce(tokens, _ctx(max(1, int(frac * tokens.n))))
            if red.info["fallback"]:
                continue
            first = torch.full((red.n_out,), tokens.n, dtype=torch.long)
            first.scatter_reduce_(0, red.assignment, torch.arange(tokens.n), "amin")
            assert bool((first[1:] > first[:-1]).all()), (grid, frac)
