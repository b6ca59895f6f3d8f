"""Docs meta-tests: every registered thing has its page or entry, pages are current.

Each list is enumerated from the code (the hook specs, the CLI parser, the registries
with every installed plugin), never hard-coded, so adding a reducer, a config field,
a command, a model adapter or a dataset without documenting it fails here with one
line naming the page and what it lacks.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
from functools import cache
from pathlib import Path

import pytest

from tokenred import hookspecs
from tokenred._configdoc import describe_fields
from tokenred.cli import Session, build_parser
from tokenred.plugins import TokenredPluginManager, get_plugin_manager
from tokenred.registry import Registries
from tokenred.tokens import Need, Stage

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


def _normalized(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


@cache
def first_party_manager() -> TokenredPluginManager:
    """Every installed plugin shipped by this repository, and no other.

    That is the builtin plugins and the packages under ``plugins/``. Third-party
    plugins installed next to tokenred (one made with the tutorial, say) document
    themselves; their absence from these pages must not fail the suite.
    """
    ours = {"tokenred"}
    for path in REPO.glob("plugins/*/pyproject.toml"):
        match = re.search(r'^name\s*=\s*"([^"]+)"', path.read_text(), re.M)
        if match:
            ours.add(_normalized(match.group(1)))
    rows = get_plugin_manager().plugin_rows()
    others = [
        r["name"]
        for r in rows
        if r["distribution"] and _normalized(r["distribution"]) not in ours
    ]
    return get_plugin_manager(block=others)


@cache
def registries() -> Registries:
    """The registries of the first-party plugins (built once per test session)."""
    return Registries.from_plugin_manager(first_party_manager())


def test_every_first_party_reducer_has_a_page():
    names = registries().reducers.names()
    assert {"none", "random"} <= set(names), "the builtin reducers are first-party"
    missing = [n for n in names if not (DOCS / "reducers" / f"{n}.md").is_file()]
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


def cli_commands() -> list[str]:
    """The subcommands of the real parser, including those plugins add."""
    parser = build_parser(Session(first_party_manager()))
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(subs[0].choices)


def test_every_cli_command_has_an_entry():
    text = (DOCS / "cli.md").read_text()
    commands = cli_commands()
    assert {"run", "check", "report"} <= set(commands), "parser lost builtin commands"
    missing = [c for c in commands if f"| `tokenred {c}" not in text]
    assert not missing, (
        f"docs/cli.md needs a '| `tokenred <command> ...` | ... |' row in its "
        f"command table for: {missing}"
    )


@pytest.mark.parametrize("name", registries().reducers.names())
def test_every_reducer_parameter_is_documented(name):
    cls = registries().reducers.get(name)
    keys = [f.key for f in describe_fields(cls.Config, "reducer.")]
    page = DOCS / "reducers" / f"{name}.md"
    text = page.read_text() if page.is_file() else ""
    missing = [k for k in keys if k != "reducer.name" and f"`{k}`" not in text]
    assert not missing, f"docs/reducers/{name}.md must document {missing}"


@pytest.mark.parametrize(
    ("kind", "page"), [("models", "models.md"), ("datasets", "datasets.md")]
)
def test_every_registered_model_and_dataset_has_an_entry(kind, page):
    text = (DOCS / page).read_text()
    names = getattr(registries(), kind).names()
    assert names, f"no {kind} registered"
    missing = [n for n in names if f"| `{n}`" not in text]
    assert not missing, f"docs/{page} needs a '| `<name>` |' table row for: {missing}"


META_HEADER = "| stages | needs | exact budget | query-agnostic | default positions |"


def _yes_no(cell: str) -> bool | None:
    word = cell.strip("* ").split(" ")[0].lower()
    return {"yes": True, "no": False}.get(word)


@pytest.mark.parametrize("name", registries().reducers.names())
def test_reducer_page_header_matches_the_class(name):
    cls = registries().reducers.get(name)
    text = (DOCS / "reducers" / f"{name}.md").read_text()
    page = f"docs/reducers/{name}.md"
    for label in ("**Paper:**", "**Reference implementation:**"):
        assert label in text, f"{page} needs a '{label}' line"
    lines = text.splitlines()
    assert META_HEADER in lines, f"{page} needs the table '{META_HEADER}'"
    row = lines[lines.index(META_HEADER) + 2]
    stages, needs, exact, agnostic, positions = (c.strip() for c in row.split("|")[1:6])
    claimed = {s.value for s in Stage if f"`{s.value}`" in stages}
    assert claimed == {s.value for s in cls.stages}, f"{page}: stages cell '{stages}'"
    declared = {n.value for n in cls.needs}
    named = {n.value for n in Need if f"`{n.value}`" in needs or n.value in needs}
    assert named == declared, f"{page}: needs cell '{needs}'"
    assert _yes_no(exact) is cls.exact_budget, f"{page}: exact budget cell '{exact}'"
    assert _yes_no(agnostic) is cls.query_agnostic, f"{page}: query-agnostic cell"
    policy = f"`{cls.position_policy.value}`"
    assert positions.startswith(policy), f"{page}: default positions must be {policy}"
