"""Time the ``sttm`` reducer on the video shapes that matter and print a Markdown table.

Shapes: LLaVA-Video (T=64 and T=128 frames of 14x14, C=3584) and Qwen2-VL (T=128 of
20x36, C=3584). Each case runs in a fresh child process, so the peak-memory column
is the extra memory of the merge alone (CUDA: peak allocated above the input; CPU:
peak resident set, sampled every millisecond, above the level before the timed
calls). The last two columns compare the temporal pair search alone, computed from
the actual node counts: tokenred's ``O(T*H*W)`` mask and index tensors (an upper
bound) and the reference's padded ``O(T*M^2)`` one (``[T-1, M, M, 4]`` int32 plus two
``[T-1, M, M]`` masks, M = most nodes in a frame), which it must allocate on top of
the feature temporaries both approaches share.

Examples::

    python benchmarks/sttm_speed.py                       # CPU, float32
    python benchmarks/sttm_speed.py --device cuda --dtype bfloat16
    python benchmarks/sttm_speed.py --quick               # small shapes, smoke test
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import statistics
import threading
import time
from typing import Any

import torch

SHAPES = {
    "llava_video_t64": (64, 14, 14),
    "llava_video_t128": (128, 14, 14),
    "qwen2_vl_t128": (128, 20, 36),
}
QUICK = {"llava_t8_c256": (8, 14, 14), "qwen_t8_c256": (8, 20, 36)}
CASES = [
    # label, mode, budget_mode, tau_s, tau_t, budget ratio
    ("reference thr 0.85/0.55", "reference", "threshold", 0.85, 0.55, 1.0),
    ("fixed thr 0.85/0.55", "fixed", "threshold", 0.85, 0.55, 1.0),
    ("reference search 30%", "reference", "search", 0.85, 0.55, 0.3),
    ("fixed search 50%", "fixed", "search", 0.85, 0.55, 0.5),
]


def synthetic_video(
    grid: tuple[int, int, int], channels: int, dtype: torch.dtype, device: str
) -> torch.Tensor:
    """Return ``[T*H*W, C]`` features with video-like redundancy.

    A smooth random field per 8-frame scene (bilinear upsampling of a coarse grid,
    so neighbouring patches correlate), panned by half a patch per frame, plus
    noise whose level varies per patch (flat regions and busy ones). At the paper's
    0.85/0.55 it keeps roughly a third of the tokens.
    """
    t, h, w = grid
    gen = torch.Generator().manual_seed(0)
    scenes = t // 8 + 1
    coarse = torch.randn(scenes, channels, h // 3 + 2, w // 3 + 2, generator=gen)
    field = torch.nn.functional.interpolate(
        coarse, size=(h + 4, w + 4), mode="bilinear", align_corners=False
    )  # [S, C, H+4, W+4]
    frames = torch.stack(
        [field[i // 8, :, (i % 8) // 2 :, (i % 8) // 2 :][:, :h, :w] for i in range(t)]
    )  # [T, C, H, W]
    level = 0.2 + 0.8 * torch.rand(t, 1, h, w, generator=gen)
    frames += level * torch.randn(t, channels, h, w, generator=gen)
    video = frames.permute(0, 2, 3, 1)  # [T, C, H, W] -> [T, H, W, C]
    return video.reshape(t * h * w, channels).to(device=device, dtype=dtype)


class _RssSampler(threading.Thread):
    """Sample the resident set size every millisecond; keep the maximum."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.running = True
        self.page = os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.current())
            time.sleep(0.001)


def _pair_search_bytes(
    tlbr: torch.Tensor, grid: tuple[int, int, int]
) -> tuple[int, int]:
    """Bytes of the pair-search tensors: tokenred's and the reference's padded one.

    tokenred: a ``[T-1, H, W]`` bool mask, its ``nonzero`` (3 int64 per pair) and the
    two node ids per pair. Reference: ``[T-1, M, M, 4]`` int32 differences plus two
    ``[T-1, M, M]`` bool masks, M = most nodes in a frame.
    """
    t, h, w = grid
    pairs = (t - 1) * h * w  # an upper bound: at most one pair per patch
    ours = (t - 1) * h * w + pairs * 5 * 8
    m = int(torch.bincount(tlbr[:, 0]).max())
    return ours, (t - 1) * m * m * (4 * 4 + 2)


def _child(args: dict[str, Any], queue: Any) -> None:
    from tokenred_sttm.merge import MergeOptions, prepare
    from tokenred_sttm.reducer import STTMConfig, STTMReducer

    from tokenred import ReduceContext, VisualTokens

    torch.set_num_threads(args["threads"])
    device, dtype = args["device"], getattr(torch, args["dtype"])
    t, h, w = args["grid"]
    feats = synthetic_video((t, h, w), args["channels"], dtype, device)
    tokens = VisualTokens.from_grid(feats, (t, h, w))
    cfg = STTMConfig(
        mode=args["mode"],
        budget_mode=args["budget_mode"],
        tau_s=args["tau_s"],
        tau_t=args["tau_t"],
    )
    red = STTMReducer(cfg)
    budget = max(1, int(args["ratio"] * tokens.n))
    ctx = ReduceContext(budget=budget, generator=torch.Generator())
    warm = VisualTokens.from_grid(feats[: 2 * h * w], (2, h, w))
    with torch.inference_mode():
        red.reduce(warm, ReduceContext(budget=h * w, generator=torch.Generator()))
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _RssSampler.current()
            sampler = _RssSampler()
            sampler.start()
        times = []
        for _ in range(args["repeats"]):
            sync()
            start = time.perf_counter()
            out = red.reduce(tokens, ctx)
            sync()
            times.append(1000 * (time.perf_counter() - start))
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() - base
        else:
            sampler.running = False
            sampler.join()
            peak = sampler.peak - base
        info = dict(out.info)
        opts = MergeOptions(reference=args["mode"] == "reference")
        from tokenred_sttm.merge import evaluate, finalize

        prep = prepare(feats.reshape(t, h, w, -1), opts)
        nodes = finalize(prep, evaluate(prep, info["tau_s"], 2.0)).tlbr.cpu()
    ours, naive = _pair_search_bytes(nodes, (t, h, w))
    queue.put(
        {
            "ms": statistics.median(times),
            "n_in": tokens.n,
            "n_out": out.n_out,
            "evals": info.get("search_evals", 1.0),
            "tau": f"{info['tau_s']:.3f}/{info['tau_t']:.3f}",
            "peak_mb": peak / 2**20,
            "pairs_mb": ours / 2**20,
            "naive_mb": naive / 2**20,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--channels", type=int, default=3584)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="small shapes, C=256")
    parser.add_argument("--shapes", nargs="*", default=None, help="subset of shapes")
    args = parser.parse_args()
    shapes = QUICK if args.quick else SHAPES
    channels = 256 if args.quick else args.channels
    if args.shapes:
        shapes = {k: v for k, v in shapes.items() if k in args.shapes}
    print(
        f"device={args.device} dtype={args.dtype} C={channels} threads={args.threads}"
    )
    print()
    print(
        "| shape | T x H x W | case | tokens in | tokens out | tau_s/tau_t | evals "
        "| ms/video | merge peak MB | pair search MB | padded pair search MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ctx = mp.get_context("spawn")
    for name, grid in shapes.items():
        for label, mode, budget_mode, tau_s, tau_t, ratio in CASES:
            job = {
                "grid": grid,
                "channels": channels,
                "device": args.device,
                "dtype": args.dtype,
                "mode": mode,
                "budget_mode": budget_mode,
                "tau_s": tau_s,
                "tau_t": tau_t,
                "ratio": ratio,
                "repeats": args.repeats,
                "threads": args.threads,
            }
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(job, queue))
            proc.start()
            row = queue.get()
            proc.join()
            t, h, w = grid
            print(
                f"| {name} | {t}x{h}x{w} | {label} | {row['n_in']} | {row['n_out']} "
                f"| {row['tau']} | {row['evals']:.0f} | {row['ms']:.1f} "
                f"| {row['peak_mb']:.0f} | {row['pairs_mb']:.1f} "
                f"| {row['naive_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
