"""Docs meta-tests: hooks, reducer pages, generated references, nav."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from tokenred import hookspecs
from tokenred.plugins import get_plugin_manager
from tokenred.registry import Registries

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def load_gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", DOCS / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hookspec_signatures() -> dict[str, str]:
    out = {}
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(fn, "tokenred_spec"):
            args = ", ".join(inspect.signature(fn).parameters)
            out[name] = f"{name}({args})"
    return out


def test_every_hook_signature_is_documented():
    text = (DOCS / "plugins" / "hooks.md").read_text()
    for name, signature in hookspec_signatures().items():
        assert f"## {name}\n" in text, (
            f"docs/plugins/hooks.md needs a '## {name}' heading"
        )
        assert signature in text, f"docs/plugins/hooks.md must show {signature}"


def test_every_installed_reducer_has_a_page():
    regs = Registries.from_plugin_manager(get_plugin_manager())
    missing = [
        n
        for n in regs.reducers.names()
        if not (DOCS / "reducers" / f"{n}.md").is_file()
    ]
    assert not missing, f"write docs/reducers/<name>.md for: {missing}"


@pytest.mark.parametrize("page", ["cli.md", "config.md", "plugins/contract.md"])
def test_generated_pages_are_current(page):
    gen = load_gen_docs()
    text = (DOCS / page).read_text()
    expected = gen.render(text, gen.generators()[page]())
    assert text == expected, (
        f"docs/{page} is out of date; run .venv/bin/python docs/gen_docs.py"
    )


def test_nav_pages_exist_and_reducer_pages_are_listed():
    nav = re.findall(r":\s+(\S+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M)
    assert nav, "mkdocs.yml has an explicit nav"
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"nav lists missing pages: {missing}"
    pages = {f"reducers/{p.name}" for p in (DOCS / "reducers").glob("*.md")}
    assert pages <= set(nav), f"add to the nav: {sorted(pages - set(nav))}"
