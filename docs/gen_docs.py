"""Regenerate the generated parts of the docs from the code.

Run ``.venv/bin/python docs/gen_docs.py`` after changing CLI flags, config fields or
contract checks; ``tests/test_docs.py`` fails while a page is out of date. Each page
keeps its hand-written prose; only the text between the markers is replaced.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).resolve().parent
START = "<!-- generated: start (docs/gen_docs.py) -->"
END = "<!-- generated: end -->"


def generators() -> dict[str, Callable[[], str]]:
    """Map page (relative to docs/) to the function that renders its block."""
    from tokenred._configdoc import config_reference
    from tokenred.cli import help_markdown
    from tokenred.testing import checks_table

    return {
        "cli.md": help_markdown,
        "config.md": config_reference,
        "plugins/contract.md": checks_table,
    }


def render(text: str, block: str) -> str:
    """Return ``text`` with the generated block replaced by ``block``."""
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        msg = "page lacks the generated-block markers"
        raise ValueError(msg)
    return f"{head}{START}\n\n{block.strip()}\n\n{END}{tail}"


def main(check: bool = False) -> int:
    """Rewrite every page (or, with ``check``, report the stale ones)."""
    stale = []
    for page, make in generators().items():
        path = DOCS / page
        text = path.read_text(encoding="utf-8")
        new = render(text, make())
        if new != text:
            stale.append(page)
            if not check:
                path.write_text(new, encoding="utf-8")
    for page in stale:
        print(f"{'stale' if check else 'updated'}: docs/{page}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv))
