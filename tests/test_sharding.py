"""``model.device_map``: a model split over devices answers as the unsplit one.

On CPU there is only one compute device, so the split that Accelerate supports
there stands in for two GPUs: the last decoder layers and the LM head are
offloaded to ``disk`` and run through Accelerate's hooks (weights streamed in,
activations moved), while the rest stays on ``cpu``. The reducer runs before the
LLM and inside it at a layer on the offloaded side, so the insertion hooks,
positions and KV cache cross the split. The multi-GPU case is marked ``gpu``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tokenred.adapters._sharding import complete, parse_device_map
from tokenred.cli import main
from tokenred.errors import ModelLoadError

SPLIT = (
    "model.language_model.layers.2=disk,model.language_model.layers.3=disk,lm_head=disk"
)
FIELDS = ("id", "status", "text", "prediction", "n_visual_out", "schedule", "flops")


def _run(root: Path, *extra: str) -> dict[str, list[dict]]:
    args = ["run", "--reducer", "sttm", "data.limit=4", "measure.latency=false"]
    assert main([*args, f"output.root={root}", *extra]) == 0
    out = {}
    for run in sorted(p for p in (root / "default").iterdir() if p.is_dir()):
        lines = (run / "samples.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in lines]
        manifest = json.loads((run / "manifest.json").read_text())
        key = manifest["config"]["reducer"]["name"] if "config" in manifest else run
        out[str(key)] = [{k: r[k] for k in FIELDS} for r in records]
        out[f"{key}:devices"] = manifest["measurement"]["model"].get("devices")
    return out


def test_parse_and_complete_an_explicit_map():
    assert parse_device_map("auto", "m") == "auto"
    assert parse_device_map("a.b=1, c=cpu", "m") == {"a.b": 1, "c": "cpu"}
    with pytest.raises(ModelLoadError, match="MODULE=DEVICE"):
        parse_device_map("a.b", "m")
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2))
    )
    assert complete(model, {"1.0": "disk"}, "cpu") == {"1.0": "disk", "0": "cpu"}


@pytest.mark.parametrize("stage", ["pre_llm", "in_llm"])
def test_layers_offloaded_through_accelerate_answer_as_the_unsplit_model(
    tmp_path, stage
):
    where = (
        [f"insertion.stage={stage}", "insertion.layer=3"] if stage == "in_llm" else []
    )
    whole = _run(tmp_path / "whole", *where)
    split = _run(tmp_path / "split", *where, f"model.device_map='{SPLIT}'")
    devices = {k: v for k, v in split.items() if k.endswith(":devices")}
    assert devices and all(v == ["cpu", "disk"] for v in devices.values())
    assert {k: v for k, v in split.items() if k not in devices} == {
        k: v for k, v in whole.items() if not k.endswith(":devices")
    }


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_device_map_auto_over_gpus_answers_as_one_gpu(tmp_path):
    one = _run(tmp_path / "one", "model.device=cuda")
    many = _run(
        tmp_path / "many",
        "model.device=cuda",
        "model.device_map='model.language_model.layers.2=1,"
        "model.language_model.layers.3=1,lm_head=1'",
    )
    devices = {k: v for k, v in many.items() if k.endswith(":devices")}
    assert all(v == ["cuda:0", "cuda:1"] for v in devices.values())
    keep = {k: v for k, v in one.items() if not k.endswith(":devices")}
    assert {k: v for k, v in many.items() if k not in devices} == keep


def test_timers_span_only_the_cuda_devices_of_a_sharded_model():
    from tokenred.measure.latency import Timer, time_across

    try:
        time_across(["cpu", "disk"])  # offloading: the host clock times it all
        assert Timer("cpu").devices == [torch.device("cpu")]
    finally:
        time_across([])


def test_data_parallel_replicas_get_disjoint_gpu_groups(monkeypatch):
    from tokenred.adapters._sharding import replica_gpus

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    groups = [
        replica_gpus({"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": str(r)}) for r in (0, 1)
    ]
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert replica_gpus({"LOCAL_WORLD_SIZE": "8", "LOCAL_RANK": "3"}) == [3]
    assert replica_gpus({}) is None  # one process: Accelerate plans over all GPUs
