"""Reducers that return NaN or Inf are failed at run time and by the contract suite."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from tokenred import Reduction, TokenReducer, hookimpl
from tokenred.cli import main
from tokenred.errors import ExitCode
from tokenred.testing import check_reducer


class NanReducer(TokenReducer):
    """Keep the first tokens, with NaN features (a broken reducer)."""

    name = "nan_features"
    paper = "https://example.org/paper"
    reference = "https://example.org/code@0000000"
    value = float("nan")

    def reduce(self, tokens: Any, ctx: Any) -> Reduction:
        keep = torch.arange(min(ctx.budget, tokens.n), device=tokens.device)
        out = Reduction.from_keep_index(tokens, keep)
        feats = out.tokens.features.clone()
        feats[0, 0] = self.value
        tokens = dataclasses.replace(out.tokens, features=feats)
        return dataclasses.replace(out, tokens=tokens)


class InfReducer(NanReducer):
    """Keep the first tokens, one feature +Inf."""

    name = "inf_features"
    value = float("inf")


class Plugin:
    @hookimpl
    def register_reducers(self, register: Any) -> None:
        register(NanReducer)
        register(InfReducer)


@pytest.mark.parametrize("cls", [NanReducer, InfReducer])
def test_contract_suite_fails_non_finite_features(cls):
    failed = {r.check: r.message for r in check_reducer(cls) if not r.passed}
    assert "check_finite" in failed
    assert failed["check_finite"].startswith(f"reducer '{cls.name}'")
    assert "NaN or Inf" in failed["check_finite"]


def test_tokenred_check_exits_1_for_non_finite(capsys, no_autoload):
    code = main(["check", "inf_features"], plugins=[Plugin()])
    out = capsys.readouterr().out
    assert code == ExitCode.RUN_FAILED
    assert "FAIL check_finite: reducer 'inf_features'" in out


def test_run_stops_on_non_finite_features(capsys, no_autoload, tmp_path: Path):
    argv = [
        "run",
        "--reducer",
        "nan_features",
        "--budget",
        "0.3",
        f"output.root={tmp_path / 'runs'}",
        f"data.root={tmp_path / 'data'}",
        "data.num_videos=1",
        "model.max_new_tokens=2",
        "measure.latency=false",
    ]
    code = main(argv, plugins=[Plugin()])
    err = capsys.readouterr().err
    assert code == ExitCode.RUN_FAILED, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: reducer 'nan_features")
    assert "NaN or Inf" in line


class OverBudget(NanReducer):
    """Keep one token more than the budget allows."""

    name = "over_budget_cli"

    def reduce(self, tokens: Any, ctx: Any) -> Reduction:
        keep = torch.arange(min(ctx.budget + 1, tokens.n), device=tokens.device)
        return Reduction.from_keep_index(tokens, keep)


class OverBudgetPlugin:
    @hookimpl
    def register_reducers(self, register: Any) -> None:
        register(OverBudget)


def test_tokenred_check_fails_a_reducer_that_ignores_its_budget(capsys, no_autoload):
    code = main(["check", "over_budget_cli"], plugins=[OverBudgetPlugin()])
    out = capsys.readouterr().out
    assert code == ExitCode.RUN_FAILED
    assert "FAIL check_budget: reducer 'over_budget_cli'" in out
    assert "over the budget" in out


def test_huge_finite_features_are_not_a_false_alarm():
    from tokenred import VisualTokens, validate_reduction

    feats = torch.full((12, 4), 3.0e38)  # finite; their float32 sum overflows
    tokens = VisualTokens.from_grid(feats, (2, 2, 3))
    red = Reduction.from_keep_index(tokens, torch.tensor([1, 4, 8]))
    assert validate_reduction(tokens, red, budget=3) is red
