"""The contract suite over every installed reducer, and proof that it catches bugs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tokenred import Need, ReducerConfig, Reduction, Stage, TokenReducer
from tokenred.builtin.reducers import RandomReducer
from tokenred.plugins import get_plugin_manager
from tokenred.registry import Registries
from tokenred.testing import (
    CHECKS,
    check_reducer,
    checks_table,
    parametrize_with_checks,
)

# Every reducer installed in this environment (builtins and plugins/*), timm-style.
INSTALLED = Registries.from_plugin_manager(get_plugin_manager())
NAMES = INSTALLED.reducers.names()


def test_builtins_are_installed():
    assert {"none", "random"} <= set(NAMES)


@parametrize_with_checks(NAMES, registries=INSTALLED)
def test_installed_reducer(reducer, check):
    check(reducer)


@pytest.mark.gpu
@parametrize_with_checks(
    NAMES, registries=INSTALLED, device="cuda", dtype=torch.bfloat16
)
def test_installed_reducer_cuda_bf16(reducer, check):
    check(reducer)


class Base(TokenReducer):
    """Keep the first tokens (a correct reducer to break below)."""

    name = "broken_base"
    paper = "https://example.org/paper"
    reference = "https://example.org/code@0000000"

    def reduce(self, tokens, ctx):
        keep = torch.arange(min(ctx.budget, tokens.n), device=tokens.device)
        return Reduction.from_keep_index(tokens, keep)


class OverBudget(Base):
    """Return one token too many."""

    name = "over_budget"

    def reduce(self, tokens, ctx):
        keep = torch.arange(min(ctx.budget + 1, tokens.n), device=tokens.device)
        return Reduction.from_keep_index(tokens, keep)


class Mutating(Base):
    """Scale the input features in place."""

    name = "mutating"

    def reduce(self, tokens, ctx):
        tokens.features.mul_(2)
        return super().reduce(tokens, ctx)


class GlobalRng(Base):
    """Draw from the global torch RNG instead of ctx.generator."""

    name = "global_rng"

    def reduce(self, tokens, ctx):
        keep = torch.randperm(tokens.n)[: min(ctx.budget, tokens.n)]
        return Reduction.from_keep_index(tokens, keep.to(tokens.device))


class Unordered(Base):
    """Return outputs in reverse order."""

    name = "unordered"

    def reduce(self, tokens, ctx):
        red = super().reduce(tokens, ctx)
        n_out = red.n_out
        a = torch.where(red.assignment >= 0, n_out - 1 - red.assignment, -1)
        flipped = type(red.tokens)(
            features=red.tokens.features.flip(0),
            coords=red.tokens.coords.flip(0),
            sizes=red.tokens.sizes.flip(0),
            grid=red.tokens.grid,
        )
        return Reduction(tokens=flipped, assignment=a)


class BadCoords(Base):
    """Merge pairs but report the coords of the first member only."""

    name = "bad_coords"

    def reduce(self, tokens, ctx):
        groups = torch.arange(tokens.n, device=tokens.device) // 2
        red = Reduction.from_assignment(tokens, groups)
        coords = red.tokens.coords + 5.0
        return Reduction(
            tokens=type(red.tokens)(
                red.tokens.features, coords, red.tokens.sizes, red.tokens.grid
            ),
            assignment=red.assignment,
        )


class IgnoresNeed(Base):
    """Declare attention but never read it."""

    name = "ignores_need"
    needs = frozenset({Need.ATTENTION})
    stages = frozenset({Stage.IN_LLM})


class WrongNeedError(Base):
    """Index the attention without checking it is there."""

    name = "wrong_need_error"
    needs = frozenset({Need.ATTENTION})
    stages = frozenset({Stage.IN_LLM})

    def reduce(self, tokens, ctx):
        scores = ctx.attention.mean(dim=(0, 1))  # AttributeError when missing
        keep = scores.topk(min(ctx.budget, tokens.n)).indices
        return Reduction.from_keep_index(tokens, keep)


@dataclass
class NoHelpConfig(ReducerConfig):
    name: str = "no_help"
    depth: int = 2


class NoHelp(Base):
    """A config field without help."""

    name = "no_help"
    Config = NoHelpConfig


class NoPaper(Base):
    name = "NoPaper"
    paper = ""


def failures(cls) -> dict[str, str]:
    return {r.check: r.message for r in check_reducer(cls) if not r.passed}


@pytest.mark.parametrize(
    ("cls", "check", "phrase"),
    [
        (OverBudget, "check_budget", "over the budget"),
        (Mutating, "check_no_mutation", "mutated the input features"),
        (GlobalRng, "check_deterministic", "used the global RNG"),
        (Unordered, "check_order", "not ordered by earliest source"),
        (BadCoords, "check_coords_within_sources", "outside its sources' box"),
        (IgnoresNeed, "check_needs", "declares need attention but ran without it"),
        (
            WrongNeedError,
            "check_needs",
            "raised AttributeError instead of ContractError",
        ),
        (NoHelp, "check_config", "fields without metadata help: depth"),
        (NoPaper, "check_metadata", "paper must be the paper's URL"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("check_") else None,
)
def test_broken_reducers_fail_the_named_check(cls, check, phrase):
    failed = failures(cls)
    assert check in failed, f"{cls.__name__} should fail {check}; failed: {failed}"
    assert phrase in failed[check], failed[check]
    assert failed[check].startswith(f"reducer '{cls.name}'"), (
        "messages name the reducer"
    )


def test_a_correct_reducer_passes_everything():
    assert failures(Base) == {}
    assert failures(RandomReducer) == {}


def test_only_the_relevant_checks_fail():
    assert set(failures(Mutating)) == {"check_no_mutation"}
    assert set(failures(GlobalRng)) == {"check_deterministic"}
    over = failures(OverBudget)
    assert "check_budget" in over and "check_no_mutation" not in over


def test_crashing_reducer_fails_instead_of_crashing_the_suite():
    class Crash(Base):
        name = "crash"

        def reduce(self, tokens, ctx):
            raise RuntimeError("kaboom")

    results = check_reducer(Crash)
    assert len(results) == len(CHECKS)
    assert any("RuntimeError: kaboom" in r.message for r in results)


def test_checks_table_has_one_row_per_check():
    rows = checks_table().splitlines()[2:]
    assert len(rows) == len(CHECKS)
    assert all(row.count("|") >= 3 and row.split("|")[2].strip() for row in rows)


def test_plugin_author_path_with_opt_in_fixtures(tmp_path):
    """A plugin repo's conftest opts into the fixtures; its test uses the decorator."""
    import os
    import subprocess
    import sys

    (tmp_path / "conftest.py").write_text(
        'pytest_plugins = ["tokenred.testing.fixtures"]\n'
    )
    (tmp_path / "test_plugin.py").write_text(
        "from tokenred.testing import parametrize_with_checks\n"
        "\n"
        "def test_fixtures(pm, registries):\n"
        "    assert pm.has_plugin('tokenred.builtin.reducers')\n"
        "    assert 'random' in registries.reducers\n"
        "\n"
        "@parametrize_with_checks(['random'])\n"
        "def test_contract(reducer, check):\n"
        "    check(reducer)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny tensors, shared CPU
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{1 + len(CHECKS)} passed" in proc.stdout, proc.stdout
