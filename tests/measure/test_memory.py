"""Peak memory probes and KV-cache bytes."""

from __future__ import annotations

import pytest
import torch

from tokenred.measure import cache_bytes, peak_bytes, reset_peak, tensor_bytes

MB = 2**20


def test_cpu_peak_sees_a_large_allocation() -> None:
    probe = reset_peak("cpu")
    before = probe.peak_bytes()
    x = torch.ones(48 * MB // 4)  # 48 MiB, touched by the fill
    after = probe.peak_bytes()
    assert x.numel() > 0
    assert after - before >= 40 * MB, (before, after)
    assert probe.kind in {"cpu_rss", "cpu_rss_process"}
    del x
    if probe.kind == "cpu_rss":  # clear_refs works: a reset forgets the old peak
        again = reset_peak("cpu")
        assert again.peak_bytes() < after
    assert peak_bytes("cpu") > 0


def test_tensor_and_cache_bytes() -> None:
    t = torch.zeros(3, 4, dtype=torch.float16)
    assert tensor_bytes({"a": [t, (t,)], "b": "x"}) == 2 * 24  # 12 fp16 each
    legacy = ((torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8)),)
    assert cache_bytes(legacy) == 2 * 80 * 4


def test_dynamic_cache_bytes() -> None:
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        cache = model(input_ids=torch.arange(11)[None], use_cache=True).past_key_values
    # layers * (k, v) * kv_heads * tokens * head_dim * fp32
    assert cache_bytes(cache) == 2 * 2 * 2 * 11 * 8 * 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_allocated() -> None:
    probe = reset_peak("cuda")
    x = torch.empty(64 * MB, dtype=torch.uint8, device="cuda")
    assert probe.kind == "cuda_allocated"
    assert probe.peak_bytes() >= 64 * MB
    del x
    assert reset_peak("cuda").peak_bytes() < 64 * MB
