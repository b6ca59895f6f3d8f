"""Small pieces: budgets, plans, feature files, pixels, registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tokenred.adapters._common import (
    check_frames,
    normalize,
    resize_shortest_and_crop,
    smart_resize,
)
from tokenred.adapters.qwen2_vl import patchify
from tokenred.builtin.reducers import NoneReducer
from tokenred.errors import ConfigError, DataError
from tokenred.insertion import sample_generator
from tokenred.model_io import VideoFeatures
from tokenred.plan import BudgetSpec, ReductionPlan
from tokenred.schema import InsertionConfig
from tokenred.tokens import Stage


@pytest.mark.parametrize(
    ("spec", "n", "expected"),
    [
        (BudgetSpec(ratio=0.25), 10, 3),
        (BudgetSpec(ratio=0.5), 3, 2),
        (BudgetSpec(ratio=0.01), 10, 1),
        (BudgetSpec(ratio=1.0), 196, 196),
        (BudgetSpec(tokens=64), 100, 64),
        (BudgetSpec(tokens=64), 10, 10),
        (BudgetSpec(tokens=5), 0, 1),
    ],
)
def test_budget_resolve(spec: BudgetSpec, n: int, expected: int) -> None:
    assert spec.resolve(n) == expected


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"ratio": 0.5, "tokens": 3}, {"ratio": 0.0}, {"ratio": 1.5}, {"tokens": 0}],
)
def test_budget_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="budget"):
        BudgetSpec(**kwargs)


def test_plan_checks_stage_and_layer() -> None:
    # One validator for config and plan: the same error type and the same words.
    for stage, layer, words in [
        (Stage.PRE_LLM, 2, "pre_llm reduction always uses layer 0"),
        (Stage.IN_LLM, 0, "needs insertion.layer >= 1"),
    ]:
        with pytest.raises(ConfigError, match=words) as from_plan:
            ReductionPlan(NoneReducer(), stage, layer)
        with pytest.raises(ConfigError) as from_config:
            InsertionConfig(stage=stage, layer=layer)
        assert str(from_plan.value) == str(from_config.value)
    plan = ReductionPlan(NoneReducer(), "in_llm", 3, origin="none (tokenred 0.1)")  # type: ignore[arg-type]
    assert plan.stage is Stage.IN_LLM and plan.label == "none (tokenred 0.1)"


def test_sample_generator_depends_on_seed_and_id() -> None:
    def draw(seed: int, sid: str) -> torch.Tensor:
        return torch.rand(4, generator=sample_generator(seed, sid))

    assert torch.equal(draw(0, "a"), draw(0, "a"))
    assert not torch.equal(draw(0, "a"), draw(0, "b"))
    assert not torch.equal(draw(0, "a"), draw(1, "a"))


def test_video_features_roundtrip(tmp_path: Path) -> None:
    feats = VideoFeatures(
        features=torch.randn(12, 8).to(torch.bfloat16),
        grid=(3, 2, 2),
        extra={"newline": torch.randn(8), "video_grid_thw": torch.tensor([[2, 4, 4]])},
        vision_seq_len=16,
        vision_num_seqs=3,
    )
    path = tmp_path / "v.safetensors"
    feats.save(path)
    back = VideoFeatures.load(path)
    assert back.grid == (3, 2, 2) and back.n == 12
    assert back.vision_seq_len == 16 and back.vision_num_seqs == 3
    assert torch.equal(back.features, feats.features)
    assert back.features.dtype == torch.bfloat16
    assert set(back.extra) == {"newline", "video_grid_thw"}
    assert torch.equal(back.extra["video_grid_thw"], feats.extra["video_grid_thw"])


@pytest.mark.parametrize("factor", [4, 28])
def test_smart_resize_matches_hf(factor: int) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        smart_resize as hf_smart_resize,
    )

    rng = np.random.default_rng(factor)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(factor, 40 * factor, 2))
        lo = int(rng.integers(1, 100)) * factor * factor
        hi = lo + int(rng.integers(0, 2000)) * factor * factor
        got = smart_resize(h, w, factor, lo, hi)
        ref = hf_smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)
        assert got == tuple(ref), f"{h}x{w} in [{lo}, {hi}]: {got} != {ref}"


def test_patchify_matches_hf_image_processor() -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    frame = np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8)
    proc = Qwen2VLImageProcessorPil(do_resize=False)
    ref = proc(images=[frame], return_tensors="pt")
    mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    x = normalize(np.stack([frame, frame]), mean, std)
    ours = patchify(x, patch=14, merge=2, temporal=2)
    assert ours.shape == ref["pixel_values"].shape
    assert torch.allclose(ours, ref["pixel_values"].float(), atol=1e-5)
    assert ref["image_grid_thw"].tolist() == [[1, 4, 6]]


def test_frame_helpers() -> None:
    frames = np.zeros((2, 30, 50, 3), dtype=np.uint8)
    frames[:, :, 25:] = 255
    crop = resize_shortest_and_crop(frames, 20)
    assert crop.shape == (2, 20, 20, 3)
    x = normalize(crop, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert (
        x.shape == (2, 3, 20, 20) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    )
    with pytest.raises(DataError, match="uint8"):
        check_frames(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(DataError, match=r"\[T, H, W, 3\]"):
        check_frames(np.zeros((8, 8, 3), dtype=np.uint8))


def test_builtin_plugin_registers_adapters(model_registry: Any) -> None:
    names = set(model_registry.names())
    assert {
        "tiny",
        "llava_onevision",
        "qwen2_vl",
        "qwen2_5_vl",
        "llava_next_video",
    } <= names
    assert "llava_video" in model_registry
    cls = model_registry.get("qwen2_5_vl")
    assert cls.rope == "mrope" and cls.Config().name == "qwen2_5_vl"
    for name in names:
        adapter_cls = model_registry.get(name)
        assert adapter_cls.Config().name == name, f"{name}: Config.name default"
        assert adapter_cls.description(), f"{name}: no docstring summary"
