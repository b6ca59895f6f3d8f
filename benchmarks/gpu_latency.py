"""TTFT of every reducer on a 7B-sized video LLM with random weights (GPU benchmark).

Builds LLaVA-Video's layout (LLaVA-OneVision class, Qwen2-7B language model:
d=3584, 28 layers, 28 heads, 4 KV heads, MLP 18944, vocabulary 152064) from a config
alone, with seeded random weights: the time of a forward pass does not depend on the
weight values, so the figures are those of the real checkpoint. The vision tower is
a toy SigLIP whose projector emits 3584-wide tokens on a 14x14 grid per frame, the
LLaVA-Video token layout; like the paper, TTFT here is the LLM prefill only (vision
encoding is excluded), reducer included.

Every reducer runs through the framework's own adapter and insertion engine, and is
timed by the same protocol as ``tokenred run``: CUDA events, synchronised when read,
``--warmup`` untimed passes, then the median of ``--repeats`` timed passes, with the
same attention backend (``--attn``) for the unreduced run and every method.

    python benchmarks/gpu_latency.py --frames 64 128 --budgets 0.5 0.3
    python benchmarks/gpu_latency.py --dims tiny --device cpu   # smoke test on CPU

The paper (A100, FlashAttention-2, bf16) reports STTM at 2.07x (50%) and 3.02x (30%)
faster TTFT than the unreduced LLaVA-Video-7B. CPU runs are smoke tests only: their
numbers are CPU figures and say nothing about GPU speed-ups.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

DIMS: dict[str, dict[str, int]] = {
    "7b": {  # Qwen2-7B, the LLM of LLaVA-Video-7B
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
    },
    "tiny": {  # for a CPU smoke test of this script
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 704,
    },
}
VISION = {  # toy tower: 112 px / patch 4 = 28x28 patches, pooled 2x -> 14x14 tokens
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 112,
    "patch_size": 4,
}
REDUCERS = ("random", "pool", "tome", "dycoke_ttm", "fastv", "sttm")
PROMPT = (
    "Which color was the object that appeared briefly?\nA. red\nB. green\nC. blue\n"
    "D. yellow\nAnswer with the option's letter from the given choices directly."
)


def write_checkpoint(out: Path, dims: dict[str, int]) -> Path:
    """Write a weightless LLaVA-OneVision checkpoint (config + tiny tokenizer)."""
    from tokenred.adapters._tiny import build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    text = dict(dims)
    vocab = text.pop("vocab_size")
    config = tiny_config("llava_onevision", tokenizer, text=text, vision=dict(VISION))
    config.text_config.vocab_size = max(vocab, len(tokenizer))
    config.vision_config.vision_use_head = False
    config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def time_prefill(
    adapter: Any, video: Any, plan: Any, *, warmup: int, repeats: int
) -> tuple[dict[str, dict[str, float]], Any]:
    """Time ``adapter.prefill`` with the runner's protocol; return summaries."""
    from tokenred.measure import measure_repeats, timing

    def once(timer: Any) -> Any:
        with timing(timer), timer("prefill"):
            return adapter.prefill(video, PROMPT, plan)

    rep = measure_repeats(once, warmup=warmup, repeats=repeats, device=adapter.device)
    return rep.summary(), rep.value


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Build the model once, then time every (frames, reducer, budget) point."""
    from tokenred.adapter import AdapterConfig, DType, create_adapter
    from tokenred.measure import prefill_flops
    from tokenred.plan import ReductionPlan
    from tokenred.plugins import get_plugin_manager
    from tokenred.registry import Registries
    from tokenred.schema import BudgetConfig
    from tokenred.tokens import Stage

    regs = Registries.from_plugin_manager(get_plugin_manager())
    tmp = Path(tempfile.mkdtemp(prefix="tokenred-7b-"))
    write_checkpoint(tmp, DIMS[args.dims])
    cfg = AdapterConfig(
        name="tiny",
        path=str(tmp),
        dtype=DType(args.dtype),
        device=args.device,
        attn_implementation=args.attn,
    )
    adapter = create_adapter(regs.models, cfg)
    adapter.load()
    desc = adapter.describe()
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for frames in args.frames:
        pixels = rng.integers(0, 256, size=(frames, 112, 112, 3), dtype=np.uint8)
        video = adapter.encode_video(pixels)
        base, state = time_prefill(
            adapter, video, None, warmup=args.warmup, repeats=args.repeats
        )
        base_ms = base["prefill"]["median"]
        rows.append(
            _row("none", 1.0, frames, state, base, base_ms, adapter, prefill_flops)
        )
        for name in args.reducers:
            cls = regs.reducers.get(name)
            for ratio in args.budgets:
                plan = ReductionPlan(
                    reducer=cls(cls.Config(name=name)),
                    stage=Stage.IN_LLM,
                    layer=args.layer,
                    budget=BudgetConfig(ratio=ratio, tokens=None),
                    seed=0,
                    sample_id=f"bench-{frames}",
                )
                summ, state = time_prefill(
                    adapter, video, plan, warmup=args.warmup, repeats=args.repeats
                )
                rows.append(
                    _row(
                        name,
                        ratio,
                        frames,
                        state,
                        summ,
                        base_ms,
                        adapter,
                        prefill_flops,
                    )
                )
                print(_line(rows[-1]), file=sys.stderr, flush=True)
    for row in rows:
        row["device"] = desc.get("device")
        row["attn"] = desc.get("attn_implementation")
        row["dtype"] = args.dtype
        row["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return rows


def _row(
    name: str,
    ratio: float,
    frames: int,
    state: Any,
    summ: dict[str, dict[str, float]],
    base_ms: float,
    adapter: Any,
    prefill_flops: Any,
) -> dict[str, Any]:
    ttft = summ["prefill"]["median"]
    reducer = summ.get("reducer", {}).get("median")
    flops = prefill_flops(adapter.arch, state.stats.schedule).total
    return {
        "reducer": name,
        "budget": ratio,
        "frames": frames,
        "n_visual_in": state.stats.n_visual_in,
        "n_visual_out": state.stats.n_visual_out,
        "ttft_ms": ttft,
        "ttft_iqr_ms": summ["prefill"]["iqr"],
        "reducer_ms": reducer,
        "speedup": base_ms / ttft if ttft else None,
        "prefill_tflops": flops / 1e12,
    }


def _line(r: dict[str, Any]) -> str:
    red = "-" if r["reducer_ms"] is None else f"{r['reducer_ms']:.2f}"
    return (
        f"| {r['frames']} | {r['reducer']} | {r['budget']:.0%} | {r['n_visual_in']} | "
        f"{r['n_visual_out']} | {r['ttft_ms']:.1f} ± {r['ttft_iqr_ms']:.1f} | {red} | "
        f"{r['speedup']:.2f}x | {r['prefill_tflops']:.4g} |"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print a Markdown table and optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", choices=sorted(DIMS), default="7b")
    p.add_argument("--frames", type=int, nargs="+", default=[64, 128])
    p.add_argument("--reducers", nargs="+", default=list(REDUCERS))
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--layer", type=int, default=2, help="insertion layer K (paper: 2)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--attn", default="sdpa", help="sdpa, eager, flash_attention_2")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: no CUDA device; use --device cpu --dims tiny for a smoke test",
            file=sys.stderr,
        )
        return 2
    rows = run(args)
    kind = "GPU" if args.device.startswith("cuda") else "CPU (smoke test only)"
    print(
        f"\nTTFT ({kind}, {args.dtype}, attention {rows[0]['attn']}, "
        f"insertion layer {args.layer}; median ± IQR of {args.repeats} runs)\n"
    )
    print(
        "| frames | reducer | budget | N in | N out | TTFT ms | reducer ms | "
        "speed-up | prefill TFLOP |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(_line(r))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
