"""Count STTM's host-device synchronisations per reduction; pin its outputs bit-exactly.

**Syncs** (default). Runs the ``sttm`` reducer once per case under the GPU suite's
CPU proxy (:func:`gpu_suite.count_syncs` with ``"cpu_proxy"``: the aten ops that
would make the host wait for the device on CUDA, i.e. scalar reads, ``nonzero``,
boolean-mask indexing, ``unique``, ``equal``, ...) and prints, per mode and grid,
the number of such ops in one ``reduce`` call and the source lines that issue them.
Inputs are ``sttm_speed.smooth_video`` features (C=64, float32 by default). Cases:
``reference`` and ``fixed`` mode, each with ``budget_mode=threshold`` (tau
0.80/0.60, budget = all tokens: one evaluation) and ``budget_mode=search`` at 30 %
and 50 % of the tokens; and one ``calibrate`` call on two videos.

**Pinning** (``--dump PATH`` / ``--check PATH``). Reduces a fixed set of cases (grids
from 1x1x1 to 64x14x14, static, half-duplicated and smooth contents, both modes,
both budget modes, budgets 5 %..95 %, float32 and bfloat16, per-head similarity,
area weighting, calibrate) and saves every output tensor and info value; ``--check``
recomputes them and compares with ``torch.equal`` (exact, dtype included), so a
refactor that must not change any output can be proven not to.

Examples::

    python benchmarks/sttm_syncs.py                      # sync table, T=16 and 64
    python benchmarks/sttm_syncs.py --frames 2 --sites   # with the source lines
    python benchmarks/sttm_syncs.py --dump /tmp/sttm_pin.pt
    python benchmarks/sttm_syncs.py --check /tmp/sttm_pin.pt
    python benchmarks/sttm_syncs.py --time --frames 64   # CPU ms per reduction
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_suite import _short, count_syncs
from sttm_speed import BUDGETS, _embedded_videos, smooth_video

TAU_S, TAU_T = 0.80, 0.60
CASES = [
    ("reference", "threshold", None),
    ("fixed", "threshold", None),
    ("reference", "search", 0.3),
    ("reference", "search", 0.5),
    ("fixed", "search", 0.3),
    ("fixed", "search", 0.5),
]


def _tokens(grid: torch.Tensor) -> Any:
    from tokenred import VisualTokens

    t, h, w, c = grid.shape
    return VisualTokens.from_grid(grid.reshape(-1, c), (t, h, w))


def _reduce(
    grid: torch.Tensor, mode: str, budget_mode: str, frac: float | None, **extra: Any
) -> Any:
    from tokenred_sttm.reducer import STTMConfig, STTMReducer

    from tokenred import ReduceContext

    tokens = _tokens(grid)
    cfg = STTMConfig(
        mode=mode,  # type: ignore[arg-type]
        budget_mode=budget_mode,  # type: ignore[arg-type]
        tau_s=extra.pop("tau_s", TAU_S),
        tau_t=extra.pop("tau_t", TAU_T),
        **extra,
    )
    budget = tokens.n if frac is None else max(1, int(frac * tokens.n))
    ctx = ReduceContext(budget=budget, generator=torch.Generator(), head_dim=None)
    return STTMReducer(cfg).reduce(tokens, ctx)


def _label(mode: str, budget_mode: str, frac: float | None) -> str:
    return f"{mode} {budget_mode}" + ("" if frac is None else f" @ {frac:.0%}")


def syncs(args: argparse.Namespace) -> None:
    from tokenred_sttm.reducer import STTMConfig, STTMReducer

    print(
        f"host syncs per reduction (CPU proxy of gpu_suite.count_syncs), "
        f"smooth features, C={args.channels}, {args.dtype}"
    )
    print()
    print("| case | T x H x W | tokens out | evals | syncs |")
    print("|---|---|---|---|---|")
    dtype = getattr(torch, args.dtype)
    sites: dict[str, Counter[str]] = {}
    for t in args.frames:
        grid = smooth_video((t, 14, 14), args.channels).to(dtype)
        _reduce(grid[:2], "reference", "search", 0.3)  # warm lazy imports
        for mode, bmode, frac in CASES:
            with count_syncs("cpu_proxy") as (hits, _log):
                red = _reduce(grid, mode, bmode, frac)
            name = _label(mode, bmode, frac)
            evals = red.info.get("search_evals", 1.0)
            print(
                f"| {name} | {t}x14x14 | {red.n_out} | {evals:.0f} | {len(hits)} |",
                flush=True,
            )
            sites[f"{name}, T={t}"] = Counter(
                f"{_short(h.filename)}:{h.lineno} {h.message.split()[0]}" for h in hits
            )
        videos = [_tokens(grid), _tokens(grid.flip(0).contiguous())]
        with count_syncs("cpu_proxy") as (hits, _log):
            STTMReducer.calibrate(STTMConfig(), videos, 0.3)
        print(f"| calibrate (2 videos) | {t}x14x14 | - | - | {len(hits)} |")
        sites[f"calibrate, T={t}"] = Counter(
            f"{_short(h.filename)}:{h.lineno} {h.message.split()[0]}" for h in hits
        )
    if args.sites:
        for name, counter in sites.items():
            print()
            print(f"{name}:")
            for site, n in counter.most_common():
                print(f"  {n:5d}  {site}")


def timing(args: argparse.Namespace) -> None:
    print(
        f"CPU ms per reduction, threads={torch.get_num_threads()}, C={args.channels}, "
        f"median of {args.repeats}"
    )
    print()
    print("| case | T x H x W | ms |")
    print("|---|---|---|")
    for t in args.frames:
        grid = smooth_video((t, 14, 14), args.channels).to(getattr(torch, args.dtype))
        for mode, bmode, frac in CASES:
            _reduce(grid, mode, bmode, frac)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                _reduce(grid, mode, bmode, frac)
                times.append(1000 * (time.perf_counter() - start))
            print(
                f"| {_label(mode, bmode, frac)} | {t}x14x14 | "
                f"{statistics.median(times):.1f} |",
                flush=True,
            )


def _pin_videos() -> dict[str, torch.Tensor]:
    """Contents of the pinning cases (float32 ``[T, H, W, C]``)."""
    smooth = smooth_video((16, 14, 14), 64, seed=1)
    static = smooth[:1].expand(12, -1, -1, -1).contiguous()
    half = smooth.clone()
    half[1::2] = smooth[0::2]
    gen = torch.Generator().manual_seed(5)
    return {
        "smooth16x14x14": smooth,
        "smooth64x14x14": smooth_video((64, 14, 14), 64, seed=2),
        "smooth8x20x36": smooth_video((8, 20, 36), 32, seed=3),
        "static12x14x14": static,
        "half16x14x14": half,
        "odd5x7x9": smooth_video((5, 7, 9), 16, seed=4),
        "flat3x1x6": torch.randn(3, 1, 6, 8, generator=gen),
        "col4x6x1": torch.randn(4, 6, 1, 8, generator=gen),
        "single1x14x14": smooth_video((1, 14, 14), 16, seed=6),
        "dot1x1x1": torch.randn(1, 1, 1, 8, generator=gen),
        "noise6x8x8": torch.randn(6, 8, 8, 16, generator=gen),
        "pairs2x14x14": smooth_video((2, 14, 14), 64, seed=7),
    }


def _pin_cases() -> list[tuple[str, torch.Tensor, str, str, float | None, dict]]:
    videos = _pin_videos()
    cases: list[tuple[str, torch.Tensor, str, str, float | None, dict]] = []
    fracs = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.95]
    variants: list[tuple[str, dict[str, Any]]] = [
        ("", {}),
        ("bf16", {"dtype": "bfloat16"}),
    ]
    for vname, video in videos.items():
        big = video.shape[0] >= 64
        for suffix, var in variants:
            grid = video.to(getattr(torch, var.get("dtype", "float32")))
            for mode in ("reference", "fixed"):
                for taus in [(0.8, 0.6), (0.9, 0.3), (0.5, 0.9), (0.95, 0.0)]:
                    extra = {"tau_s": taus[0], "tau_t": taus[1]}
                    cases.append((vname + suffix, grid, mode, "threshold", None, extra))
                cases.append(
                    (vname + suffix, grid, mode, "threshold", 0.1, {"tau_s": 0.9})
                )
                for frac in [0.3] if big else fracs:
                    cases.append((vname + suffix, grid, mode, "search", frac, {}))
    extras: list[dict[str, Any]] = [
        {"sim_per_head": True, "head_dim": 16},
        {"weighted_avg": True},
        {"root_level": 0},
        {"root_level": 5},
        {"spatial": False},
        {"temporal": False},
    ]
    for extra in extras:
        for mode in ("reference", "fixed"):
            for vname in ("smooth16x14x14", "odd5x7x9", "half16x14x14"):
                for frac in (0.1, 0.4, 0.8):
                    grid = videos[vname]
                    cases.append((vname, grid, mode, "search", frac, dict(extra)))
                cases.append((vname, grid, mode, "threshold", None, dict(extra)))
    return cases


def _pin_outputs() -> dict[str, Any]:
    from tokenred_sttm.reducer import STTMConfig, STTMReducer

    out: dict[str, Any] = {}
    for vname, grid, mode, bmode, frac, extra in _pin_cases():
        key = f"{vname} {mode} {bmode} {frac} {sorted(extra.items())}"
        red = _reduce(grid, mode, bmode, frac, **extra)
        tok = red.tokens
        out[key] = {
            "features": tok.features,
            "coords": tok.coords,
            "sizes": tok.sizes,
            "assignment": red.assignment,
            "info": dict(red.info),
        }
    videos = _pin_videos()
    # The landing sets of sttm_speed: embedded benchmark videos, static and
    # half-duplicated versions of them, every budget from 5 % to 95 %.
    for i, video in enumerate(_embedded_videos(3)):
        half = video.clone()
        half[1::2] = video[0::2][: half[1::2].shape[0]]
        static = video[:1].expand(32, -1, -1, -1).contiguous()
        for kind, grid in (("embedded", video), ("static", static), ("half", half)):
            for mode in ("reference", "fixed"):
                for frac in BUDGETS:
                    red = _reduce(grid, mode, "search", frac)
                    out[f"landing {kind}{i} {mode} {frac}"] = {
                        "features": red.tokens.features,
                        "sizes": red.tokens.sizes,
                        "assignment": red.assignment,
                        "info": dict(red.info),
                    }
    for mode in ("reference", "fixed"):
        for ratio in (0.2, 0.5):
            sets = [_tokens(videos[k]) for k in ("smooth16x14x14", "half16x14x14")]
            cfg = STTMConfig(mode=mode)  # type: ignore[arg-type]
            out[f"calibrate {mode} {ratio}"] = STTMReducer.calibrate(cfg, sets, ratio)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_same(a[k], b[k]) for k in a)
        )
    if isinstance(a, (tuple, list)):
        return (
            isinstance(b, (tuple, list))
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b))
        )
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # both NaN
    return bool(a == b)


def pin(args: argparse.Namespace) -> int:
    outputs = _pin_outputs()
    if args.dump:
        torch.save(outputs, args.dump)
        print(f"pinned {len(outputs)} cases to {args.dump}")
        return 0
    saved = torch.load(args.check, weights_only=False)
    bad = [k for k in saved if k not in outputs or not _same(saved[k], outputs[k])]
    bad += [k for k in outputs if k not in saved]
    print(f"compared {len(saved)} pinned cases: {len(bad)} differ")
    for k in bad[:20]:
        print(f"  differs: {k}")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--sites", action="store_true", help="print the source lines")
    parser.add_argument("--time", action="store_true", help="CPU ms per reduction")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dump", type=Path, help="save the pinned outputs here")
    parser.add_argument("--check", type=Path, help="compare with saved outputs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        if args.dump or args.check:
            return pin(args)
        if args.time:
            timing(args)
        else:
            syncs(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
