"""The unreduced companion runs: one run id per study, whatever the flags say."""

from __future__ import annotations

import logging

import pytest

from tokenred.baselines import baseline_config, ignored_settings, with_baselines
from tokenred.config import load_config, to_dict
from tokenred.registry import Registries
from tokenred.results import run_id


def test_reducer_none_with_a_budget_is_the_one_unreduced_run(
    registries: Registries, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(reducer="none", budget="0.5", registries=registries)
    runs = with_baselines([cfg], registries)
    assert len(runs) == 1, "the unreduced model must not run twice"
    assert run_id(to_dict(runs[0])) == run_id(to_dict(baseline_config(cfg, registries)))
    note = ignored_settings(cfg)
    assert note is not None and "budget ratio=0.5" in note, note
    assert "insertion" not in note, "only what the user changed is named"
    plain = load_config(reducer="none", registries=registries)
    assert ignored_settings(plain) is None, "schema defaults are not worth a warning"


def test_the_ignored_settings_are_said_once_per_study(
    registries: Registries, caplog: pytest.LogCaptureFixture, tmp_path
) -> None:
    from tokenred.config import load_study
    from tokenred.runner import run_study

    study = load_study(
        reducer="none",
        budget="0.5",
        overrides=["data.limit=1", "measure.latency=false", f"output.root={tmp_path}"],
        registries=registries,
    )
    with caplog.at_level(logging.WARNING, logger="tokenred.runner"):
        run_study(study, registries)
    notes = [r for r in caplog.records if "keeps every token" in r.getMessage()]
    assert len(notes) == 1, [r.getMessage() for r in notes]


def test_reduced_runs_keep_their_config(registries: Registries) -> None:
    cfg = load_config(reducer="random", budget="0.3", registries=registries)
    runs = with_baselines([cfg], registries)
    assert [r.reducer.name for r in runs] == ["none", "random"]
    assert runs[1] is cfg
