"""Checkpoints by name: Hugging Face ids from the local cache, original LLaVA format.

The original-format checkpoint is derived here from a tiny HF-format one by a
test-local renaming (the inverse of what ``tokenred convert`` does, written
independently), so converting it back must give a model with identical logits.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _adapter_helpers import PROMPT, hf_inputs, hf_logits
from safetensors.torch import save_file

from tokenred.adapter import AdapterConfig, create_adapter, resolve_model_name
from tokenred.adapters._tiny import save_tiny_checkpoint
from tokenred.cli import main
from tokenred.errors import ModelLoadError
from tokenred.results import RunStore

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def _hub_layout(cache: Path, repo_id: str, checkpoint: Path) -> Path:
    """Copy ``checkpoint`` into ``cache`` as huggingface_hub lays a snapshot out."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / SNAPSHOT
    shutil.copytree(checkpoint, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home, offline (``HF_HOME``, ``HF_HUB_OFFLINE=1``)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def test_run_model_by_hugging_face_id_offline(
    offline_cache: Path, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    snapshot = _hub_layout(
        offline_cache, "tiny-org/Tiny-OV", checkpoints["llava_onevision"]
    )
    argv = ["run", "--model", "tiny-org/Tiny-OV", "--reducer", "none"]
    argv += [f"output.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}"]
    argv += ["data.num_videos=1", "data.limit=1", "data.frames.num_frames=4"]
    argv += ["measure.latency=false", "measure.baseline=false"]
    assert main(argv) == 0
    (manifest,) = (tmp_path / "runs").glob("*/*/manifest.json")
    data = json.loads(manifest.read_text())
    assert str(snapshot) in json.dumps(data), "the run does not name the snapshot"
    assert len(list(RunStore(manifest.parent).records())) == 1


def test_model_path_may_be_a_hugging_face_id(
    offline_cache: Path, checkpoints: dict[str, Path], model_registry: Any
) -> None:
    snapshot = _hub_layout(offline_cache, "tiny-org/ov", checkpoints["llava_onevision"])
    config = AdapterConfig(name="llava_onevision", path="tiny-org/ov")
    adapter = create_adapter(model_registry, config)
    adapter.load()
    assert adapter.describe()["random_weights"] is False
    assert adapter.weights_identity() is not None
    assert resolve_model_name(model_registry, "tiny-org/ov") == (
        "llava_onevision",
        str(snapshot),
    )


def test_uncached_id_offline_is_one_line(
    offline_cache: Path, model_registry: Any
) -> None:
    with pytest.raises(ModelLoadError) as exc:
        resolve_model_name(model_registry, "nobody/missing-model")
    line = str(exc.value)
    assert "\n" not in line and "nobody/missing-model" in line
    assert "HF_HUB_OFFLINE" in line and str(offline_cache) in line


# ----------------------------------------------------------- original LLaVA format
def _to_original(hf_dir: Path, out: Path, tower: Path) -> Path:
    """Write ``hf_dir`` (HF LlavaOnevision) as a LLaVA-NeXT ``LlavaQwen`` checkpoint."""
    import transformers as tf

    model = tf.LlavaOnevisionForConditionalGeneration.from_pretrained(str(hf_dir))
    renamed: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.language_model."):
            new = "model." + key.removeprefix("model.language_model.")
        elif key.startswith("model.vision_tower."):
            rest = key.removeprefix("model.vision_tower.")
            new = "model.vision_tower.vision_tower.vision_model." + rest
        elif key.startswith("model.multi_modal_projector.linear_"):
            rest = key.removeprefix("model.multi_modal_projector.linear_")
            index, param = rest.split(".")
            new = f"model.mm_projector.{int(index) * 2 - 2}.{param}"
        else:
            assert key in {"lm_head.weight", "model.image_newline"}, key
            new = key
        renamed[new] = value.detach().clone().contiguous()
    out.mkdir(parents=True)
    save_file(renamed, str(out / "model.safetensors"))
    text = model.config.text_config.to_dict()
    keep = (
        "vocab_size hidden_size intermediate_size num_hidden_layers "
        "num_attention_heads num_key_value_heads max_position_embeddings "
        "rms_norm_eps hidden_act bos_token_id eos_token_id pad_token_id"
    ).split()
    config = {k: text[k] for k in keep}
    config |= {
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava_qwen",
        "rope_theta": text["rope_parameters"]["rope_theta"],
        "tie_word_embeddings": False,
        "mm_vision_tower": str(tower),
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": model.config.vision_config.hidden_size,
        "mm_vision_select_layer": -2,
        "mm_newline_position": "one_token",
        "mm_spatial_pool_mode": "bilinear",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(hf_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(HF tiny checkpoint, the same weights in the original LLaVA format)."""
    root = tmp_path_factory.mktemp("orig")
    hf_dir = save_tiny_checkpoint("llava_onevision", root / "hf", seed=3)
    tower = root / "siglip-tiny"
    tower.mkdir()
    vision = json.loads((hf_dir / "config.json").read_text())["vision_config"]
    (tower / "config.json").write_text(json.dumps(vision))
    return hf_dir, _to_original(hf_dir, root / "orig", tower)


def test_original_format_is_rejected_with_the_convert_command(
    original: tuple[Path, Path], model_registry: Any
) -> None:
    _, orig = original
    with pytest.raises(ModelLoadError) as exc:
        resolve_model_name(model_registry, str(orig))
    line = str(exc.value)
    assert "\n" not in line and "original LLaVA format" in line
    assert f"tokenred convert {orig} OUT_DIR" in line
    adapter = create_adapter(
        model_registry, AdapterConfig(name="llava_onevision", path=str(orig))
    )
    with pytest.raises(ModelLoadError, match="tokenred convert"):
        adapter.load()


def test_convert_round_trips_to_identical_logits(
    original: tuple[Path, Path],
    model_registry: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hf_dir, orig = original
    out = tmp_path / "converted"
    assert main(["convert", str(orig), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    frames = np.random.default_rng(5).integers(0, 256, (4, 30, 40, 3), np.uint8)
    logits = []
    for path in (hf_dir, out):
        adapter = create_adapter(model_registry, AdapterConfig(name=str(path)))
        adapter.load()
        kw, _ = hf_inputs(adapter, frames, PROMPT)
        logits.append(hf_logits(adapter, kw))
        video = adapter.encode_video(frames)
        logits.append(adapter.prefill(video, PROMPT).logits)
    assert torch.equal(logits[0], logits[2]), "HF forward differs after conversion"
    assert torch.equal(logits[1], logits[3]), "tokenred prefill differs"
    # A second conversion into the same directory is refused (nothing overwritten).
    assert main(["convert", str(orig), str(out)]) != 0
    assert "not empty" in capsys.readouterr().err


def test_convert_refuses_hf_format(
    original: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hf_dir, _ = original
    assert main(["convert", str(hf_dir), str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert "not in the original LLaVA format" in err and "\n" not in err.strip()


def test_docs_readme_and_list_name_checkpoints_alike(
    model_registry: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Path(__file__).resolve().parents[2]
    models_page = (repo / "docs" / "models.md").read_text()
    readme = (repo / "README.md").read_text()
    assert main(["list", "models"]) == 0
    listed = capsys.readouterr().out
    ids: list[str] = []
    for entry in model_registry:
        ids += list(getattr(entry.load(), "checkpoints", ()))
    assert ids, "no adapter names a checkpoint"
    for repo_id in ids:
        assert f"`{repo_id}`" in models_page, f"docs/models.md lacks {repo_id}"
        assert repo_id in listed, f"tokenred list models lacks {repo_id}"
    used = {m for m in re.findall(r"--model (\S+)", readme) if "/" in m}
    assert used and used <= set(ids), f"README names other checkpoints: {used}"


def test_convert_tied_embeddings_without_lm_head(tmp_path: Path) -> None:
    """Small OneVision models tie the LM head to the embeddings and omit it."""
    import transformers as tf
    from safetensors.torch import load_file

    from tokenred.convert import convert_llava_original

    tie = {"text": {"tie_word_embeddings": True}, "tie_word_embeddings": True}
    hf_dir = save_tiny_checkpoint("llava_onevision", tmp_path / "hf", seed=4, **tie)
    tower = tmp_path / "siglip-tiny"
    tower.mkdir()
    vision = json.loads((hf_dir / "config.json").read_text())["vision_config"]
    (tower / "config.json").write_text(json.dumps(vision))
    orig = _to_original(hf_dir, tmp_path / "orig", tower)
    config = json.loads((orig / "config.json").read_text())
    (orig / "config.json").write_text(
        json.dumps(config | {"tie_word_embeddings": True})
    )
    weights = load_file(str(orig / "model.safetensors"))
    del weights["lm_head.weight"]
    save_file(weights, str(orig / "model.safetensors"))
    convert_llava_original(orig, tmp_path / "out")
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    logits = []
    for path in (hf_dir, tmp_path / "out"):
        model = tf.LlavaOnevisionForConditionalGeneration.from_pretrained(str(path))
        with torch.inference_mode():
            logits.append(model.eval()(input_ids=ids).logits)
    assert torch.equal(logits[0], logits[1])
