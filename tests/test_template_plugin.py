"""The template plugin is a separate distribution: prove the third-party path."""

from __future__ import annotations

import json
from importlib import metadata

from tokenred.cli import main


def test_template_distribution_is_installed_with_its_entry_point():
    dist = metadata.distribution("tokenred-template")
    eps = [ep for ep in dist.entry_points if ep.group == "tokenred"]
    assert [(ep.name, ep.value) for ep in eps] == [("template", "tokenred_template")]
    requires = " ".join(dist.requires or [])
    assert "tokenred<1,>=0.1" in requires or "tokenred>=0.1,<1" in requires


def test_template_is_listed_and_passes_the_contract(capsys, monkeypatch):
    monkeypatch.delenv("TOKENRED_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("TOKENRED_DISABLE_PLUGINS", raising=False)
    assert main(["list", "reducers", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    row = rows["template_stride"]
    assert (row["plugin"], row["distribution"]) == ("template", "tokenred-template")
    assert main(["check", "template_stride"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("15 passed, 0 failed"), out
