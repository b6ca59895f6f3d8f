"""CPU smoke test of ``benchmarks/gpu_suite.py``, so the GPU suite cannot rot.

The suite runs on a toy model with the 7B layout's token grid (196 tokens per
frame), every registered first-party reducer, both budgets and both stages, and
the test checks the JSON schema a GPU session relies on. Timings on this shared
CPU mean nothing and are not asserted; FLOPs, token counts and the schema are.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
REDUCERS = {"sttm", "tome", "fastv", "dycoke_ttm", "pool", "random"}
BUDGETS = (0.5, 0.3)
STAGES = ("pre_llm", "in_llm")


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_suite_under_test", SUITE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite() -> Any:
    return _load()


@pytest.fixture(scope="module")
def smoke(suite: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("suite")
    argv = [
        "--tiny",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--frames",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "2",
        "--out",
        str(out),
    ]
    assert suite.main(argv) == 0
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, files
    doc: dict[str, Any] = json.loads(files[0].read_text())
    doc["_md"] = files[0].with_suffix(".md").read_text()
    return doc


def _rows(doc: dict[str, Any]) -> dict[tuple[str, str, float], dict[str, Any]]:
    return {(r["reducer"], r["stage"], r["budget_ratio"]): r for r in doc["cases"]}


def test_header_records_device_versions_and_model(smoke: dict[str, Any]) -> None:
    assert smoke["schema"] == "tokenred.gpu_suite/1"
    assert smoke["complete"] is True
    env = smoke["environment"]
    assert env["device"]["kind"] == "cpu"
    assert env["versions"]["torch"] == torch.__version__
    assert env["versions"]["transformers"]
    assert env["sdpa_used"] == "flash" and env["sdpa_probe_error"] is None
    model = smoke["model"]
    assert model["layout"] == "tiny" and model["random_weights"] is True
    assert model["parameters"] > 0
    assert model["init_on_device"] is True and model["init_error"] is None
    assert smoke["protocol"]["repeats"] == 2


def test_every_reducer_budget_and_stage_is_measured_or_skipped_with_reason(
    smoke: dict[str, Any],
) -> None:
    rows = _rows(smoke)
    base = rows[("none", "none", 1.0)]
    assert base["status"] == "ok" and base["n_visual_in"] == 2 * 196
    for name in REDUCERS:
        for stage in STAGES:
            for budget in BUDGETS:
                row = rows[(name, stage, budget)]
                if name == "fastv" and stage == "pre_llm":
                    assert row["status"] == "skipped"
                    assert "in_llm" in row["reason"]
                else:
                    assert row["status"] == "ok", row
    assert len(smoke["cases"]) == 1 + len(REDUCERS) * len(STAGES) * len(BUDGETS)


def test_reduced_rows_carry_speedups_flops_memory_and_syncs(
    smoke: dict[str, Any],
) -> None:
    rows = _rows(smoke)
    base = rows[("none", "none", 1.0)]
    assert base["speedup"] == pytest.approx(1.0)
    # The unreduced prefill has no sync-prone op; random's CPU draw has none either.
    assert base["syncs"]["prefill"] == 0 and base["syncs"]["reducer"] is None
    assert rows[("random", "in_llm", 0.5)]["syncs"]["reducer"] == 0
    # Regression guard (CPU proxy): outside STTM a reduction costs at most the
    # output count and the framework's is_original check (dycoke_ttm's count holds
    # a .tolist() of a host-side plan, which the proxy cannot tell from a device
    # read); the engine around it adds one read-back, the output validation's
    # flags. STTM's default budget search reads back per probe, not per frame.
    for (name, _, _), row in rows.items():
        if name != "none" and row["status"] == "ok":
            limit = 100 if name == "sttm" else 2
            assert row["syncs"]["reducer"] <= limit, (name, row["syncs"]["sites"])
            assert row["syncs"]["prefill"] == row["syncs"]["reducer"] + 1
    assert base["flops_ideal_speedup"] == pytest.approx(1.0)
    for (name, stage, budget), row in rows.items():
        if name == "none" or row["status"] != "ok":
            continue
        assert row["n_visual_out"] <= round(budget * row["n_visual_in"])
        assert row["flops_ideal_speedup"] > 1.0
        assert row["speedup"] > 0.0
        low, high = row["speedup_range"]
        assert low <= row["speedup"] <= high
        assert row["ttft_ms"]["n"] == 2 and row["ttft_ms"]["iqr"] >= 0.0
        assert row["reducer_ms"]["n"] == 2
        assert 0.0 < row["reducer_share"] < 1.0
        assert 0.0 < row["kv_cache_ratio"] < 1.0
        assert row["peak_memory"]["peak_bytes"] > 0
        # On CPU the sync count is the proxy: ops that would synchronise on CUDA.
        syncs = row["syncs"]
        assert syncs["method"] == "cpu_proxy"
        assert 0 <= syncs["reducer"] <= syncs["prefill"]
        assert sum(syncs["sites"].values()) == syncs["prefill"]
        assert sum(syncs["reducer_sites"].values()) == syncs["reducer"]
        # No decoder layer may get an explicit mask: CUDA flash would refuse it.
        assert row["attention_mask_seen"] is False
        if stage == "in_llm":
            pre = rows[(name, "pre_llm", budget)]
            if pre["status"] == "ok":
                assert row["flops_ideal_speedup"] < pre["flops_ideal_speedup"]


def test_markdown_has_one_line_per_case_and_the_paper_reference(
    smoke: dict[str, Any],
) -> None:
    md = smoke["_md"]
    table = [line for line in md.splitlines() if line.startswith("| 2 |")]
    assert len(table) == len(smoke["cases"])
    assert "2.07x" in md and "3.02x" in md
    assert "CPU, smoke test only" in md


def test_cpu_proxy_counts_scalar_reads_masks_and_unique(suite: Any) -> None:
    x = torch.arange(6.0)
    with torch.inference_mode(), suite.count_syncs("cpu_proxy") as (_, log):
        float(x.sum())  # a scalar read
        x[x > 2].sum()  # boolean-mask indexing
        torch.unique(x)
        x.repeat_interleave(2)  # int repeats: the output size is known
        torch.cumsum(x, 0)
    assert log.total == 3
    assert all(site.startswith("tests/test_gpu_suite.py:") for site in log.sites)


def test_time_budget_skips_and_records_the_remaining_cases(
    suite: Any, tmp_path: Path
) -> None:
    argv = ["--tiny", "--device", "cpu", "--dtype", "float32", "--frames", "1"]
    argv += ["--reducers", "pool", "--max-minutes", "0", "--out", str(tmp_path)]
    assert suite.main(argv) == 0
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert doc["complete"] is True
    statuses = {r["status"] for r in doc["cases"]}
    assert statuses == {"timeout"}
    assert all("time budget" in r["reason"] for r in doc["cases"])


def test_fastv_before_the_llm_is_skipped_by_plan(suite: Any) -> None:
    from tokenred.registry import Registries

    regs = Registries.from_plugin_manager(suite.plugin_manager())
    args = suite.parse_args(["--tiny", "--device", "cpu", "--reducers", "fastv"])
    cases, skipped = suite.plan_cases(regs, args)
    assert {c.stage for c in cases if c.reducer == "fastv"} == {"in_llm"}
    assert len(skipped) == len(args.budgets)


def test_default_reducers_are_the_first_party_ones(suite: Any) -> None:
    from tokenred.registry import Registries

    regs = Registries.from_plugin_manager(suite.plugin_manager())
    names = [e.name for e in regs.reducers if e.name not in suite.EXCLUDED]
    ordered = suite.order_reducers(names)
    assert set(ordered) == REDUCERS
    assert ordered[0] == "sttm"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sync_counter_counts_item_calls_on_cuda(suite: Any) -> None:
    x = torch.ones(4, device="cuda")
    with suite.count_syncs("cuda") as (_, log):
        float(x.sum().item())
        float(x.max().item())
    assert log.total == 2


def test_7b_layout_builds_on_the_meta_device(suite: Any, tmp_path: Path) -> None:
    """The GPU run's checkpoint: Qwen2-7B + SigLIP, 196 tokens per frame.

    Built on the meta device (shapes only, no memory), so a config typo shows up
    here rather than after a device machine has started.
    """
    import math

    import transformers

    path = suite.write_checkpoint(tmp_path, suite.LAYOUTS["llava_video_7b"])
    cfg = transformers.AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = transformers.LlavaOnevisionForConditionalGeneration._from_config(
            cfg, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    llm = sum(p.numel() for p in model.model.language_model.parameters())
    llm += sum(p.numel() for p in model.lm_head.parameters())
    assert llm == pytest.approx(7.62e9, rel=0.01)  # Qwen2-7B
    vc = cfg.vision_config
    side = math.ceil((vc.image_size // vc.patch_size) / 2)
    assert 64 * side * side == 12544  # the paper's 64-frame token count
    assert cfg.text_config.rope_parameters["rope_theta"] == 1e6
