"""The plugin tutorial, executed literally so that it cannot rot.

``docs/plugins/writing-a-reducer.md`` is run as written: every ``$ `` line of its
``console`` blocks, in order, in one bash process, from a scratch directory laid
out like a tokenred checkout (``plugins/`` of this repository and a ``.venv``).
That ``.venv`` is an overlay: an empty virtual environment whose ``.pth`` file adds
this environment's site-packages, so ``pip install -e`` puts the tutorial's plugin
into the overlay only and this environment stays untouched. pip runs offline
(no index, no build isolation: setuptools comes from this environment).

The outputs of ``tokenred plugins``, ``list``, ``check`` and ``report`` must contain
the lines the page shows, in order; timings and accuracies of ``tokenred run`` are
not compared, only that the new reducer has its row.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tokenred.plugins import get_plugin_manager
from tokenred.registry import Registries
from tokenred.testing import CHECKS, check_reducer

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "docs" / "plugins" / "writing-a-reducer.md"
MARK = "@@tutorial-step@@"
COMPARED = ("tokenred plugins", "tokenred list", "tokenred check", "tokenred report")


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    """Return ``(command, shown output lines)`` of every ``$`` line, in page order."""
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^```console\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
    return steps


def overlay_venv(path: Path) -> None:
    """Create an empty venv at ``path`` that sees this environment's packages."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    here = sysconfig.get_paths()["purelib"]
    # An "import" line in a .pth file runs at startup; addsitedir also processes
    # the .pth files there (the editable installs of tokenred and its plugins).
    pth = f"import site; site.addsitedir({here!r})\n"
    (Path(purelib) / "_tokenred_overlay.pth").write_text(pth)
    scripts = {
        "pip": f'exec "{python}" -m pip "$@"\n',
        "pytest": f'exec "{python}" -m pytest "$@"\n',
        "tokenred": f'exec "{python}" -c "import sys; from tokenred.cli import main; '
        f'sys.exit(main())" "$@"\n',
    }
    for name, body in scripts.items():
        script = path / "bin" / name
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)


def run_tutorial(
    tmp: Path, steps: list[tuple[str, list[str]]], *, with_venv: bool = True
) -> list[str]:
    """Run the commands in one shell; return each command's combined output."""
    checkout = tmp / "tokenred"
    checkout.mkdir()
    (checkout / "plugins").symlink_to(REPO / "plugins")
    if with_venv:
        overlay_venv(checkout / ".venv")
    script = ["set -e"]
    for i, (command, _) in enumerate(steps):
        script += [f"echo '{MARK} {i}'", command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENRED_")}
    env.update(
        PIP_NO_INDEX="1",
        PIP_NO_BUILD_ISOLATION="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        check=False,
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    chunks = re.split(rf"^{MARK} \d+\n", proc.stdout, flags=re.M)[1:]
    if proc.returncode != 0:
        failed = steps[len(chunks) - 1][0] if chunks else "(before the first step)"
        tail = (chunks[-1] if chunks else "") + proc.stderr
        pytest.fail(f"tutorial step failed: $ {failed}\n{tail[-3000:]}")
    return chunks


def assert_shown_lines_appear(command: str, shown: list[str], actual: str) -> None:
    """Every line the page shows must appear in the actual output, in order."""
    lines = iter(line.rstrip() for line in actual.splitlines())
    for want in (s.rstrip() for s in shown if s.strip()):
        assert any(got == want for got in lines), (
            f"docs/plugins/writing-a-reducer.md shows '{want}' for '$ {command}', "
            f"which no longer prints it (in order); actual output:\n{actual}"
        )


@pytest.mark.slow
def test_tutorial_runs_literally(tmp_path: Path) -> None:
    steps = console_steps(TUTORIAL.read_text(encoding="utf-8"))
    commands = [c for c, _ in steps]
    assert any(c.startswith("cp -r plugins/_template") for c in commands)
    assert any("tokenred run -c" in c for c in commands), "a comparison run"
    outputs = run_tutorial(tmp_path, steps)
    assert len(outputs) == len(steps)
    for (command, shown), actual in zip(steps, outputs, strict=True):
        if any(word in command for word in COMPARED):
            assert_shown_lines_appear(command, shown, actual)
        if "tokenred run -c" in command:
            row = r"^\| mystride \(K=1\) \| 30% \| 24 \| 0 \|"  # in the LLM at K=1
            assert re.search(row, actual, re.M), actual
    check = outputs[commands.index(".venv/bin/tokenred check mystride")]
    assert check.rstrip().endswith("15 passed, 0 failed"), check
    report = tmp_path / "tokenred" / "runs" / "compare_mystride" / "report"
    summary = (report / "summary.md").read_text(encoding="utf-8")
    assert "| tiny | synthetic | mystride (K=1) | 30% |" in summary


def test_tutorial_rename_yields_a_plugin_that_passes_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cheap half, run by default: the page's first block, then the plugin
    in-process (no pip): its entry point, its hook and the contract suite."""
    steps = console_steps(TUTORIAL.read_text(encoding="utf-8"))
    commands = [c for c, _ in steps]
    order = ["cp -r plugins/_template", "perl -pi", "pip install -q -e",
             "tokenred list reducers", "tokenred check mystride", "tokenred run -c",
             "tokenred report"]  # fmt: skip
    found = [next(i for i, c in enumerate(commands) if key in c) for key in order]
    assert found == sorted(found), f"tutorial steps out of order: {commands}"
    run_tutorial(tmp_path, steps[: found[2]], with_venv=False)
    plugin = tmp_path / "tokenred-mystride"
    leftovers = [
        str(p.relative_to(plugin))
        for p in plugin.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and re.search(r"tokenred[_-]template|template_stride", p.read_text())
    ]
    assert not leftovers, f"the tutorial's rename misses 'template' in {leftovers}"
    pyproject = (plugin / "pyproject.toml").read_text()
    assert 'name = "tokenred-mystride"' in pyproject
    assert re.search(r'^mystride = "tokenred_mystride"$', pyproject, re.M), pyproject

    monkeypatch.syspath_prepend(str(plugin))
    before = set(sys.modules)
    try:
        module = importlib.import_module("tokenred_mystride")
        pm = get_plugin_manager(autoload=False, extra=[module])
        entry = Registries.from_plugin_manager(pm).reducers.entry("mystride")
        results = check_reducer(entry.load())
        failed = [r.line() for r in results if not r.passed]
        assert len(results) == len(CHECKS) and not failed, failed
    finally:
        for name in set(sys.modules) - before:
            if name.startswith("tokenred_mystride"):
                del sys.modules[name]
