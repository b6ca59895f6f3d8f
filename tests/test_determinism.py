"""Reproducible answers: per-run thread settings, manifest record, thread count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tokenred.cli import main
from tokenred.determinism import (
    SCORE_GRID,
    compute_settings,
    default_threads,
    stable_scores,
)
from tokenred.errors import ConfigError
from tokenred.schema import MeasureConfig

ANSWER_KEYS = ("prediction", "text", "correct", "n_visual_out", "schedule",
               "visual_schedule", "flops", "reduction_info")  # fmt: skip


def test_compute_settings_apply_and_restore() -> None:
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with compute_settings(2, deterministic=True) as settings:
        assert torch.get_num_threads() == 2
        assert torch.are_deterministic_algorithms_enabled()
        assert settings.to_dict() == {
            "threads": 2,
            "requested_threads": 2,
            "interop_threads": torch.get_num_interop_threads(),
            "deterministic": True,
        }
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (
        before
    )
    with compute_settings(0, deterministic=False) as settings:
        assert settings.threads == default_threads() == torch.get_num_threads()
        assert not settings.deterministic


def test_threads_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match=r"measure\.threads"):
        MeasureConfig(threads=-1)


def test_stable_scores_merge_noise_but_keep_real_differences() -> None:
    sims = torch.tensor([1.0, 1.0 - 6e-8, 1.0 + 1.2e-7, 0.5, 0.5 + 3 * SCORE_GRID])
    out = stable_scores(sims)
    assert out[0] == out[1] == out[2] == 1.0, "float noise compares equal"
    assert out[4] - out[3] == pytest.approx(3 * SCORE_GRID), "real gaps stay"


def _argv(root: Path, data_root: Path, reducer: str, threads: int) -> list[str]:
    return [
        "run",
        "--reducer",
        reducer,
        "--budget",
        "0.3",
        f"output.root={root}",
        f"data.root={data_root}",
        "data.num_videos=3",
        "model.max_new_tokens=2",
        "measure.latency=false",
        f"measure.threads={threads}",
    ]


def _answers(root: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(root.glob("*/*/samples.jsonl")):
        manifest = json.loads((path.parent / "manifest.json").read_text())
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        name = manifest["config"]["reducer"]["name"]
        out[name] = [{k: r[k] for k in ("id", *ANSWER_KEYS)} for r in rows]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.mark.parametrize("reducer", ["tome", "dycoke_ttm"])
def test_answers_do_not_depend_on_the_thread_count(
    tmp_path: Path, data: Path, reducer: str
) -> None:
    """The reducers whose ranking of near-tied similarities drifted (issue 16)."""
    runs = {}
    for threads in (1, 2):
        root = tmp_path / f"t{threads}"
        assert main(_argv(root, data, reducer, threads)) == 0
        runs[threads] = _answers(root)
        manifests = [json.loads(p.read_text()) for p in root.glob("*/*/manifest.json")]
        for manifest in manifests:
            compute = manifest["measurement"]["compute"]
            assert compute["threads"] == compute["requested_threads"] == threads
            assert compute["deterministic"] is True
            assert manifest["device"]["torch_threads"] == threads
    assert set(runs[1]) == {"none", reducer}
    assert runs[1] == runs[2]
    assert torch.get_num_threads() == 1, "the test session's setting is restored"
