"""Record, or check, the command outputs the docs show.

Pages show real outputs of ``make run`` (``docs/getting-started.md``) and of the
plugin tutorial's comparison run (``docs/plugins/writing-a-reducer.md``) between
``<!-- run-output -->`` and ``<!-- /run-output -->``. This script reruns those
commands in a scratch directory and either rewrites the blocks::

    make docs-outputs                               # or:
    .venv/bin/python docs/record_outputs.py         # rewrite every block
    .venv/bin/python docs/record_outputs.py --check # exit 1 and diff on drift

or, with ``--check``, compares them. Timings (``12.3 ms CPU (IQR 1.2)``) differ from
run to run and are masked before comparing; everything else (run ids, accuracies, token
counts, FLOPs, warnings) must match. ``tests/test_docs_outputs.py`` runs the check
(marked ``slow``) and, by default, the fast consistency checks against the
committed study (``docs/study/summary.csv``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
START = "<!-- run-output -->"
END = "<!-- /run-output -->"
PLACEHOLDER_REPO = "/path/to/tokenred"
_BLOCK = re.compile(
    re.escape(START) + r"\n```console\n(.*?)```\n" + re.escape(END), re.S
)
_TIMING = re.compile(r"\d[\d,]*(?:\.\d+)? ms (CPU|GPU)")
_IQR = re.compile(r"\(IQR \d[\d,]*(?:\.\d+)?\)")
_PROGRESS = re.compile(r"^[^|\n]*:\s+\d+%\|")
# Off a terminal the CLI logs progress as plain lines and ends with the elapsed
# time (tokenred/progress.py); both are timings, so the pages leave them out.
_LOG_LINE = re.compile(r"^(\S+: \d+/\d+ \(\d+%\), .* q/s, elapsed |elapsed \S+$)")


@dataclass(frozen=True)
class Recorded:
    """One recorded block: its page and how to produce its text."""

    page: str
    produce: Callable[[Path], str]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENRED_")}
    env.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def clean(text: str) -> str:
    """Drop progress bars (carriage-return redraws) and name the repo generically."""
    lines = []
    for raw in text.split("\n"):
        line = raw.rsplit("\r", 1)[-1]  # what a terminal leaves after redraws
        if _PROGRESS.match(line) or _LOG_LINE.match(line):
            continue
        lines.append(line.replace(str(REPO), PLACEHOLDER_REPO).rstrip())
    return "\n".join(lines).strip("\n") + "\n"


def normalise(text: str) -> str:
    """Mask what legitimately differs between two runs: the timings."""
    return _IQR.sub("(IQR <t>)", _TIMING.sub(r"<t> ms \1", clean(text)))


def make_run(tmp: Path) -> str:
    """``make run`` on a fresh clone: ``tokenred run --reducer sttm`` in a new dir."""
    tokenred = Path(sys.executable).parent / "tokenred"
    command = [str(tokenred), "run", "--reducer", "sttm"]
    proc = subprocess.run(
        command, cwd=tmp, env=_env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        msg = f"make run failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    return "$ make run\n.venv/bin/tokenred run --reducer sttm\n" + clean(
        proc.stderr + proc.stdout
    )


def _tutorial_module() -> object:
    """Import ``tests/test_tutorial.py``, which knows how to run the tutorial."""
    path = REPO / "tests" / "test_tutorial.py"
    spec = importlib.util.spec_from_file_location("_tokenred_tutorial", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tutorial_run(tmp: Path) -> str:
    """The tutorial's steps up to its comparison run; that run's output."""
    tut: object = _tutorial_module()
    text = (DOCS / "plugins" / "writing-a-reducer.md").read_text(encoding="utf-8")
    steps = tut.console_steps(text)  # type: ignore[attr-defined]
    index = next(i for i, (c, _) in enumerate(steps) if "tokenred run -c" in c)
    # The page shows what the terminal shows: warnings (stderr) included.
    run = [*steps[:index], (steps[index][0] + " 2>&1", steps[index][1])]
    outputs = tut.run_tutorial(tmp, run)  # type: ignore[attr-defined]
    return f"$ {steps[index][0]}\n" + clean(outputs[index])


BLOCKS = (
    Recorded("getting-started.md", make_run),
    Recorded("plugins/writing-a-reducer.md", tutorial_run),
)


def recorded_block(page: str) -> str:
    """Return the text of the page's recorded block (between the markers)."""
    match = _BLOCK.search((DOCS / page).read_text(encoding="utf-8"))
    if match is None:
        msg = f"docs/{page} has no {START} ... {END} block around a console fence"
        raise ValueError(msg)
    return match.group(1)


def replace_block(page: str, text: str) -> None:
    """Rewrite the page's recorded block with ``text``."""
    path = DOCS / page
    body = path.read_text(encoding="utf-8")
    new = f"{START}\n```console\n{text}```\n{END}"
    path.write_text(_BLOCK.sub(lambda _: new, body, count=1), encoding="utf-8")


def produce(block: Recorded) -> str:
    """Run ``block``'s commands in a fresh scratch directory."""
    with tempfile.TemporaryDirectory(prefix="tokenred-docs-") as tmp:
        return block.produce(Path(tmp))


def drift(block: Recorded, actual: str) -> str:
    """Return a unified diff of recorded vs ``actual`` (timings masked), or ""."""
    want = normalise(recorded_block(block.page)).splitlines()
    got = normalise(actual).splitlines()
    if want == got:
        return ""
    diff = difflib.unified_diff(want, got, f"docs/{block.page}", "actual", lineterm="")
    return "\n".join(diff)


def main(argv: list[str] | None = None) -> int:
    """Rewrite (default) or ``--check`` every recorded block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("pages", nargs="*", help="only these pages (docs-relative)")
    args = parser.parse_args(argv)
    status = 0
    for block in BLOCKS:
        if args.pages and block.page not in args.pages:
            continue
        actual = produce(block)
        if args.check:
            diff = drift(block, actual)
            if diff:
                print(diff)
                status = 1
            else:
                print(f"current: docs/{block.page}")
        elif drift(block, actual):
            replace_block(block.page, actual)
            print(f"recorded: docs/{block.page}")
        else:  # only timings differ: keep the page as it is (no churn)
            print(f"current: docs/{block.page}")
    return status


if __name__ == "__main__":
    sys.exit(main())
