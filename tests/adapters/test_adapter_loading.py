"""Loading checkpoints (``--model PATH``), clear errors, the embedded tiny model."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _adapter_helpers import FAMILIES, PROMPT, QWEN_PIXELS

from tokenred.adapter import AdapterConfig, DType, create_adapter, resolve_model_name
from tokenred.adapters._tiny import save_tiny_checkpoint
from tokenred.arch import ArchSpec
from tokenred.errors import ConfigError, ModelLoadError, TokenredError, UnknownNameError


@pytest.mark.parametrize("family", FAMILIES)
def test_model_path_loads_and_runs_end_to_end(
    family: str, checkpoints: dict[str, Path], model_registry: Any, frames: Any
) -> None:
    path = checkpoints[family]
    assert resolve_model_name(model_registry, str(path)) == (family, str(path))
    adapter = create_adapter(
        model_registry, AdapterConfig(name=str(path), max_new_tokens=3)
    )
    assert adapter.name == family and adapter.config.path == str(path)
    for key, value in (QWEN_PIXELS if family.startswith("qwen") else {}).items():
        setattr(adapter.config, key, value)
    adapter.load()
    video = adapter.encode_video(frames)
    gen = adapter.generate(video, PROMPT)
    assert 1 <= len(gen.token_ids) <= 3 and isinstance(gen.text, str)
    info = adapter.describe()
    assert info["family"] == adapter.family and info["random_weights"] is False
    assert info["path"] == str(path) and info["attn_implementation"] == "sdpa"
    arch = adapter.arch
    assert isinstance(arch, ArchSpec) and arch.layers == 4 and arch.kv_heads == 2
    assert arch.vision is not None and arch.vision.projector_flops_per_token > 0
    assert arch.rope == ("mrope" if family.startswith("qwen") else "1d")
    assert video.vision_num_seqs >= 1 and video.vision_seq_len >= 1


def _error_line(exc: pytest.ExceptionInfo[TokenredError]) -> str:
    text = str(exc.value)
    assert "\n" not in text, f"error is not one line: {text!r}"
    return text


def test_missing_dir_is_one_clear_line(tmp_path: Path, model_registry: Any) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError) as exc:
        create_adapter(model_registry, AdapterConfig(name=str(missing)))
    line = _error_line(exc)
    assert (
        str(missing) in line and "does not exist" in line and "save_pretrained" in line
    )
    adapter = create_adapter(
        model_registry, AdapterConfig(name="llava_onevision", path=str(missing))
    )
    with pytest.raises(ModelLoadError) as exc:
        adapter.load()
    assert str(missing) in _error_line(exc)


def test_incomplete_dir_names_what_is_missing(
    tmp_path: Path, model_registry: Any
) -> None:
    ckpt = save_tiny_checkpoint("llava_next_video", tmp_path / "ck", weights=False)
    (ckpt / "tokenizer.json").unlink()
    adapter = create_adapter(model_registry, AdapterConfig(name=str(ckpt)))
    with pytest.raises(ModelLoadError) as exc:
        adapter.load()
    line = _error_line(exc)
    assert str(ckpt) in line and "model weights" in line and "tokenizer" in line
    assert "huggingface-cli download" in line


def test_unknown_model_type_and_name(tmp_path: Path, model_registry: Any) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ModelLoadError, match="whisper"):
        resolve_model_name(model_registry, str(tmp_path))
    with pytest.raises(UnknownNameError, match="Did you mean: qwen2_vl"):
        resolve_model_name(model_registry, "qwen2_vI")
    assert resolve_model_name(model_registry, "llava_video") == (
        "llava_onevision",
        None,
    )


def test_tiny_default_reports_random_weights(
    caplog: pytest.LogCaptureFixture, model_registry: Any, tmp_path: Path
) -> None:
    from tokenred.adapters.tiny import assets_dir

    # The committed config without the trained weights: the seeded random init.
    for f in assets_dir().glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    cfg = AdapterConfig(path=str(tmp_path), max_new_tokens=2)
    adapter = create_adapter(model_registry, cfg)
    assert adapter.name == "tiny"
    with caplog.at_level(logging.WARNING):
        adapter.load()
    assert any("random init" in r.getMessage() for r in caplog.records)
    info = adapter.describe()
    assert info["random_weights"] is True and info["family"] == "llava_onevision"
    frames = np.random.default_rng(1).integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    video = adapter.encode_video(frames)
    assert video.grid == (2, 8, 8) and video.n == 2 * 64
    assert adapter.arch.hidden_size == 64 and adapter.arch.layers == 4
    again = create_adapter(model_registry, cfg)
    again.load()
    same = again.encode_video(frames)
    assert torch.equal(video.features, same.features), "random init is not seeded"


def test_tiny_loads_weights_when_present(tmp_path: Path, model_registry: Any) -> None:
    from tokenred.adapters.tiny import assets_dir

    target = tmp_path / "tiny"
    shutil.copytree(assets_dir(), target)
    first = create_adapter(model_registry, AdapterConfig(path=str(target)))
    first.load()
    first.hf_model.save_pretrained(str(target))
    second = create_adapter(model_registry, AdapterConfig(path=str(target), seed=99))
    second.load()
    assert second.describe()["random_weights"] is False
    w1 = first.hf_model.lm_head.weight
    assert torch.equal(w1, second.hf_model.lm_head.weight)


def test_dtype_and_device_options(
    checkpoints: dict[str, Path], model_registry: Any, frames: Any
) -> None:
    cfg = AdapterConfig(name=str(checkpoints["llava_onevision"]), dtype="bfloat16")  # type: ignore[arg-type]
    assert cfg.dtype is DType.bfloat16
    adapter = create_adapter(model_registry, cfg)
    adapter.load()
    video = adapter.encode_video(frames)
    assert video.features.dtype == torch.bfloat16
    gen = adapter.generate(video, PROMPT, max_new_tokens=2)
    assert torch.isfinite(gen.prefill.logits).all()
    with pytest.raises(ConfigError, match="dtype"):
        AdapterConfig(dtype="float8")  # type: ignore[arg-type]
    bad = create_adapter(
        model_registry,
        AdapterConfig(
            name=str(checkpoints["llava_onevision"]),
            attn_implementation="flash_attention_2",
        ),
    )
    with pytest.raises(ConfigError, match="flash-attn"):
        bad.load()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_reduced_generation(
    dtype: str, checkpoints: dict[str, Path], model_registry: Any, frames: Any
) -> None:
    from tokenred.builtin.reducers import RandomReducer
    from tokenred.plan import BudgetSpec, ReductionPlan
    from tokenred.tokens import Stage

    cfg = AdapterConfig(
        name=str(checkpoints["llava_onevision"]), device="cuda", dtype=dtype
    )  # type: ignore[arg-type]
    adapter = create_adapter(model_registry, cfg)
    adapter.load()
    video = adapter.encode_video(frames)
    plan = ReductionPlan(RandomReducer(), Stage.IN_LLM, 2, BudgetSpec(ratio=0.3))
    gen = adapter.generate(video, PROMPT, plan, max_new_tokens=3)
    assert gen.prefill.logits.device.type == "cuda"
    assert torch.isfinite(gen.prefill.logits).all()


def test_tiny_assets_are_current(tmp_path: Path) -> None:
    from tokenred.adapters.tiny import assets_dir
    from tokenred.assets.build_tiny import build

    fresh = build(tmp_path / "tiny")
    for name in ("config.json", "tokenizer.json"):
        committed = json.loads((assets_dir() / name).read_text())
        assert committed == json.loads((fresh / name).read_text()), (
            f"tokenred/assets/tiny/{name} is stale; run python -m "
            "tokenred.assets.build_tiny"
        )
