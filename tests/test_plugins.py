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


def make_ep_dist(root: Path, dist: str, ep: str, module: str, body: str) -> None:
    """Like make_dist, with an entry-point name that differs from the module."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(f"[tokenred]\n{ep} = {module}\n")
    (root / f"{module}.py").write_text(body)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site directory on sys.path for fake distributions; modules cleaned up."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("TOKENRED_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("TOKENRED_DISABLE_PLUGINS", raising=False)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("tokred_"):
            sys.modules.pop(name, None)


MISSPELT = """
from tokenred import hookimpl

@hookimpl
def register_reducer(register):
    pass
"""


def test_misspelt_hook_fails_that_plugin_only(site, capsys):
    make_dist(site, "tokenred-typo", "tokred_typo", MISSPELT)
    for argv in (["plugins", "--json"], ["list", "reducers", "--json"]):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, err
        json.loads(out)
    assert main(["plugins", "--json"]) == 0
    out, err = capsys.readouterr()
    row = {r["name"]: r for r in json.loads(out)}["tokred_typo"]
    assert row["status"] == "failed"
    assert "did you mean 'register_reducers'?" in row["error"]
    assert "--disable-plugin tokred_typo" in row["error"]
    (line,) = [x for x in err.splitlines() if "tokred_typo" in x]
    assert line.startswith("warning: plugin 'tokred_typo'")
    assert "<module" not in line
    assert main(["--disable-plugin", "tokred_typo", "plugins"]) == 0
    assert "tokred_typo" not in capsys.readouterr().err


def test_hook_with_unknown_argument_fails_that_plugin_only():
    class BadArgs:
        @hookimpl
        def register_reducers(self, register: Any, extra: Any) -> None:
            pass

    pm = get_plugin_manager(autoload=False, extra=[BadArgs()])
    (failure,) = pm.failures
    assert "invalid hook" in failure.error and "extra" in failure.error
    assert "random" in Registries.from_plugin_manager(pm).reducers


IMPOSTOR = """
from tokenred import hookimpl
from tokenred.builtin.reducers import RandomReducer

class Impostor(RandomReducer):
    name = "sttm"

@hookimpl
def register_reducers(register):
    register(Impostor)
"""


def test_first_party_entry_point_name_is_protected(site, capsys):
    pytest.importorskip("tokenred_sttm")
    make_ep_dist(site, "evil-sttm", "sttm", "tokred_evil", IMPOSTOR)
    assert main(["plugins", "--json"]) == 0
    out, _ = capsys.readouterr()
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["sttm"]["status"] == "ok"
    assert rows["sttm"]["distribution"] == "tokenred-sttm"
    bad = rows["sttm [evil-sttm]"]
    assert bad["status"] == "failed" and "reserved" in bad["error"]
    assert "tokenred-sttm" in bad["error"] and "evil-sttm" in bad["error"]
    assert main(["list", "reducers", "--json"]) == 0
    sttm = {r["name"]: r for r in json.loads(capsys.readouterr().out)}["sttm"]
    assert sttm["distribution"] == "tokenred-sttm"


def test_first_party_reducer_name_is_protected(site, capsys):
    make_ep_dist(site, "aaa-fake", "aaa_fake", "tokred_aaa", IMPOSTOR)
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["aaa_fake"]["status"] == "failed"
    assert "reducer name 'sttm'" in rows["aaa_fake"]["error"]
    assert "reserved for the first-party plugin 'sttm'" in rows["aaa_fake"]["error"]
    if "sttm" in rows:
        assert rows["sttm"]["status"] == "ok"


def test_two_distributions_with_one_entry_point_name(site, capsys):
    body = "from tokenred import hookimpl\n"
    make_ep_dist(site, "dist-b", "shared", "tokred_b", body)
    make_ep_dist(site, "dist-a", "shared", "tokred_a", body)
    assert main(["plugins", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {r["name"]: r for r in json.loads(out)}
    assert "shared" not in rows
    for dist in ("dist-a", "dist-b"):
        row = rows[f"shared [{dist}]"]
        assert row["status"] == "failed" and row["distribution"] == dist
        assert "dist-a and dist-b" in row["error"]
    assert err.count("provided by distributions dist-a and dist-b") == 2


def test_reducer_of_a_failed_plugin_says_so(site, capsys):
    make_ep_dist(
        site, "tokenred-gone", "gone", "tokred_gone", "raise ImportError('no torch')\n"
    )
    code = main(["run", "--reducer", "gone", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: reducer 'gone' is not available: plugin 'gone'")
    assert "failed to load" in line and "no torch" in line
    assert "Unknown reducer" not in err


DUP_BODY = """
from tokenred import hookimpl
from tokenred.builtin.reducers import RandomReducer

class Dup(RandomReducer):
    '''{doc}'''
    name = "dup_reducer"

@hookimpl
def register_reducers(register):
    register(Dup)
"""


@pytest.mark.parametrize("order", [("zeta", "alpha"), ("alpha", "zeta")])
def test_reducer_name_clash_does_not_depend_on_install_order(site, capsys, order):
    for ep in order:
        make_ep_dist(
            site, f"dist-{ep}", ep, f"tokred_{ep}", DUP_BODY.format(doc=f"From {ep}.")
        )
    assert main(["list", "reducers", "--json"]) == 0
    out, err = capsys.readouterr()
    row = {r["name"]: r for r in json.loads(out)}["dup_reducer"]
    assert row["plugin"] == "alpha", "the same plugin wins whatever the order"
    (line,) = [x for x in err.splitlines() if "dup_reducer" in x]
    assert line.startswith("warning: plugin 'zeta' (distribution dist-zeta 0.1)")
    assert "already registered by plugin alpha (dist-alpha 0.1)" in line


def test_one_module_under_two_entry_point_names(site, capsys):
    make_ep_dist(
        site, "dist-one", "one", "tokred_same", "from tokenred import hookimpl\n"
    )
    info = site / "dist_two-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: dist-two\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[tokenred]\ntwo = tokred_same\n")
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["one"]["status"] == "ok"
    assert rows["two"]["status"] == "failed"
    assert "cannot register" in rows["two"]["error"]
