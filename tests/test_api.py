"""The notebook API: tokenred.run and tokenred.load_results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import tokenred
from tokenred.errors import TokenredError


def test_run_returns_rows_for_the_reducer_and_the_unreduced_run(tmp_path: Path, capfd):
    rows = tokenred.run(
        reducer="random",
        budget=0.5,
        overrides=["data.limit=4", f"output.root={tmp_path}"],
    )
    out, err = capfd.readouterr()
    assert out == "" and err == "", "the API prints nothing unless asked"
    assert [r["method"] for r in rows] == ["unreduced", "random (K=1)"]
    base, red = rows
    for row in rows:
        assert row["n"] == 4 and row["errors"] == 0
        assert 0.0 <= row["accuracy"] <= 100.0
        assert Path(row["run_dir"]).is_dir()
    assert red["kept_tokens"] == pytest.approx(base["kept_tokens"] / 2, abs=1)
    assert 0 < red["flops_prefill"] < base["flops_prefill"]
    assert base["rel_flops"] == pytest.approx(100) and red["rel_flops"] < 100
    assert isinstance(rows.frame, pd.DataFrame) and len(rows.frame) == 2
    assert list(rows.to_pandas()["method"]) == ["unreduced", "random (K=1)"]

    again = tokenred.load_results(tmp_path / "default")
    assert again == rows, "a finished store reads back as the same rows"
    assert tokenred.load_results(rows[1]["run_dir"])[0]["method"] == "random (K=1)"


def test_run_takes_a_study_file_and_token_budgets(tmp_path: Path):
    study = tmp_path / "study.yaml"
    study.write_text(
        "study: api_study\n"
        "base:\n  data: {limit: 2}\n"
        f"  output: {{root: {tmp_path}}}\n"
        "sweep:\n  budget.tokens: [64, 128]\n  reducer.name: [random]\n"
    )
    rows = tokenred.run(study, progress=lambda label, total: _Bar())
    assert [r["method"] for r in rows] == ["unreduced", "random (K=1)", "random (K=1)"]
    assert sorted(r["kept_tokens"] for r in rows[1:]) == [64, 128]
    assert all("api_study" in r["run_dir"] for r in rows)


class _Bar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def test_run_reports_config_errors_like_the_cli(tmp_path: Path):
    with pytest.raises(TokenredError, match="rando"):
        tokenred.run(reducer="rando", overrides=[f"output.root={tmp_path}"])


def test_load_results_of_an_empty_folder_says_where(tmp_path: Path):
    with pytest.raises(TokenredError, match="no run directory"):
        tokenred.load_results(tmp_path)
