from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tokenred import hookimpl
from tokenred.builtin.reducers import RandomReducer
from tokenred.cli import main
from tokenred.plugins import get_plugin_manager
from tokenred.registry import Registries

BUILTIN = "tokenred.builtin.reducers"


def make_dist(root: Path, dist: str, module: str, body: str) -> None:
    """Write an installed distribution with a tokenred entry point under root."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(f"[tokenred]\n{module} = {module}\n")
    (root / f"{module}.py").write_text(body)


@pytest.fixture
def broken_dist(tmp_path, monkeypatch):
    """An installed plugin ``tokred_broken`` whose import raises."""
    make_dist(
        tmp_path, "tokenred-broken", "tokred_broken", "raise RuntimeError('boom')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("TOKENRED_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("TOKENRED_DISABLE_PLUGINS", raising=False)
    yield "tokred_broken"
    sys.modules.pop("tokred_broken", None)


def test_broken_import_is_skipped_with_one_warning(broken_dist, capsys):
    code = main(["list", "reducers", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    names = {r["name"] for r in json.loads(out)}
    assert {"none", "random"} <= names, "builtins survive a broken plugin"
    warnings = [line for line in err.splitlines() if broken_dist in line]
    assert warnings == [
        "warning: plugin 'tokred_broken' (distribution tokenred-broken 0.1) failed "
        "and was skipped: cannot import 'tokred_broken': RuntimeError: boom"
    ]


def test_plugins_command_shows_failed_plugin(broken_dist, capsys):
    code = main(["plugins", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    row = rows[broken_dist]
    assert row["status"] == "failed" and row["distribution"] == "tokenred-broken"
    assert "RuntimeError: boom" in row["error"]
    assert rows[BUILTIN]["status"] == "ok"
    main(["plugins"])
    out, _ = capsys.readouterr()
    line = next(x for x in out.splitlines() if x.startswith(broken_dist))
    assert "FAILED" in line and "tokenred-broken 0.1" in line


def test_disable_broken_plugin_by_flag_or_env(broken_dist, capsys, monkeypatch):
    assert main(["--disable-plugin", broken_dist, "list", "reducers"]) == 0
    assert broken_dist not in capsys.readouterr().err
    monkeypatch.setenv("TOKENRED_DISABLE_PLUGINS", f"x,{broken_dist}")
    assert main(["list", "reducers"]) == 0
    assert broken_dist not in capsys.readouterr().err


class RaisingPlugin:
    @hookimpl
    def register_reducers(self, register: Any) -> None:
        raise ValueError("cannot register")


class NotAReducerPlugin:
    @hookimpl
    def register_reducers(self, register: Any) -> None:
        register(dict)


class DuplicatePlugin:
    @hookimpl
    def register_reducers(self, register: Any) -> None:
        register(RandomReducer)


def test_register_hook_that_raises_is_recorded(caplog):
    pm = get_plugin_manager(autoload=False, extra=[RaisingPlugin()])
    regs = Registries.from_plugin_manager(pm)
    assert {"none", "random"} <= set(regs.reducers.names())
    (failure,) = pm.failures
    assert "register_reducers failed: cannot register" in failure.error
    rows = {r["name"]: r for r in pm.plugin_rows()}
    assert rows[failure.name]["status"] == "failed"
    assert any("cannot register" in r.message for r in caplog.records)


def test_registering_a_non_reducer_fails_that_plugin_only():
    pm = get_plugin_manager(autoload=False, extra=[NotAReducerPlugin()])
    regs = Registries.from_plugin_manager(pm)
    assert "random" in regs.reducers
    assert "is not a TokenReducer" in pm.failures[0].error


def test_collision_names_both_plugins():
    pm = get_plugin_manager(autoload=False, extra=[DuplicatePlugin()])
    Registries.from_plugin_manager(pm)
    (failure,) = pm.failures
    assert "reducer 'random' from plugin" in failure.error
    assert f"already registered by plugin {BUILTIN}" in failure.error
    assert "--disable-plugin" in failure.error


def test_disable_builtin_by_flag_anywhere(capsys, no_autoload):
    for argv in (
        ["--disable-plugin", BUILTIN, "list", "reducers", "--json"],
        ["list", "reducers", "--json", "--disable-plugin", BUILTIN],
    ):
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out) == []


def test_disable_by_env(monkeypatch):
    monkeypatch.setenv("TOKENRED_DISABLE_PLUGINS", BUILTIN)
    pm = get_plugin_manager(autoload=False)
    assert not pm.has_plugin(BUILTIN) and pm.is_blocked(BUILTIN)
    assert len(Registries.from_plugin_manager(pm).reducers) == 0


def test_misspelt_hook_fails_at_startup():
    class Misspelt:
        @hookimpl
        def register_reducer(self, register: Any) -> None:  # missing "s"
            pass

    with pytest.raises(Exception, match="register_reducer"):
        get_plugin_manager(autoload=False, extra=[Misspelt()])
