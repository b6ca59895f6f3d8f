"""The built documentation works when opened from disk (``site/index.html``).

The site is built once into a temporary folder with the repository's
``mkdocs.yml``: every internal link must name an existing file (not a directory,
which a browser shows as a listing from ``file://``), the search index must be
inlined as a script (the offline plugin), and the wide-content stylesheet linked.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    out = tmp_path_factory.mktemp("site")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_MKDOCS_2_WARNING", "1")
        mp.chdir(REPO)
        build(load_config(str(REPO / "mkdocs.yml"), site_dir=str(out)))
    return out


def _local_links(page: Path) -> list[str]:
    html = page.read_text(encoding="utf-8")
    links = re.findall(r'(?:href|src)="([^"]+)"', html)
    return [
        link
        for link in links
        if not urlsplit(link).scheme and not link.startswith(("#", "//", "mailto:"))
    ]


def test_every_internal_link_opens_a_file(site: Path) -> None:
    # 404.html is only ever served by a web server, with absolute links.
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    assert len(pages) > 20
    broken = []
    for page in pages:
        for link in _local_links(page):
            target = (page.parent / unquote(urlsplit(link).path)).resolve()
            if not target.is_file():
                broken.append(f"{page.relative_to(site)} -> {link}")
    assert not broken, f"links that do not open a file from disk: {broken[:10]}"


def test_search_works_without_a_server(site: Path) -> None:
    index = site / "search" / "search_index.js"
    assert index.is_file(), "the offline plugin inlines the search index"
    assert index.read_text(encoding="utf-8").startswith("var __index =")
    # From file:// the search worker runs through the iframe-worker shim.
    assert "iframe-worker" in (site / "index.html").read_text(encoding="utf-8")


def test_wide_content_scrolls(site: Path) -> None:
    html = (site / "cli.html").read_text(encoding="utf-8")
    assert 'href="stylesheets/extra.css"' in html
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    assert re.search(r"table:not\(\[class\]\)\s*\{[^}]*overflow-x:\s*auto", css)
    assert re.search(r"pre > code\s*\{[^}]*overflow-x:\s*auto", css)
    assert "fonts.googleapis.com" not in html, "no font request when read offline"
