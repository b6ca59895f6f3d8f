"""Bad config and study files fail with one line: the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenred.cli import main
from tokenred.errors import ExitCode


def _error(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    code = main(["run", "-c", str(path), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == ExitCode.USAGE_ERROR, (out, err)
    assert out == "", "nothing may run"
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("text", "phrases"),
    [
        (
            "study: s\nbsae: {reducer: random}\nsweep: {seed: [1]}\n",
            ["unknown top-level key 'bsae'", "Did you mean 'base'?"],
        ),
        (
            "study: s\nreducer: random\nsweep: {seed: [1]}\n",
            ["experiment key(s) reducer", "move them under base:"],
        ),
        ("", ["is empty", "leave out -c to run the defaults"]),
        ("# nothing yet\n\n", ["is empty"]),
        (
            "study: s\nsweep: {budget.ratio: 0.3}\n",
            ["sweep.budget.ratio must be a list", "budget.ratio: [0.3]"],
        ),
        ("study: s\nsweep: 3\n", ["sweep must map config keys to lists"]),
        ("- a\n- b\n", ["must hold a mapping of keys, not a list"]),
        ("42\n", ["must hold a mapping of keys, not a single value"]),
    ],
)
def test_bad_file_is_one_clear_line(capsys, no_autoload, tmp_path, text, phrases):
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    line = _error(capsys, path)
    assert "study.yaml" in line, "the line names the file"
    for phrase in phrases:
        assert phrase in line, line


def test_directory_is_not_reported_as_missing(capsys, no_autoload, tmp_path):
    (tmp_path / "exp.yaml").write_text("reducer: random\n")
    line = _error(capsys, tmp_path)
    assert "is a directory" in line and "not found" not in line
    assert str(tmp_path / "exp.yaml") in line


def test_non_utf8_file_names_the_byte(capsys, no_autoload, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("reducer: caf\xe9\n".encode("latin-1"))
    line = _error(capsys, path)
    assert "latin1.yaml" in line and "not UTF-8" in line and "byte 12" in line


def test_valid_study_still_loads(capsys, no_autoload, tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "study: s\nbase: {reducer: random}\nsweep: {budget.ratio: [1e-1]}\n"
    )
    assert main(["run", "-c", str(path), "--dry-run"]) == 0
    assert "ratio: 0.1" in capsys.readouterr().out
