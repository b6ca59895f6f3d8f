"""Time the ``sttm`` reducer against an authors-structured baseline; check landing.

Two tables, printed as Markdown.

**Speed** (``--speed``, default on). Shapes: LLaVA-Video (T=64 and T=128 frames of
14x14) and Qwen2-VL (T=128 of 20x36), C=3584, float32, smooth realistic features
(a 4x4 Gaussian field bilinearly upsampled to the grid, repeated over frames, plus
0.8 x Gaussian noise per token and a slow linear drift). Per shape, each in a fresh
child process so that peak memory is the run's own (peak resident set above the
level before the timed calls, sampled every millisecond):

* ``authors walk``: :mod:`sttm_authors_walk`, our restatement of how the reference
  code is organised (level-by-level walk, padded ``[T-1, M, M]`` pair test), at
  tau 0.80/0.60, root level 1; its output is checked to equal tokenred's;
* ``fixed thresholds``: ``sttm`` in reference mode, ``budget_mode=threshold``,
  tau 0.80/0.60 (one evaluation);
* ``search @ same count``: ``budget_mode=search`` (default config) with the budget
  set to the count of the fixed-threshold call;
* ``search @ 30%``: the same at 30 % of the tokens, and ``fixed @ 30% lam``: one
  fixed-threshold call at the schedule point that search found (``tau_s = lam``,
  ``tau_t = lam - 0.25``), the cost of the cut that search lands near.

**Landing** (``--landing``). ``budget_mode=search`` at budgets 5 %, 10 %, ... 95 % of
the tokens on: the embedded benchmark's test videos (the ``tiny`` model's visual
tokens), fully static clips (frame 0 of each video repeated 32 times), half-
duplicated clips (every odd frame a copy of the frame before) and smooth realistic
features. Reports kept / budget (min and mean) and how many runs landed below 97 %.

Examples::

    python benchmarks/sttm_speed.py --threads 2                # speed, all shapes
    python benchmarks/sttm_speed.py --no-speed --landing        # landing table only
    python benchmarks/sttm_speed.py --quick --landing --videos 4  # smoke test
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

SHAPES = {
    "llava_video_t64": (64, 14, 14),
    "llava_video_t128": (128, 14, 14),
    "qwen2_vl_t128": (128, 20, 36),
}
QUICK = {"llava_t8": (8, 14, 14), "qwen_t8": (8, 20, 36)}
TAU_S, TAU_T = 0.80, 0.60
CASES = [
    "authors walk",
    "fixed thresholds",
    "search @ same count",
    "search @ 30%",
    "fixed @ 30% lam",
]
BUDGETS = [k / 100 for k in range(5, 100, 5)]


def smooth_video(
    grid: tuple[int, int, int], channels: int, seed: int = 0
) -> torch.Tensor:
    """Return ``[T, H, W, C]`` float32 smooth realistic features (see the docstring)."""
    t, h, w = grid
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, 4, 4, generator=gen)
    field = torch.nn.functional.interpolate(
        coarse, size=(h, w), mode="bilinear", align_corners=False
    )[0].permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
    drift = torch.randn(channels, generator=gen)
    ramp = (torch.arange(t, dtype=torch.float32) / max(t, 1))[:, None, None, None]
    video = field[None] + 0.8 * torch.randn(t, h, w, channels, generator=gen)
    video += 0.5 * ramp * drift
    return video.contiguous()  # [T, H, W, C] row-major, as tokens arrive


class _RssSampler(threading.Thread):
    """Sample the resident set size every millisecond; keep the maximum."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.running = True

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.current())
            time.sleep(0.001)


def _speed_child(args: dict[str, Any], queue: Any) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from sttm_authors_walk import authors_walk
    from tokenred_sttm.reducer import STTMConfig, STTMReducer

    from tokenred import ReduceContext, VisualTokens

    torch.set_num_threads(args["threads"])
    t, h, w = args["grid"]
    grid = smooth_video((t, h, w), args["channels"])
    tokens = VisualTokens.from_grid(grid.reshape(t * h * w, -1), (t, h, w))
    case = args["case"]

    def run() -> tuple[int, dict[str, float]]:
        if case == "authors walk":
            return int(authors_walk(grid, TAU_S, TAU_T).shape[0]), {}
        if case == "fixed thresholds":
            cfg = STTMConfig(budget_mode="threshold", tau_s=TAU_S, tau_t=TAU_T)  # type: ignore[arg-type]
            budget = tokens.n
        elif case == "fixed @ 30% lam":
            lam = args["lam"]
            cfg = STTMConfig(budget_mode="threshold", tau_s=lam, tau_t=lam - 0.25)  # type: ignore[arg-type]
            budget = tokens.n
        else:
            cfg = STTMConfig()  # the search derives its first probe from the budget
            budget = args["budget"] if "same" in case else int(0.3 * tokens.n)
        ctx = ReduceContext(budget=budget, generator=torch.Generator())
        red = STTMReducer(cfg).reduce(tokens, ctx)
        return red.n_out, dict(red.info)

    with torch.inference_mode():
        # Warm up both code paths on a 2-frame clip (lazy imports, first calls).
        small = grid[:2].clone()
        authors_walk(small, TAU_S, TAU_T)
        warm = VisualTokens.from_grid(small.reshape(2 * h * w, -1), (2, h, w))
        STTMReducer(STTMConfig()).reduce(
            warm, ReduceContext(budget=h * w, generator=torch.Generator())
        )
        del small, warm
        gc.collect()
        base = _RssSampler.current()
        sampler = _RssSampler()
        sampler.start()
        times = []
        for _ in range(args["repeats"]):
            start = time.perf_counter()
            n_out, info = run()
            times.append(1000 * (time.perf_counter() - start))
        sampler.running = False
        sampler.join()
    queue.put(
        {
            "ms": statistics.median(times),
            "n_in": tokens.n,
            "n_out": n_out,
            "evals": info.get("search_evals", 1.0),
            "lam": info.get("lambda", 0.0),
            "peak_mb": (sampler.peak - base) / 2**20,
        }
    )


def _check_equal(grid: tuple[int, int, int], channels: int) -> bool:
    sys.path.insert(0, str(Path(__file__).parent))
    from sttm_authors_walk import authors_walk
    from tokenred_sttm.merge import sttm_merge

    video = smooth_video(grid, channels)
    ours = sttm_merge(video, TAU_S, TAU_T).features
    theirs = authors_walk(video, TAU_S, TAU_T)
    return ours.shape == theirs.shape and torch.equal(ours, theirs)


def speed(args: argparse.Namespace) -> None:
    shapes = QUICK if args.quick else SHAPES
    channels = 256 if args.quick else args.channels
    if args.shapes:
        shapes = {k: v for k, v in shapes.items() if k in args.shapes}
    print(
        f"speed: CPU float32, C={channels}, threads={args.threads}, "
        f"tau {TAU_S}/{TAU_T}, root level 1, median of {args.repeats}"
    )
    print()
    print(
        "| shape | T x H x W | case | tokens in | tokens out | evals | ms/video "
        "| x faster than authors walk | peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ctx = mp.get_context("spawn")
    for name, grid in shapes.items():
        rows: dict[str, dict[str, Any]] = {}
        for case in CASES:
            job = {
                "grid": grid,
                "channels": channels,
                "case": case,
                "threads": args.threads,
                "repeats": args.repeats,
                "budget": rows.get("fixed thresholds", {}).get("n_out", 1),
                "lam": rows.get("search @ 30%", {}).get("lam", 0.0),
            }
            queue = ctx.Queue()
            proc = ctx.Process(target=_speed_child, args=(job, queue))
            proc.start()
            rows[case] = queue.get()
            proc.join()
            row = rows[case]
            ratio = rows["authors walk"]["ms"] / row["ms"]
            t, h, w = grid
            print(
                f"| {name} | {t}x{h}x{w} | {case} | {row['n_in']} | {row['n_out']} "
                f"| {row['evals']:.0f} | {row['ms']:.0f} | {ratio:.2f} "
                f"| {row['peak_mb']:.0f} |",
                flush=True,
            )
    if args.check:
        small = (4, 14, 14) if args.quick else (8, 20, 36)
        print()
        print(
            f"authors walk == tokenred reference output at {small}: "
            f"{_check_equal(small, channels)}"
        )


def _embedded_videos(n: int) -> list[torch.Tensor]:
    """Return ``[T, H, W, C]`` visual tokens of the embedded benchmark's test videos."""
    from tokenred.adapters.tiny import TinyAdapter
    from tokenred.builtin.synthetic import SyntheticConfig, SyntheticDataset

    dataset = SyntheticDataset(SyntheticConfig(split="test"))
    adapter = TinyAdapter()
    adapter.load()
    out = []
    for sample in dataset.samples()[:n]:
        decoded = dataset.decode_frames(sample)
        feats = adapter.encode_video(
            decoded.frames, [float(s) for s in decoded.timestamps]
        )
        t, h, w = feats.grid
        out.append(feats.features.float().reshape(t, h, w, -1))
    return out


def _land(videos: list[torch.Tensor]) -> tuple[float, float, int, int, int]:
    from tokenred_sttm.reducer import STTMConfig, STTMReducer

    from tokenred import ReduceContext, VisualTokens

    reducer = STTMReducer(STTMConfig())
    ratios, low, over = [], 0, 0
    for grid in videos:
        t, h, w, c = grid.shape
        tokens = VisualTokens.from_grid(grid.reshape(-1, c), (t, h, w))
        for frac in BUDGETS:
            budget = max(1, int(frac * tokens.n))
            ctx = ReduceContext(budget=budget, generator=torch.Generator())
            kept = reducer.reduce(tokens, ctx).n_out
            ratios.append(kept / budget)
            low += kept < 0.97 * budget
            over += kept > budget
    return min(ratios), statistics.mean(ratios), low, over, len(ratios)


def landing(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    embedded = _embedded_videos(args.videos)
    static = [v[:1].expand(32, *v.shape[1:]).clone() for v in embedded]
    half = []
    for v in embedded:
        dup = v.clone()
        dup[1::2] = v[0::2][: dup[1::2].shape[0]]
        half.append(dup)
    t_smooth = 16 if args.quick else 32
    smooth = [smooth_video((t_smooth, 14, 14), 256, seed=s) for s in range(4)]
    smooth += [smooth_video((t_smooth // 2, 20, 36), 256, seed=s) for s in range(4)]
    print(
        f"landing: budget_mode=search, budgets {BUDGETS[0]:.0%}..{BUDGETS[-1]:.0%} "
        "in steps of 5 %"
    )
    print()
    print(
        "| content | videos | grid | runs | min kept/budget | mean kept/budget "
        "| runs < 97 % | runs over budget |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, videos in (
        ("embedded benchmark (test split)", embedded),
        ("fully static (32 frames)", static),
        ("half-duplicated", half),
        ("smooth realistic", smooth),
    ):
        shapes = sorted({tuple(v.shape[:3]) for v in videos})
        lo, mean, low, over, runs = _land(videos)
        grids = ", ".join("x".join(map(str, s)) for s in shapes)
        print(
            f"| {name} | {len(videos)} | {grids} | {runs} | {lo:.4f} | {mean:.4f} "
            f"| {low} | {over} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=3584)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="small shapes, C=256")
    parser.add_argument("--shapes", nargs="*", default=None, help="subset of shapes")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--check", action="store_true", help="check baseline output")
    parser.add_argument("--landing", action="store_true", help="print landing table")
    parser.add_argument("--videos", type=int, default=100, help="embedded videos")
    args = parser.parse_args()
    if args.speed:
        speed(args)
        print()
    if args.landing:
        landing(args)


if __name__ == "__main__":
    main()
