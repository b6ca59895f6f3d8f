from __future__ import annotations

from typing import Any

import pytest

from tokenred.builtin.reducers import NoneReducer, RandomReducer
from tokenred.errors import PluginError, UnknownNameError
from tokenred.registry import Entry, Registries, Registry, import_object


def make_registry() -> Registry[Any]:
    reg: Registry[Any] = Registry("reducer", "tokenred.reducer:TokenReducer")
    reg.add(Entry("random", RandomReducer, "builtin", aliases=("rand",)))
    reg.add(Entry("none", NoneReducer, "builtin"))
    return reg


def test_lookup_iteration_and_aliases():
    reg = make_registry()
    assert reg.names() == ["none", "random"] and len(reg) == 2
    assert [e.name for e in reg] == ["none", "random"], "iteration is name-sorted"
    assert reg.get("rand") is RandomReducer, "aliases resolve"
    assert "rand" in reg and "random" in reg and "nope" not in reg and 3 not in reg


def test_unknown_name_message():
    with pytest.raises(UnknownNameError) as excinfo:
        make_registry().get("randm")
    assert str(excinfo.value) == (
        "Unknown reducer 'randm'. Did you mean: random? Available: none, random"
    )
    assert excinfo.value.exit_code == 2
    with pytest.raises(UnknownNameError, match=r"'zzz'\. Available: none, random$"):
        make_registry().get("zzz")
    empty: Registry[Any] = Registry("model", "x:Y")
    with pytest.raises(UnknownNameError, match=r"\(none registered\)"):
        empty.get("tiny")


@pytest.mark.parametrize("bad", ["Random", "1x", "a-b", "", "a b"])
def test_bad_names_are_rejected(bad):
    with pytest.raises(PluginError, match="must match"):
        make_registry().add(Entry(bad, NoneReducer, "p"))


def test_duplicates_and_alias_clashes_name_both_plugins():
    reg = make_registry()
    with pytest.raises(PluginError) as excinfo:
        reg.add(Entry("none", NoneReducer, "other", "tokenred-other", "1.0"))
    msg = str(excinfo.value)
    assert "from plugin other (tokenred-other 1.0)" in msg
    assert "already registered by plugin builtin" in msg
    with pytest.raises(PluginError, match="'rand'"):
        reg.add(Entry("x", NoneReducer, "other", aliases=("rand",)))


def test_lazy_entries_import_on_first_use():
    reg: Registry[Any] = Registry("model", "x:Y")
    reg.add(Entry("lazy", "tokenred.builtin.reducers:RandomReducer", "p"))
    entry = reg.entry("lazy")
    assert isinstance(entry.target, str), "nothing imported at registration"
    assert reg.get("lazy") is RandomReducer
    reg.add(Entry("broken", "tokenred.no_such_module:Thing", "p", "tokenred-p", "2"))
    with pytest.raises(PluginError) as excinfo:
        reg.get("broken")
    assert "registered by plugin p (tokenred-p 2)" in str(excinfo.value)
    assert "ModuleNotFoundError" in str(excinfo.value)


def test_import_object():
    assert import_object("tokenred.builtin.reducers:RandomReducer") is RandomReducer
    assert import_object("tokenred.errors:ExitCode.OK") == 0


def test_register_closure_checks_and_records_origin(pm):
    regs = Registries.from_plugin_manager(pm)
    entry = regs.reducers.entry("random")
    assert entry.plugin == "tokenred.builtin.reducers" and entry.dist is None
    assert entry.origin() == "tokenred.builtin.reducers"
    assert Entry("x", NoneReducer, "p", "tokenred-p", "0.2").origin() == (
        "p (tokenred-p 0.2)"
    )


def test_registries_empty_kinds():
    regs = Registries.empty()
    assert (regs.reducers.kind, regs.models.kind, regs.datasets.kind) == (
        "reducer",
        "model",
        "dataset",
    )
