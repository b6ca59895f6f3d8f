"""Meta-tests: import hygiene and style rules that apply to every module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tokenred

ROOT = Path(tokenred.__file__).parent


def run_python(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_imports_without_warnings():
    code = (
        "import importlib, pkgutil, tokenred\n"
        "for m in pkgutil.walk_packages(tokenred.__path__, 'tokenred.'):\n"
        "    importlib.import_module(m.name)\n"
    )
    proc = run_python(code, "-W", "error")
    assert proc.returncode == 0, f"importing under -W error failed:\n{proc.stderr}"


def test_import_tokenred_is_cheap_and_side_effect_free():
    code = (
        "import logging, sys, tokenred\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('omegaconf', 'transformers', 'pytest') or m.startswith('tokenred_') "
        "or m.startswith('tokenred.builtin') or m == 'tokenred.config']\n"
        "assert not bad, bad\n"
        "assert not logging.getLogger('tokenred').handlers, 'no logging config'\n"
        "assert not logging.getLogger().handlers, 'no root logging config'\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr


def test_only_config_imports_omegaconf():
    offenders = []
    for path in modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "omegaconf" for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert sorted(set(offenders)) == ["config.py"], offenders


def test_modules_use_postponed_annotations():
    missing = []
    for path in modules():
        tree = ast.parse(path.read_text())
        if not tree.body:
            continue
        future = any(
            isinstance(n, ast.ImportFrom)
            and n.module == "__future__"
            and any(a.name == "annotations" for a in n.names)
            for n in tree.body
        )
        if not future and len(tree.body) > 1:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"add 'from __future__ import annotations' to: {missing}"


def _terminal_writes(tree: ast.AST) -> list[int]:
    """Line numbers of ``print(...)`` calls and any use of ``sys.stdout``/``stderr``.

    Covers ``sys.stdout.write``, ``print(..., file=sys.stderr)``, ``from sys import
    stdout`` and ``sys.__stdout__``, so library code has no way to the terminal.
    """
    lines = []
    streams = {"stdout", "stderr", "__stdout__", "__stderr__"}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "print"
        ):
            lines.append(node.lineno)
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in streams
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        ):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            if any(a.name in streams for a in node.names):
                lines.append(node.lineno)
    return lines


def test_no_terminal_output_in_library_code():
    allowed = {"cli.py"}  # the command's output is its user interface
    offenders = []
    for path in modules():
        rel = str(path.relative_to(ROOT))
        if rel in allowed:
            continue
        lines = _terminal_writes(ast.parse(path.read_text()))
        offenders += [f"{rel}:{line}" for line in lines]
    assert not offenders, f"log instead of writing to the terminal: {offenders}"


def test_terminal_write_detector_catches_every_form():
    samples = [
        "print('x')",
        "import sys\nsys.stdout.write('x')",
        "import sys\nsys.stderr.write('x')",
        "import sys\nprint('x', file=sys.stderr)",
        "from sys import stdout\nstdout.write('x')",
        "import sys\nsys.__stderr__.flush()",
    ]
    for code in samples:
        assert _terminal_writes(ast.parse(code)), code
    assert not _terminal_writes(ast.parse("import logging\nlogging.info('x')"))


def test_no_importorskip_of_hard_dependencies():
    # A hard dependency that fails to import is a broken install, not a skip.
    import tomllib

    project = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]
    hard = {
        d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()
        for d in project["dependencies"]
    }
    tests = ROOT.parent / "tests"
    offenders = []
    for path in sorted(tests.rglob("*.py")) + sorted(
        (ROOT.parent / "plugins").rglob("test_*.py")
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "importorskip"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).split(".")[0] in hard
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert "transformers" in hard and not offenders, offenders


def test_runner_only_orchestrates():
    # The runner hands work to the modules that own it (docs/architecture.md); a
    # growing runner or import list means a concept is moving back into it.
    path = ROOT / "runner.py"
    text = path.read_text()
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "tokenred."
        ):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names if a.name.startswith("tokenred.")}
    assert len(text.splitlines()) <= 350
    # 10: tokenred.distributed (the ranks a run is shared by, issue 18).
    assert len(imported) <= 10, sorted(imported)
