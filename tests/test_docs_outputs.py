"""The command outputs the docs show are real and current.

``docs/record_outputs.py`` reruns the commands behind every ``<!-- run-output -->``
block (``make docs-outputs`` rewrites them). The full rerun is ``slow``; the default
suite checks that the blocks parse and agree with the committed study
(``docs/study/summary.csv``) and with the shipped demo weights.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
HEADER = "| Method | Budget | N | Errors | Acc % | Kept tokens | Eq. tokens |"


@cache
def recorder() -> Any:
    """Import ``docs/record_outputs.py``."""
    path = DOCS / "record_outputs.py"
    spec = importlib.util.spec_from_file_location("_tokenred_record_outputs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def summary_rows(block: str) -> list[dict[str, str]]:
    """The rows of the first summary table of a recorded block."""
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _pages() -> list[str]:
    return [b.page for b in recorder().BLOCKS]


@pytest.mark.parametrize("page", _pages())
def test_recorded_blocks_parse(page: str) -> None:
    block = recorder().recorded_block(page)
    assert block.startswith("$ "), f"docs/{page}: the block starts with its command"
    rows = summary_rows(block)
    assert rows and rows[0]["Method"] == "unreduced", rows
    for row in rows:
        assert re.fullmatch(r"\d+\.\d", row["Acc %"]), row
        assert re.fullmatch(r"[\d,]+", row["Kept tokens"]), row
        assert int(row["N"]) > 0 and row["Errors"] == "0", row


@pytest.mark.parametrize("page", _pages())
def test_recorded_blocks_match_the_shipped_weights(page: str) -> None:
    block = recorder().recorded_block(page)
    shipped = (REPO / "tokenred" / "assets" / "tiny" / "model.safetensors").is_file()
    stale = ("random init" in block) or ("RANDOM weights" in block)
    assert stale != shipped, (
        f"docs/{page} shows a run with{'' if stale else 'out'} random weights, but "
        f"the demo weights are{'' if shipped else ' not'} shipped; run make "
        "docs-outputs"
    )


def _study() -> dict[tuple[str, str], dict[str, str]]:
    with open(DOCS / "study" / "summary.csv", encoding="utf-8") as fh:
        return {(r["method"], r["budget"]): r for r in csv.DictReader(fh)}


def test_getting_started_agrees_with_the_committed_study() -> None:
    """``make run`` and the study use the same model, split and questions; every
    run they share must show the same accuracy, tokens and FLOPs."""
    rec = recorder()
    rows = summary_rows(rec.recorded_block("getting-started.md"))
    study = _study()
    shared = [r for r in rows if (r["Method"], r["Budget"]) in study]
    assert shared and shared[0]["Method"] == "unreduced", "nothing to compare"
    for row in shared:
        ref = study[(row["Method"], row["Budget"])]
        where = f"{row['Method']} {row['Budget']}"
        hint = "; rerun make study and make docs-outputs"
        assert int(row["N"]) == int(ref["n"]), where + hint
        assert row["Acc %"] == f"{float(ref['accuracy']):.1f}", where + hint
        kept = f"{float(ref['kept_tokens']):,.0f}"
        assert row["Kept tokens"] == kept, where + hint
        gflop = float(ref["flops_prefill"]) / 1e9
        shown = float(row["Prefill FLOPs"].split()[0])
        assert shown == pytest.approx(gflop, rel=5e-3), where + hint


def test_normalise_masks_timings_and_progress_bars() -> None:
    rec = recorder()
    a = "Loading weights: 100%|###| 93/93\n| x | 12.5 ms CPU |\n" + str(REPO) + "/a\n"
    b = "\rLoading: 10%|#| 9/93\r\n| x | 7 ms CPU |\n/path/to/tokenred/a\n"
    assert (
        rec.normalise(a)
        == rec.normalise(b)
        == "| x | <t> ms CPU |\n" + ("/path/to/tokenred/a\n")
    )
    assert rec.normalise("| 95.8 |") != rec.normalise("| 95.7 |")


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages())
def test_recorded_outputs_are_current(page: str) -> None:
    rec = recorder()
    (block,) = [b for b in rec.BLOCKS if b.page == page]
    diff = rec.drift(block, rec.produce(block))
    assert not diff, f"docs/{page} is out of date; run make docs-outputs\n{diff}"
