"""The unreduced companion runs: one run id per study, whatever the flags say."""

from __future__ import annotations

import logging

import pytest

from tokenred.baselines import baseline_config, with_baselines
from tokenred.config import load_config, to_dict
from tokenred.registry import Registries
from tokenred.results import run_id


def test_reducer_none_with_a_budget_is_the_one_unreduced_run(
    registries: Registries, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(reducer="none", budget="0.5", registries=registries)
    with caplog.at_level(logging.WARNING, logger="tokenred.baselines"):
        runs = with_baselines([cfg], registries)
    assert len(runs) == 1, "the unreduced model must not run twice"
    assert run_id(to_dict(runs[0])) == run_id(
        to_dict(baseline_config(cfg, registries))
    )
    assert "ignored" in caplog.text and "ratio=0.5" in caplog.text


def test_reduced_runs_keep_their_config(registries: Registries) -> None:
    cfg = load_config(reducer="random", budget="0.3", registries=registries)
    runs = with_baselines([cfg], registries)
    assert [r.reducer.name for r in runs] == ["none", "random"]
    assert runs[1] is cfg
