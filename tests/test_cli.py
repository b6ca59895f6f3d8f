from __future__ import annotations

import json
import sys
import types
from typing import Any

import pytest
import yaml

from tokenred import hookimpl
from tokenred.cli import main
from tokenred.config import Study
from tokenred.errors import ContractError

pytestmark = pytest.mark.usefixtures("no_autoload")


def run_cli(capsys, *argv: str, plugins=()) -> tuple[int, str, str]:
    code = main(list(argv), plugins=plugins)
    out, err = capsys.readouterr()
    return code, out, err


def test_list_reducers_json_metadata(capsys):
    code, out, _ = run_cli(capsys, "list", "reducers", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"none", "random"}
    rnd = rows["random"]
    assert rnd["stages"] == ["in_llm", "pre_llm"] and rnd["needs"] == []
    assert rnd["exact_budget"] is True and rnd["query_agnostic"] is True
    assert rnd["position_policy"] == "survive"
    assert rnd["plugin"] == "tokenred.builtin.reducers" and rnd["distribution"] is None
    assert rnd["description"].startswith("Random pruning")
    options = {o["key"]: o for o in rnd["options"]}
    assert options["reducer.per_frame"]["default"] == "false"
    assert options["reducer.per_frame"]["help"], "options carry their help text"
    assert rows["none"]["options"] == [], "none has no options beyond its name"


def test_list_text_tables(capsys, fake_plugin):
    code, out, _ = run_cli(capsys, "list", "reducers")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STAGES", "NEEDS"]
    assert any(line.startswith("random ") for line in lines)
    code, out, _ = run_cli(capsys, "list", "models", plugins=[fake_plugin])
    assert code == 0 and "fake_model" in out and "1d" in out
    code, out, _ = run_cli(capsys, "list", "datasets", "--json")
    assert code == 0 and isinstance(json.loads(out), list)


def test_check_random_passes(capsys):
    code, out, _ = run_cli(capsys, "check", "random")
    assert code == 0, out
    lines = out.splitlines()
    assert sum(line.startswith("PASS ") for line in lines) == 15
    assert lines[-1] == "15 passed, 0 failed"


def test_unknown_reducer_is_one_line_and_exit_2(capsys):
    code, _, err = run_cli(capsys, "check", "rando")
    assert code == 2
    assert err == (
        "error: Unknown reducer 'rando'. Did you mean: random? Available: none, "
        "random\n"
    )
    code, _, err = run_cli(capsys, "--traceback", "check", "rando")
    assert code == 2 and "Traceback" in err, "--traceback shows the traceback"


def test_usage_errors_exit_2(capsys):
    assert run_cli(capsys, "list", "things")[0] == 2
    assert run_cli(capsys, "run", "--no-such-flag")[0] == 2
    code, out, _ = run_cli(capsys)
    assert code == 2 and "commands" in out, "no command prints the help"


def test_help_has_groups_and_examples(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    assert "global options:" in out and "examples:" in out
    code, out, _ = run_cli(capsys, "run", "--help")
    assert "shorthands:" in out and "--dry-run" in out


def test_run_dry_run_prints_resolved_yaml(capsys, fake_plugin, tmp_path):
    code, out, err = run_cli(
        capsys,
        "run",
        "--model",
        "fake_model",
        "seed=5",
        "--reducer",
        "random",
        "--budget",
        "64",
        "--dry-run",
        "reducer.per_frame=true",
        plugins=[fake_plugin],
    )
    assert code == 0, err
    doc = yaml.safe_load(out)
    assert doc["seed"] == 5 and doc["reducer"] == {"name": "random", "per_frame": True}
    assert doc["budget"] == {"ratio": None, "tokens": 64, "flops": None}
    assert doc["insertion"]["stage"] is None, "unset: the model family decides"


def test_run_dry_run_study_prints_every_run(capsys, fake_plugin, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "base: {model: fake_model}\nsweep: {reducer.name: [none, random], seed: [1, 2]}"
    )
    code, out, err = run_cli(
        capsys, "run", "-c", str(f), "--dry-run", plugins=[fake_plugin]
    )
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    assert len(docs) == 4
    assert out.startswith("# run 1/4: reducer.name=none seed=1")


def test_bad_budget_flag(capsys):
    code, _, err = run_cli(capsys, "run", "--budget", "1.5", "--dry-run")
    assert code == 2
    assert err.startswith("error: budget: ratio 1.5 is outside (0, 1]")
    assert err.count("\n") == 1


def test_run_hands_the_study_to_the_runner(capsys, fake_plugin, monkeypatch):
    import tokenred.runner

    seen: dict[str, Any] = {}

    class Preflown:
        def __init__(self, cfg):
            self.cfg = cfg

        def controls(self):
            return {"stage": "-", "dtype": "float32", "attention": "sdpa",
                    "frames": "16", "threads": 1}  # fmt: skip

    def run_study(study, registries, pm, progress=None, announce=None):
        seen.update(study=study, registries=registries, pm=pm)
        for cfg in study.experiments:  # the runner announces each preflighted run
            announce(Preflown(cfg))
        return []

    monkeypatch.setattr(tokenred.runner, "run_study", run_study)
    code, _, err = run_cli(
        capsys, "run", "--model", "fake_model", plugins=[fake_plugin]
    )
    assert code == 0, err
    assert err.startswith("run none | budget none | unreduced | model fake_model")
    assert isinstance(seen["study"], Study) and len(seen["study"].experiments) == 1
    assert "fake_model" in seen["registries"].models


def test_report_delegates(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("tokenred.report")
    fake.main_report = lambda dirs, out=None, latency=None: (  # type: ignore[attr-defined]
        calls.append((dirs, out, latency)) or "o/x"
    )
    monkeypatch.setitem(sys.modules, "tokenred.report", fake)
    code, out, _ = run_cli(capsys, "report", "a", "b", "--out", "o")
    assert code == 0 and calls == [(["a", "b"], "o", None)]
    assert out == "report written to o/x\n"
    run_cli(capsys, "report", "a", "--latency")
    run_cli(capsys, "report", "a", "--no-latency")
    assert [c[2] for c in calls[1:]] == [True, False]


class CommandPlugin:
    @hookimpl
    def register_commands(self, subparsers: Any) -> None:
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("who")
        p.set_defaults(func=lambda args: print(f"hello {args.who}") or 0)
        boom = subparsers.add_parser("boom", help="crash")
        boom.set_defaults(func=self.boom)
        contract = subparsers.add_parser("contract", help="contract error")
        contract.set_defaults(func=self.contract)

    def boom(self, args: Any) -> int:
        raise RuntimeError("kaput")

    def contract(self, args: Any) -> int:
        raise ContractError("reducer 'x' returned 5 tokens for budget 4")


def test_error_mapping_and_plugin_commands(capsys):
    plugin = [CommandPlugin()]
    assert run_cli(capsys, "hello", "you", plugins=plugin)[:2] == (0, "hello you\n")
    code, _, err = run_cli(capsys, "boom", plugins=plugin)
    assert code == 3 and err.startswith("internal error: RuntimeError: kaput")
    assert "Traceback" not in err
    code, _, err = run_cli(capsys, "contract", plugins=plugin)
    assert code == 1 and err == "error: reducer 'x' returned 5 tokens for budget 4\n"
