"""Fair comparisons by construction (issue 16): study-level controls, FLOPs budgets.

Unit cases for the budget unit and the control resolution, then end-to-end runs on
the embedded tiny model: compute-matched budgets land inside their FLOPs window on
every sample, an unreachable one fails before running, every run of a study
records the same controls, and a table that mixes position policies says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tokenred.arch import ArchSpec
from tokenred.cli import main
from tokenred.config import load_config
from tokenred.controls import (
    describe_controls,
    header_line,
    mixed_controls,
    resolve_insertion,
)
from tokenred.errors import ConfigError, ContractError
from tokenred.measure.flops import flops_fraction, tokens_for_flops
from tokenred.plan import BudgetCost, BudgetSpec, check_flops_reachable
from tokenred.results import RunStore
from tokenred.schema import InsertionConfig, parse_budget
from tokenred.tokens import PositionPolicy, Stage


# ------------------------------------------------------------------ budget unit
def test_flops_budget_is_one_of_three_alternatives() -> None:
    assert BudgetSpec(flops=0.7).unit == "flops"
    assert BudgetSpec(flops=0.7).describe() == "flops=0.7"
    with pytest.raises(ConfigError, match=r"both budget\.ratio=0\.3 and budget\.flops"):
        BudgetSpec(ratio=0.3, flops=0.7)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"flops .* is outside \(0, 1\]"):
            BudgetSpec(flops=bad)
    with pytest.raises(ConfigError, match="is not a number"):
        BudgetSpec(flops="a lot")  # type: ignore[arg-type]


def test_flops_override_clears_the_default_ratio() -> None:
    cfg = load_config(overrides=["budget.flops=0.7"])
    assert (cfg.budget.ratio, cfg.budget.tokens, cfg.budget.flops) == (None, None, 0.7)
    cfg = load_config(budget="0.5", overrides=["budget.flops=0.6"])
    assert (cfg.budget.ratio, cfg.budget.flops) == (None, 0.6), "overrides come last"
    assert parse_budget("64")["flops"] is None, "--budget keeps ratio/tokens"


def test_flops_budget_resolves_to_the_largest_count_that_fits(
    toy_arch: ArchSpec,
) -> None:
    cost = BudgetCost(toy_arch, length=1100, layer=2)
    kept = BudgetSpec(flops=0.7).resolve(1024, cost)
    assert kept == tokens_for_flops(toy_arch, 0.7, length=1100, n_visual=1024, layer=2)
    frac = flops_fraction(toy_arch, length=1100, n_visual=1024, layer=2, kept=kept)
    assert 0.67 <= frac <= 0.7
    with pytest.raises(ContractError, match="without the sample's cost"):
        BudgetSpec(flops=0.7).resolve(1024)
    with pytest.raises(ConfigError, match=r"reachable range is \[0\.5\d\d, 1\]"):
        BudgetSpec(flops=0.4).resolve(1024, cost)


def test_preflight_bound_gives_the_reachable_range_in_one_line() -> None:
    check_flops_reachable(0.55, 2, 4)
    with pytest.raises(ConfigError) as excinfo:
        check_flops_reachable(0.4, 2, 4)
    msg = str(excinfo.value)
    assert "\n" not in msg and "[0.500, 1]" in msg and "insertion.layer=2" in msg


# ------------------------------------------------------------------ controls
class _Family:
    default_stage = Stage.IN_LLM
    default_layer = 1
    default_positions = PositionPolicy.SURVIVE


def test_unset_insertion_takes_the_model_family_defaults() -> None:
    fam: Any = _Family()
    got = resolve_insertion(InsertionConfig(), fam)
    assert (got.stage, got.layer, got.positions) == (
        Stage.IN_LLM,
        1,
        PositionPolicy.SURVIVE,
    )
    got = resolve_insertion(InsertionConfig(stage=Stage.PRE_LLM), fam)
    assert (got.stage, got.layer) == (Stage.PRE_LLM, 0)
    got = resolve_insertion(InsertionConfig(layer=3), fam)
    assert (got.stage, got.layer) == (Stage.IN_LLM, 3), "a layer >= 1 means in_llm"
    got = resolve_insertion(InsertionConfig(positions=PositionPolicy.REASSIGN), fam)
    assert got.positions is PositionPolicy.REASSIGN, "the user's choice wins"


def test_reducer_preference_is_metadata_not_the_policy() -> None:
    """sttm prefers reassign; on the tiny model it runs under the family's survive."""
    cfg = load_config(reducer="sttm")
    from tokenred.plugins import get_plugin_manager
    from tokenred.protocol import SampleProtocol
    from tokenred.registry import Registries

    regs = Registries.from_plugin_manager(get_plugin_manager())
    assert regs.reducers.get("sttm").position_policy is PositionPolicy.REASSIGN
    protocol = SampleProtocol.for_config(cfg, regs)
    controls = protocol.controls()
    assert controls["positions"] == "survive"
    assert (controls["stage"], controls["layer"]) == ("in_llm", 1)
    line = header_line(protocol.cfg, controls)
    assert line.startswith("run sttm | budget ratio=0.3 | in_llm K=1 | positions=")
    assert "model tiny (float32, sdpa)" in line and "threads 1" in line


def test_unreduced_run_has_no_reduction_controls() -> None:
    cfg = load_config()
    controls = describe_controls(cfg, unreduced=True)
    assert controls["positions"] == controls["stage"] == "-"
    rows = [{"positions": "-"}, {"positions": "survive"}, {"positions": "survive"}]
    assert mixed_controls(rows) == [], "the baseline does not make a table mixed"
    rows.append({"positions": "reassign"})
    assert mixed_controls(rows) == ["positions"]


# ------------------------------------------------------------------ end to end
def _argv(root: Path, data_root: Path, *extra: str) -> list[str]:
    return [
        "run",
        f"output.root={root}",
        f"data.root={data_root}",
        "data.num_videos=3",
        "model.max_new_tokens=2",
        "measure.latency=false",
        "measure.memory=false",
        *extra,
    ]


def _manifests(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/*/manifest.json"))]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.mark.parametrize(
    ("reducer", "where"),
    [
        ("fastv", ["insertion.stage=in_llm", "insertion.layer=2"]),
        ("tome", ["insertion.stage=pre_llm"]),
    ],
)
def test_flops_budget_lands_between_67_and_70_percent_on_every_sample(
    tmp_path: Path, data_root: Path, reducer: str, where: list[str]
) -> None:
    argv = _argv(tmp_path, data_root, "--reducer", reducer, "budget.flops=0.7")
    assert main([*argv, *where, "measure.baseline=false"]) == 0
    (manifest,) = _manifests(tmp_path)
    assert manifest["controls"]["budget_unit"] == "flops"
    records = list(RunStore(tmp_path / "default" / manifest["run_id"]).records())
    assert records
    for r in records:
        ratio = r.flops.prefill_ratio
        assert ratio is not None and 0.67 <= ratio <= 0.70, (r.id, ratio)


def test_unreachable_flops_budget_fails_before_running(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(tmp_path, data_root, "--reducer", "fastv", "budget.flops=0.4")
    assert main([*argv, "insertion.stage=in_llm", "insertion.layer=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reachable range is [0.500, 1]" in err[0], err
    assert not list(tmp_path.glob("*/*/samples.jsonl")), "something ran"


def test_a_study_holds_every_control_equal_and_says_so(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        "study: ctl\n"
        "base: {model: tiny, data: {name: synthetic}}\n"
        "sweep:\n"
        "  reducer.name: [random, sttm, pool]\n"
        "  budget.ratio: [0.5, 0.3]\n"
    )
    assert main(_argv(tmp_path, data_root, "-c", str(study))) == 0
    out, err = capsys.readouterr()
    headers = [line for line in err.splitlines() if line.startswith("run ")]
    assert len([h for h in headers if "positions=survive" in h]) == 6, headers
    manifests = [
        m for m in _manifests(tmp_path) if m["config"]["reducer"]["name"] != "none"
    ]
    assert len(manifests) == 6
    keys = ("positions", "stage", "layer", "frames", "dtype", "attention", "threads")
    seen = {tuple(m["controls"][k] for k in keys) for m in manifests}
    assert len(seen) == 1, seen
    assert out.startswith("controls: Positions survive | Stage in_llm | Layer 1")
    assert "warning" not in out

    # The same runs plus one under another policy: the table says so, once.
    argv = _argv(tmp_path, data_root, "--reducer", "pool", "--budget", "0.3")
    assert main([*argv, "insertion.positions=reassign"]) == 0
    capsys.readouterr()
    from tokenred.report import summary_table

    stores = [RunStore(p.parent) for p in sorted(tmp_path.glob("*/*/manifest.json"))]
    text = summary_table(stores)
    warnings = [line for line in text.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "Positions" in warnings[0], text
    assert "| Method | Positions |" in text


def test_a_sample_outside_its_own_range_aborts_the_run(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """0.505 passes the K/L = 0.5 preflight bound, but a real prompt's text makes
    one kept token cost more: the run stops with the sample's range, no records."""
    argv = _argv(tmp_path, data_root, "--reducer", "fastv", "budget.flops=0.505")
    assert main([*argv, "insertion.layer=2", "measure.baseline=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "reachable range is [0.5" in err[-1] and "prompt of" in err[-1], err
    (samples,) = tmp_path.glob("*/*/samples.jsonl")
    assert samples.read_text() == "", "an unreachable budget is not an error record"
