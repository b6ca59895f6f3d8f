"""Analytic LLM FLOPs == FlopCounterMode (CPU sdpa formula) on tiny HF models."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from tokenred.arch import ArchSpec
from tokenred.measure import decode_flops, equivalent_tokens, prefill_flops
from tokenred.measure.flop_counter import count_flops
from tokenred.measure.flops import MeasurementError, attention_pairs

TEXT = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    eos_token_id=254,
    pad_token_id=254,
    bos_token_id=254,
)


def _llava_ov_text() -> Any:
    """The Qwen2 text config of a tiny LLaVA-OneVision (as the adapter builds it)."""
    cfg = transformers.LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", **TEXT),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        ),
    )
    return cfg.text_config


def _llama() -> Any:
    return transformers.LlamaConfig(**TEXT)


def _build(text_config: Any) -> torch.nn.Module:
    text_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(text_config)
    return model.eval()


def _arch(cfg: Any) -> ArchSpec:
    head_dim = (
        getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    )
    return ArchSpec(
        family=cfg.model_type,
        layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        heads=cfg.num_attention_heads,
        kv_heads=cfg.num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
    )


@pytest.fixture(scope="module", params=["llava_ov_qwen2", "llama"])
def model_and_arch(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, ArchSpec]:
    cfg = _llava_ov_text() if request.param == "llava_ov_qwen2" else _llama()
    model = _build(cfg)
    return model, _arch(model.config)


class _ReduceAtK:
    """Decoder-layer pre-hooks that keep ``keep`` positions from layer K on.

    Self-contained version of environment.md §3.1: layer K slices the hidden states;
    every layer >= K also slices its rotary ``position_embeddings`` at prefill.
    """

    def __init__(self, model: torch.nn.Module, k: int, keep: torch.Tensor) -> None:
        self.k, self.keep, self.handles = k, keep, []
        for idx, layer in enumerate(model.model.layers):
            if idx >= k:
                hook = self._hook(idx)
                self.handles.append(
                    layer.register_forward_pre_hook(hook, with_kwargs=True)
                )

    def _hook(self, idx: int) -> Any:
        def pre(_layer: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            hidden = args[0]
            if hidden.shape[1] > 1:  # prefill only
                if idx == self.k:
                    hidden = hidden[:, self.keep]  # [B, N, d] -> [B, N', d]
                cos, sin = kw["position_embeddings"]
                if cos.shape[-2] != hidden.shape[1]:
                    kw["position_embeddings"] = (cos[:, self.keep], sin[:, self.keep])
                assert kw.get("attention_mask") is None, "test assumes sdpa, no padding"
            return (hidden, *args[1:]), kw

        return pre

    def __enter__(self) -> _ReduceAtK:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _ids(n: int) -> torch.Tensor:
    return torch.randint(0, 250, (1, n), generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("n", [1, 37, 130])
def test_prefill_full_convention_equals_flop_counter(
    model_and_arch: tuple[torch.nn.Module, ArchSpec], n: int
) -> None:
    model, arch = model_and_arch
    counted = count_flops(lambda: model(input_ids=_ids(n), logits_to_keep=1))
    analytic = prefill_flops(arch, [n] * arch.layers, n_logits=1, attention="full")
    assert counted.total == analytic.total, (counted.by_op, analytic)
    sdpa = sum(v for k, v in counted.by_op.items() if "scaled_dot_product" in k)
    assert sdpa == analytic.attention, "attention part must match the sdpa formula"


def test_all_logits_count_the_lm_head_per_position(
    model_and_arch: tuple[torch.nn.Module, ArchSpec],
) -> None:
    model, arch = model_and_arch
    n = 21
    counted = count_flops(lambda: model(input_ids=_ids(n)))
    analytic = prefill_flops(arch, [n] * arch.layers, n_logits=n, attention="full")
    assert counted.total == analytic.total


@pytest.mark.parametrize("k", [1, 2])
def test_reduced_schedule_at_layer_k_equals_flop_counter(
    model_and_arch: tuple[torch.nn.Module, ArchSpec], k: int
) -> None:
    model, arch = model_and_arch
    n = 96
    # text prefix 6, 80 "visual" tokens keep every 4th, text suffix 10
    keep = torch.cat([torch.arange(6), torch.arange(6, 86, 4), torch.arange(86, 96)])
    n_out = keep.numel()
    schedule = [n] * k + [n_out] * (arch.layers - k)
    with _ReduceAtK(model, k, keep):
        out = model(input_ids=_ids(n), logits_to_keep=1, use_cache=True)
        counted = count_flops(lambda: model(input_ids=_ids(n), logits_to_keep=1))
    cache = out.past_key_values
    lens = [cache.layers[i].keys.shape[-2] for i in range(arch.layers)]
    assert lens == schedule, "hooks must shorten the cache of layers >= K"
    analytic = prefill_flops(arch, schedule, attention="full")
    assert counted.total == analytic.total
    unreduced = prefill_flops(arch, [n] * arch.layers, attention="full")
    assert analytic.total < unreduced.total
    assert analytic.per_layer[:k] == unreduced.per_layer[:k]

    # one decode token after the reduced prefill sees each layer's own cache length
    nxt = torch.tensor([[7]])
    step = count_flops(
        lambda: model(
            input_ids=nxt,
            past_key_values=cache,
            position_ids=torch.tensor([[n]]),
            logits_to_keep=1,
        )
    )
    assert step.total == decode_flops(arch, schedule)


def test_prefill_over_cached_prefix_equals_flop_counter(
    model_and_arch: tuple[torch.nn.Module, ArchSpec],
) -> None:
    """KV reuse: a question of n tokens over a cached video prefix of p tokens."""
    model, arch = model_and_arch
    p, n = 50, 9
    cache = model(input_ids=_ids(p), use_cache=True, logits_to_keep=1).past_key_values
    counted = count_flops(
        lambda: model(input_ids=_ids(n), past_key_values=cache, logits_to_keep=1)
    )
    analytic = prefill_flops(
        arch, [n] * arch.layers, past=[p] * arch.layers, attention="full"
    )
    assert counted.total == analytic.total


def test_decode_steps_accumulate(
    model_and_arch: tuple[torch.nn.Module, ArchSpec],
) -> None:
    model, arch = model_and_arch
    n, steps = 30, 3
    cache = model(input_ids=_ids(n), use_cache=True, logits_to_keep=1).past_key_values

    def run() -> None:
        for i in range(steps):
            model(
                input_ids=torch.tensor([[3 + i]]),
                past_key_values=cache,
                logits_to_keep=1,
            )

    assert count_flops(run).total == decode_flops(arch, [n] * arch.layers, steps=steps)


# ---- pure formula properties (no model) ---------------------------------------------

ARCH = ArchSpec(
    "toy",
    layers=3,
    hidden_size=64,
    heads=4,
    kv_heads=2,
    head_dim=16,
    intermediate_size=128,
    vocab_size=256,
)


def test_causal_counts_the_lower_triangle() -> None:
    n = 100
    full = prefill_flops(ARCH, [n] * 3, attention="full")
    causal = prefill_flops(ARCH, [n] * 3, attention="causal")
    assert causal.linear == full.linear and causal.mlp == full.mlp
    assert causal.attention == 3 * 2 * ARCH.heads * n * (n + 1) * ARCH.head_dim
    assert full.attention == 3 * 4 * ARCH.heads * n * n * ARCH.head_dim
    assert causal.total == sum(causal.per_layer) + causal.lm_head
    assert attention_pairs(1, 10, "causal") == attention_pairs(1, 10, "full") == 11


def test_schedule_length_is_checked() -> None:
    with pytest.raises(MeasurementError, match="one non-negative count per decoder"):
        prefill_flops(ARCH, [10, 10])
    with pytest.raises(MeasurementError, match="attention convention"):
        prefill_flops(ARCH, [10] * 3, attention="square")


def test_breakdown_to_dict_is_json_ready() -> None:
    d = prefill_flops(ARCH, [5, 5, 3]).to_dict()
    assert d["tokens"] == [5, 5, 3] and isinstance(d["per_layer"], list)


def test_equivalent_tokens_is_the_layer_average() -> None:
    assert equivalent_tokens([100, 100, 40, 40]) == 70.0
    assert equivalent_tokens([50] * 28) == 50.0
    assert equivalent_tokens([]) == 0.0


def test_sample_flops_fills_the_record_fields() -> None:
    from dataclasses import replace

    from tokenred.arch import VisionSpec
    from tokenred.measure import sample_flops, vision_flops

    vision = VisionSpec(
        layers=2,
        hidden_size=8,
        heads=2,
        intermediate_size=16,
        patch_size=14,
        image_size=28,
        projector_flops_per_token=5,
    )
    arch = replace(ARCH, vision=vision)
    sched = [40, 40, 20]
    out = sample_flops(
        arch, sched, decode_steps=4, vision_seq_len=4, vision_num_seqs=3, n_visual=12
    )
    assert out["prefill"] == prefill_flops(arch, sched).total
    assert out["decode_per_token"] == decode_flops(arch, sched, steps=4) / 4
    assert out["vision"] == vision_flops(vision, 4, 3, n_visual=12)
    bare = sample_flops(ARCH, sched)
    assert bare["decode_per_token"] is None and bare["vision"] is None
