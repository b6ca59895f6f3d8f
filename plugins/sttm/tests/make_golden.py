"""Regenerate ``golden_reference.json``: pinned ``reference``-mode STTM outputs.

Procedure (documented in docs/reducers/sttm.md, "Golden tests"):

1. Build each case's input with :func:`sttm_inputs.blocky_video` (float32, seeded)
   and store the input itself, so the file does not depend on the RNG.
2. Run ``sttm_merge`` in reference mode and check it against the loop-by-loop
   oracle (``sttm_oracle.py``): regions, sizes and assignment equal, features to
   1e-6.
3. Check that every decision has a margin: the output is identical with both
   thresholds moved by +-1e-3, so float rounding on another CPU or on CUDA cannot
   flip a decision and the pinned groups stay exact.
4. Write inputs and outputs (features, tlbr, sizes, assignment) as JSON.

The authors' code could not be run where this file was made (no network access);
the goldens pin tokenred's reading of it, which the oracle restates independently.
With a checkout of https://github.com/HYUNJS/STTM at 00736c7 (and ``einops``)
``--check-against PATH`` also runs their ``quadtree_build_video`` on each case and
compares regions and features.

Usage::

    python plugins/sttm/tests/make_golden.py [--check-against PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from sttm_inputs import blocky_video  # noqa: E402
from sttm_oracle import oracle_merge  # noqa: E402
from tokenred_sttm.merge import MergeOptions, sttm_merge  # noqa: E402

OUT = HERE / "golden_reference.json"
MARGIN = 1e-3

CASES = [
    # name, grid, channels, seed, block, tau_s, tau_t, options
    ("llava_14x14_root1", (2, 14, 14), 4, 1, 3, 0.85, 0.55, {}),
    ("odd_7x5_root0", (3, 7, 5), 4, 2, 2, 0.80, 0.60, {"root_level": 0}),
    (
        "qwen_like_10x18_weighted_heads",
        (2, 10, 18),
        4,
        3,
        4,
        0.85,
        0.65,
        {"weighted": True, "head_dim": 2},
    ),
]


def _run(grid: torch.Tensor, tau_s: float, tau_t: float, opts: dict) -> dict:
    res = sttm_merge(grid, tau_s, tau_t, MergeOptions(reference=True, **opts))
    return {
        "features": res.features.tolist(),
        "tlbr": res.tlbr.tolist(),
        "sizes": res.sizes.tolist(),
        "assignment": res.assignment.tolist(),
    }


def _check_margin(grid: torch.Tensor, tau_s: float, tau_t: float, opts: dict) -> None:
    base = _run(grid, tau_s, tau_t, opts)
    for ds in (-MARGIN, MARGIN):
        for dt in (-MARGIN, MARGIN):
            moved = _run(grid, tau_s + ds, tau_t + dt, opts)
            if moved["assignment"] != base["assignment"]:
                raise SystemExit(f"a decision lies within {MARGIN} of a threshold")


def _check_oracle(grid: torch.Tensor, tau_s: float, tau_t: float, opts: dict) -> None:
    got = sttm_merge(grid, tau_s, tau_t, MergeOptions(reference=True, **opts))
    want = oracle_merge(grid, tau_s, tau_t, reference=True, **opts)
    assert [tuple(b) for b in got.tlbr.tolist()] == want.tlbr
    assert got.assignment.tolist() == want.assignment
    torch.testing.assert_close(got.features, want.features, rtol=1e-6, atol=1e-6)


def _check_authors(
    path: Path, grid: torch.Tensor, tau_s: float, tau_t: float, opts: dict
) -> None:
    """Compare with the authors' ``quadtree_build_video`` from a local checkout."""
    sys.path.insert(0, str(path))
    from token_merging_utils.quadtree_builder import quadtree_build_video

    # [T, H, W, C] -> [T, C, H, W], their input layout
    feats, sizes, tlbr = quadtree_build_video(
        grid.permute(0, 3, 1, 2).contiguous(),
        threshold=tau_s,
        temporal_thresh=tau_t,
        root_level=opts.get("root_level", 1),
        weighted_avg=opts.get("weighted", False),
        head_dim=opts.get("head_dim"),
    )
    ours = sttm_merge(grid, tau_s, tau_t, MergeOptions(reference=True, **opts))
    assert tlbr.long().tolist() == ours.tlbr.tolist(), "regions differ from authors'"
    assert sizes.long().tolist() == ours.sizes.tolist(), "sizes differ from authors'"
    torch.testing.assert_close(feats, ours.features, rtol=1e-5, atol=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-against", type=Path, default=None)
    args = parser.parse_args()
    cases = []
    for name, shape, c, seed, block, tau_s, tau_t, opts in CASES:
        grid = blocky_video(shape, channels=c, seed=seed, block=block)
        _check_oracle(grid, tau_s, tau_t, opts)
        _check_margin(grid, tau_s, tau_t, opts)
        if args.check_against is not None:
            _check_authors(args.check_against, grid, tau_s, tau_t, opts)
        out = _run(grid, tau_s, tau_t, opts)
        n_in, n_out = grid.shape[0] * grid.shape[1] * grid.shape[2], len(out["sizes"])
        print(f"{name}: {n_in} -> {n_out} tokens")
        cases.append(
            {
                "name": name,
                "grid": list(shape),
                "tau_s": tau_s,
                "tau_t": tau_t,
                "options": opts,
                "input": grid.reshape(-1, c).tolist(),
                **out,
            }
        )
    meta = {
        "generator": "plugins/sttm/tests/make_golden.py",
        "mode": "reference",
        "reference": "https://github.com/HYUNJS/STTM@00736c7",
        "torch": torch.__version__,
    }
    OUT.write_text(json.dumps({"meta": meta, "cases": cases}) + "\n")


if __name__ == "__main__":
    main()
