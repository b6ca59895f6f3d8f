from __future__ import annotations

import pytest
import torch
from tokenred_fastv.reducer import FastVConfig, FastVReducer

from tokenred import ContractError, ReduceContext, Stage, VisualTokens
from tokenred import validate_reduction as validate
from tokenred.testing import parametrize_with_checks

GRID = (2, 4, 5)
N = 40


def _tokens() -> VisualTokens:
    gen = torch.Generator().manual_seed(0)
    return VisualTokens.from_grid(torch.randn(N, 8, generator=gen), GRID)


def _ctx(budget: int, attention: torch.Tensor | None) -> ReduceContext:
    return ReduceContext(
        budget=budget,
        generator=torch.Generator().manual_seed(0),
        stage=Stage.IN_LLM,
        layer=2,
        attention=attention,
    )


def _planted(top: list[int], decoy: list[int]) -> torch.Tensor:
    """[heads=4, Q=3, N]: the last row's head mean ranks ``top`` first.

    Each head alone favours a different half of ``top`` (so a single head would
    pick wrongly), and the earlier query rows favour ``decoy``.
    """
    gen = torch.Generator().manual_seed(1)
    att = 0.01 * torch.rand(4, 3, N, generator=gen)
    half = len(top) // 2
    att[0, -1, top[:half]] += 1.0
    att[1, -1, top[half:]] += 1.0
    att[2, -1, top] += 0.3
    att[3, -1, decoy] += 0.8  # one head likes the decoys, the mean does not
    att[:, :-1, decoy] += 5.0
    return att / att.sum(dim=-1, keepdim=True)


def test_keeps_exactly_the_top_attention_tokens() -> None:
    top = [3, 39, 17, 8, 25, 0]
    decoy = [1, 2, 4, 5, 6, 7]
    tokens = _tokens()
    red = FastVReducer().reduce(tokens, _ctx(len(top), _planted(top, decoy)))
    validate(tokens, red, len(top), "fastv")
    kept = torch.nonzero(red.assignment >= 0).squeeze(1)
    assert kept.tolist() == sorted(top)
    # Original positions survive: coords and features are the kept originals.
    assert torch.equal(red.tokens.coords, tokens.coords[sorted(top)])
    assert torch.equal(red.tokens.features, tokens.features[sorted(top)])
    assert torch.equal(red.representatives(), torch.tensor(sorted(top)))


def test_all_query_rows_option_follows_the_mean() -> None:
    top = [3, 39, 17, 8]
    decoy = [1, 2, 4, 5]
    tokens = _tokens()
    cfg = FastVConfig(last_query_only=False)
    red = FastVReducer(cfg).reduce(tokens, _ctx(4, _planted(top, decoy)))
    assert torch.nonzero(red.assignment >= 0).squeeze(1).tolist() == decoy


def test_ties_break_towards_earlier_tokens() -> None:
    att = torch.full((2, 1, N), 1.0 / N)
    red = FastVReducer().reduce(_tokens(), _ctx(5, att))
    assert torch.nonzero(red.assignment >= 0).squeeze(1).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("budget", [1, 10, 39, 40, 43])
def test_exact_budget(budget: int) -> None:
    tokens = _tokens()
    att = torch.rand(2, 3, N, generator=torch.Generator().manual_seed(2))
    red = FastVReducer().reduce(tokens, _ctx(budget, att.softmax(-1)))
    validate(tokens, red, budget, "fastv")
    assert red.n_out == min(budget, N)
    if budget >= N:
        assert torch.equal(red.assignment, torch.arange(N))
        assert 0.999 < red.info["kept_attention"] <= 1.0 + 1e-6


def test_refuses_without_attention() -> None:
    with pytest.raises(ContractError, match=r"fastv.*attention.*layer 2"):
        FastVReducer().reduce(_tokens(), _ctx(4, None))


def test_refuses_attention_over_the_wrong_span() -> None:
    with pytest.raises(ContractError, match=r"\[heads, Q, 40\]"):
        FastVReducer().reduce(_tokens(), _ctx(4, torch.rand(2, 1, N + 7)))


def test_bfloat16_attention() -> None:
    top = [3, 39, 17, 8]
    att = _planted(top, [1, 2, 4, 5]).bfloat16()
    red = FastVReducer().reduce(_tokens(), _ctx(4, att))
    assert torch.nonzero(red.assignment >= 0).squeeze(1).tolist() == sorted(top)


def test_metadata() -> None:
    meta = FastVReducer.metadata()
    assert meta["needs"] == ["attention"]
    assert meta["stages"] == ["in_llm"]
    assert meta["query_agnostic"] is False
    assert meta["exact_budget"] is True
    assert meta["position_policy"] == "survive"


@parametrize_with_checks(["fastv", FastVReducer(FastVConfig(last_query_only=False))])
def test_contract(reducer, check) -> None:  # type: ignore[no-untyped-def]
    check(reducer)
