from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tokenred._configdoc import describe_fields
from tokenred.builtin.reducers import RandomConfig
from tokenred.config import (
    BudgetConfig,
    ExperimentConfig,
    load_config,
    load_study,
    parse_budget,
    to_dict,
    to_yaml,
    validate_config_class,
)
from tokenred.errors import ConfigError, UnknownNameError
from tokenred.reducer import ReducerConfig
from tokenred.tokens import PositionPolicy, Stage


@pytest.fixture
def load(fake_registries):
    def _load(*files, model="fake_model", **kw):
        return load_config(files, model=model, registries=fake_registries, **kw)

    return _load


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, f"errors must be one line, got {msg!r}"
    return msg


def test_defaults_are_typed(load):
    cfg = load()
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.reducer.name == "none" and type(cfg.reducer) is ReducerConfig
    assert cfg.model.name == "fake_model" and cfg.model.layers == 4
    assert isinstance(cfg.budget, BudgetConfig) and cfg.budget.ratio == 0.3
    assert cfg.insertion.stage is Stage.PRE_LLM and cfg.insertion.layer == 0
    assert cfg.measure.repeats == 3 and cfg.output.root == "runs"


def test_merge_order_files_then_flags_then_overrides(load, tmp_path):
    a = write(
        tmp_path,
        "a.yaml",
        "seed: 1\nreducer: {name: random, per_frame: true}\nbudget: {tokens: 64}\n",
    )
    b = write(tmp_path, "b.yaml", "seed: 2\nname: second\n")
    cfg = load(a, b)
    assert (cfg.seed, cfg.name) == (2, "second"), "later files win"
    assert isinstance(cfg.reducer, RandomConfig) and cfg.reducer.per_frame is True
    assert (cfg.budget.ratio, cfg.budget.tokens) == (None, 64)

    cfg = load(a, b, budget="0.5", overrides=["seed=3"])
    assert cfg.seed == 3, "overrides beat files"
    assert (cfg.budget.ratio, cfg.budget.tokens) == (0.5, None), "--budget beats files"

    cfg = load(a, reducer="none", overrides=["reducer.name=random"])
    assert cfg.reducer.name == "random", "overrides beat the --reducer flag"
    cfg = load(a, reducer="none")
    assert type(cfg.reducer) is ReducerConfig, "selecting another reducer drops the "
    "file's reducer options (Hydra config-group semantics)"


def test_reselecting_the_same_reducer_keeps_its_options(load, tmp_path):
    a = write(tmp_path, "a.yaml", "reducer: {name: random, per_frame: true}\n")
    assert load(a, reducer="random").reducer.per_frame is True
    with pytest.raises(ConfigError, match=r"unknown config key 'reducer\.per_frame'"):
        load(a, overrides=["reducer.name=none", "reducer.per_frame=true"])


def test_one_budget_alternative_clears_the_other(load, tmp_path):
    f = write(tmp_path, "f.yaml", "budget: {tokens: 64}\n")
    cfg = load(f, overrides=["budget.ratio=0.2"])
    assert (cfg.budget.ratio, cfg.budget.tokens) == (0.2, None)
    cfg = load(overrides=["budget.tokens=10"])
    assert (cfg.budget.ratio, cfg.budget.tokens) == (None, 10)


@pytest.mark.parametrize(
    ("text", "ratio", "tokens"),
    [("0.3", 0.3, None), ("64", None, 64), ("1", None, 1), ("1.0", 1.0, None)],
)
def test_parse_budget(text, ratio, tokens, load):
    assert parse_budget(text) == {"ratio": ratio, "tokens": tokens}
    cfg = load(budget=text)
    assert (cfg.budget.ratio, cfg.budget.tokens) == (ratio, tokens)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("-3", "token count -3 must be >= 1"),
        ("0", "token count 0 must be >= 1"),
        ("0.0", "ratio 0.0 is outside (0, 1]"),
        ("1.5", "ratio 1.5 is outside (0, 1]"),
        ("-0.5", "ratio -0.5 is outside (0, 1]"),
        ("abc", "'abc' is not a number"),
        ("nan", "ratio nan is outside (0, 1]"),
        ("", "'' is not a number"),
    ],
)
def test_bad_budget_flag_is_one_clear_line(text, phrase, load):
    with pytest.raises(ConfigError) as excinfo:
        load(budget=text)
    msg = one_line_error(excinfo)
    assert msg.startswith("budget: ") and phrase in msg, msg
    assert "0.3" in msg and "64" in msg, "the message shows valid examples"


def test_bad_budgets_in_files_and_overrides(load, tmp_path):
    both = write(tmp_path, "both.yaml", "budget: {ratio: 0.3, tokens: 64}\n")
    with pytest.raises(
        ConfigError, match=r"both budget\.ratio=0\.3 and budget\.tokens=64"
    ):
        load(both)
    with pytest.raises(ConfigError, match=r"ratio 1.5 is outside \(0, 1\]"):
        load(overrides=["budget.ratio=1.5"])
    with pytest.raises(ConfigError) as excinfo:
        load(overrides=["budget.tokens=abc"])
    msg = one_line_error(excinfo)
    assert "'budget.tokens'" in msg and "'abc'" in msg and "integer" in msg
    shorthand = write(tmp_path, "short.yaml", "budget: 64\n")
    assert load(shorthand).budget.tokens == 64, "budget: 64 is a token count"


def test_unknown_keys_list_valid_keys_and_suggest(load, tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load(reducer="random", overrides=["reducer.per_fram=true"])
    msg = one_line_error(excinfo)
    assert "unknown config key 'reducer.per_fram'" in msg
    assert "Did you mean: per_frame?" in msg and "name, per_frame" in msg
    f = write(tmp_path, "typo.yaml", "sede: 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load(f)
    msg = one_line_error(excinfo)
    assert "'sede'" in msg and "Did you mean: seed?" in msg
    assert str(f) in msg, "the message names the file the key came from"


def test_enum_errors_list_values(load):
    with pytest.raises(ConfigError) as excinfo:
        load(overrides=["insertion.stage=middle"])
    msg = one_line_error(excinfo)
    assert "'insertion.stage'" in msg and "'middle'" in msg
    assert "valid choices: pre_llm, in_llm" in msg
    with pytest.raises(ConfigError, match="valid choices: reassign, survive, merged"):
        load(overrides=["insertion.positions=foo"])
    cfg = load(overrides=["insertion.stage=in_llm", "insertion.layer=2"])
    assert cfg.insertion.stage is Stage.IN_LLM, "enums accept their values"
    cfg = load(overrides=["insertion.positions=merged"])
    assert cfg.insertion.positions is PositionPolicy.MERGED


def test_type_and_cross_field_errors(load):
    with pytest.raises(ConfigError, match=r"'seed': invalid value 'abc'.*an integer"):
        load(overrides=["seed=abc"])
    with pytest.raises(ConfigError, match=r"insertion\.layer >= 1"):
        load(overrides=["insertion.stage=in_llm"])
    with pytest.raises(ConfigError, match=r"measure\.repeats must be >= 1"):
        load(overrides=["measure.repeats=0"])
    with pytest.raises(ConfigError, match="not key=value"):
        load(overrides=["seed"])


def test_unknown_names_suggest(load):
    with pytest.raises(UnknownNameError) as excinfo:
        load(reducer="rando")
    assert str(excinfo.value) == (
        "Unknown reducer 'rando'. Did you mean: random? Available: keep_all, none, "
        "random"
    )
    with pytest.raises(UnknownNameError, match="Unknown model 'fake_modle'"):
        load(model="fake_modle")


def test_aliases_resolve_to_the_registry_name(load):
    assert load(reducer="keepall").reducer.name == "keep_all"


def test_bad_files(load, tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope\.yaml' not found"):
        load(tmp_path / "nope.yaml")
    bad = write(tmp_path, "bad.yaml", "a: [1\n")
    with pytest.raises(ConfigError, match="is not valid YAML") as excinfo:
        load(bad)
    one_line_error(excinfo)
    lst = write(tmp_path, "list.yaml", "- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load(lst)


STUDY = """\
study: grid
base:
  model: fake_model
  budget: {ratio: 0.5}
sweep:
  reducer.name: [none, random]
  budget.ratio: [0.1, 0.2]
"""


def test_study_sweep_expands_and_flags_pin_axes(fake_registries, tmp_path):
    f = write(tmp_path, "study.yaml", STUDY)
    study = load_study([f], registries=fake_registries)
    assert study.name == "grid" and len(study.experiments) == 4
    got = {(c.reducer.name, c.budget.ratio) for c in study.experiments}
    assert got == {("none", 0.1), ("none", 0.2), ("random", 0.1), ("random", 0.2)}
    assert all(c.name == "grid" for c in study.experiments)
    assert study.points[0] == {"reducer.name": "none", "budget.ratio": 0.1}

    pinned = load_study(
        [f], overrides=["reducer.name=random"], registries=fake_registries
    )
    assert [c.reducer.name for c in pinned.experiments] == ["random", "random"]
    tokens = load_study([f], budget="32", registries=fake_registries)
    assert len(tokens.experiments) == 2, "--budget pins both budget axes"
    assert {c.budget.tokens for c in tokens.experiments} == {32}
    with pytest.raises(ConfigError, match="sweep of 4 runs"):
        load_config([f], registries=fake_registries)


def test_bad_study_files(fake_registries, tmp_path):
    mixed = write(tmp_path, "m.yaml", "sweep: {seed: [1, 2]}\nreducer: random\n")
    with pytest.raises(ConfigError, match="move them under base"):
        load_study([mixed], registries=fake_registries)
    empty = write(tmp_path, "e.yaml", "sweep: {seed: []}\n")
    with pytest.raises(ConfigError, match=r"sweep\.seed is an empty list"):
        load_study([empty], registries=fake_registries)
    notlist = write(tmp_path, "n.yaml", "sweep: {seed: 3}\n")
    with pytest.raises(ConfigError, match="sweep"):
        load_study([notlist], registries=fake_registries)
    badkey = write(tmp_path, "k.yaml", "base: {model: fake_model}\nsweep: {sed: [1]}\n")
    with pytest.raises(ConfigError, match="unknown config key 'sed'"):
        load_study([badkey], registries=fake_registries)


def test_yaml_round_trip(load, tmp_path):
    cfg = load(
        reducer="random",
        budget="12",
        overrides=[
            "insertion.stage=in_llm",
            "insertion.layer=3",
            "reducer.per_frame=1",
        ],
    )
    text = to_yaml(cfg)
    assert "stage: in_llm" in text, "enums are written by value"
    again = load(write(tmp_path, "round.yaml", text))
    assert to_dict(again) == to_dict(cfg)


def test_every_schema_field_has_help():
    rows = describe_fields(ExperimentConfig)
    missing = [r.key for r in rows if not r.help]
    assert not missing, f"fields without metadata help: {missing}"
    keys = {r.key for r in rows}
    assert {"budget.ratio", "insertion.positions", "measure.kv_reuse"} <= keys


def test_validate_config_class():
    validate_config_class(RandomConfig, name="random")
    with pytest.raises(ConfigError, match="must default to the registry name 'other'"):
        validate_config_class(RandomConfig, name="other")

    @dataclass
    class NoHelp(ReducerConfig):
        depth: int = 3

    with pytest.raises(ConfigError, match="fields without metadata help: depth"):
        validate_config_class(NoHelp)

    @dataclass
    class BadDefault(ReducerConfig):
        depth: int = field(default=-1, metadata={"help": "d"})

        def __post_init__(self) -> None:
            if self.depth < 0:
                raise ConfigError("reducer.depth must be >= 0")

    with pytest.raises(ConfigError, match="depth must be >= 0"):
        validate_config_class(BadDefault)
    with pytest.raises(ConfigError, match="is not a dataclass"):
        validate_config_class(int)
    assert dataclasses.is_dataclass(NoHelp)


def test_budget_resolve():
    assert BudgetConfig(ratio=0.25, tokens=None).resolve(10) == 3, "round half up"
    assert BudgetConfig(ratio=0.01, tokens=None).resolve(10) == 1, "never 0"
    assert BudgetConfig(ratio=None, tokens=64).resolve(10) == 10, "at most N"


def test_run_ids_of_existing_stores_are_stable():
    # The serialised config is the run id's input: these are the ids (without the
    # weights part) of `make run`'s two runs; a serialiser change that moved them
    # would orphan every existing run store. They change only with the config
    # schema itself, on purpose (the last time: measure.threads and
    # measure.deterministic joined the config, issue 16).
    from tokenred.baselines import baseline_config
    from tokenred.plugins import get_plugin_manager
    from tokenred.registry import Registries
    from tokenred.results import run_id

    regs = Registries.from_plugin_manager(get_plugin_manager())
    cfg = load_config(reducer="sttm", registries=regs)
    assert run_id(to_dict(cfg)) == "1ee8462c1713"
    assert run_id(to_dict(baseline_config(cfg, regs))) == "212ceb0af8d2"


def test_budget_checks_share_one_wording():
    from tokenred.plan import BudgetSpec

    messages = []
    for build in (
        lambda: BudgetSpec(ratio=1.5),
        lambda: BudgetConfig(ratio=1.5, tokens=None),
        lambda: parse_budget("1.5"),
    ):
        with pytest.raises(ConfigError) as excinfo:
            build()
        messages.append(str(excinfo.value))
    assert len(set(messages)) == 1, messages
