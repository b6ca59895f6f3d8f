"""One test per hookspec (datasette's meta-test enforces it) plus wiring checks."""

from __future__ import annotations

import inspect
import sys
from typing import Any

from tokenred import hookimpl, hookspecs
from tokenred.builtin.reducers import NoneReducer
from tokenred.cli import main
from tokenred.plugins import get_plugin_manager
from tokenred.registry import Registries


def hookspec_names() -> list[str]:
    return [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "tokenred_spec")
    ]


def test_every_hookspec_has_a_test():
    tests = {
        name for name in dir(sys.modules[__name__]) if name.startswith("test_hook_")
    }
    missing = [n for n in hookspec_names() if f"test_hook_{n}" not in tests]
    assert not missing, f"add test_hook_<name> for: {missing}"


class Keep(NoneReducer):
    """Keep everything (hook test)."""

    name = "hook_keep"


class Model:
    """A model registered lazily."""

    name = "hook_model"


class Dataset:
    """A dataset registered eagerly."""

    name = "hook_data"


def test_hook_register_reducers():
    class Plugin:
        @hookimpl
        def register_reducers(self, register: Any) -> None:
            register(Keep, aliases=("hk",))

    pm = get_plugin_manager(autoload=False, extra=[Plugin()])
    regs = Registries.from_plugin_manager(pm)
    assert regs.reducers.get("hk") is Keep
    assert {"none", "random", "hook_keep"} == set(regs.reducers.names())


def test_hook_register_model_adapters():
    class Plugin:
        @hookimpl
        def register_model_adapters(self, register: Any) -> None:
            register("hook_model", f"{__name__}:Model")

    regs = Registries.from_plugin_manager(
        get_plugin_manager(autoload=False, extra=[Plugin()])
    )
    assert regs.models.get("hook_model") is Model, "lazy 'module:Class' form"


def test_hook_register_datasets():
    class Plugin:
        @hookimpl
        def register_datasets(self, register: Any) -> None:
            register(Dataset)

    regs = Registries.from_plugin_manager(
        get_plugin_manager(autoload=False, extra=[Plugin()])
    )
    assert regs.datasets.get("hook_data") is Dataset


def test_hook_register_commands(capsys, no_autoload):
    class Plugin:
        @hookimpl
        def register_commands(self, subparsers: Any) -> None:
            p = subparsers.add_parser("greet", help="print a greeting")
            p.set_defaults(func=lambda args: print("hi") or 0)

    assert main(["greet"], plugins=[Plugin()]) == 0
    assert capsys.readouterr().out == "hi\n"
    main(["--help"], plugins=[Plugin()])
    assert "print a greeting" in capsys.readouterr().out


class Observer:
    """Implements the observer hooks with a subset of the arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def before_run(self, config: Any) -> str:
        self.calls.append(("before_run", config))
        return "ignored"

    @hookimpl
    def after_sample(self, record: Any) -> None:
        self.calls.append(("after_sample", record))

    @hookimpl
    def after_run(self, store: Any) -> None:
        self.calls.append(("after_run", store))


def test_hook_before_run():
    obs = Observer()
    pm = get_plugin_manager(autoload=False, extra=[obs])
    pm.hook.before_run(config="cfg", manifest={"git": "x"})
    assert obs.calls == [("before_run", "cfg")], "subset of arguments is allowed"


def test_hook_after_sample():
    obs = Observer()
    pm = get_plugin_manager(autoload=False, extra=[obs])
    for i in range(3):
        pm.hook.after_sample(record={"id": i})
    assert [c[1]["id"] for c in obs.calls] == [0, 1, 2]


def test_hook_after_run():
    obs = Observer()
    pm = get_plugin_manager(autoload=False, extra=[obs])
    pm.hook.after_run(store="store")
    assert obs.calls == [("after_run", "store")]


def test_hookspecs_have_docstrings_and_no_firstresult():
    for name in hookspec_names():
        fn = getattr(hookspecs, name)
        assert (fn.__doc__ or "").strip(), f"hookspec {name} needs a docstring"
        opts = fn.tokenred_spec
        assert not opts.get("firstresult") and not opts.get("historic"), name


def test_hook_register_trackers(tmp_path):
    from tokenred.config import load_config
    from tokenred.trackers import HUB_NAME, Tracker

    seen: list[tuple[str, Any]] = []

    class Memory(Tracker):
        name = "memory"

        def log_sample(self, record: Any, step: int) -> None:
            seen.append(("sample", (step, record["id"])))

        def finish(self, store: Any, metrics: Any) -> None:
            seen.append(("finish", dict(metrics)))

    class Plugin:
        @hookimpl
        def register_trackers(self, register: Any) -> None:
            register(Memory)

    pm = get_plugin_manager(autoload=False, extra=[Plugin()])
    hub = pm.get_plugin(HUB_NAME)
    assert set(hub.classes()) == {"memory", "tensorboard"}
    cfg = load_config(
        [], overrides=[f"output.root={tmp_path}", "output.trackers=[memory]"]
    )
    pm.hook.before_run(config=cfg, manifest={"run_id": "abc"})
    for i in range(2):
        pm.hook.after_sample(record={"id": f"s{i}"})

    class Store:
        def read_metrics(self) -> dict[str, float]:
            return {"accuracy": 50.0}

    pm.hook.after_run(store=Store())
    assert seen == [
        ("sample", (1, "s0")),
        ("sample", (2, "s1")),
        ("finish", {"accuracy": 50.0}),
    ]
    pm.hook.after_sample(record={"id": "late"})  # no active tracker after the run
    assert len(seen) == 3
