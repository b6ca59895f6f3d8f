"""A slow, loop-by-loop restatement of STTM's documented behaviour, for tests only.

It walks the quadtree node by node, compares every node pair of adjacent frames and
runs the label propagation on Python lists, following the written description in
``docs/reducers/sttm.md`` (itself derived from the paper and from reading the
reference code). It shares no code with the vectorised implementation, so agreement
between the two on random inputs is evidence that both say what the docs say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class OracleResult:
    features: Tensor  # [N', C]
    tlbr: list[tuple[int, int, int, int, int]]
    sizes: list[int]
    assignment: list[int]  # per patch, raster order


def _groups(n_child: int) -> list[list[int]]:
    """Children of each parent along one axis (odd axis: child 0 alone first)."""
    if n_child % 2:
        return [[0]] + [[2 * g - 1, 2 * g] for g in range(1, (n_child + 1) // 2)]
    return [[2 * g, 2 * g + 1] for g in range(n_child // 2)]


def _sizes(h: int, w: int) -> list[tuple[int, int]]:
    out = [(h, w)]
    while h != 2 and w != 2 and (h, w) != (1, 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        out.insert(0, (h, w))
    return out


def _cos_spatial(a: Tensor, b: Tensor, head_dim: int | None) -> float:
    hd = a.shape[-1] if head_dim is None else head_dim
    sims = F.cosine_similarity(
        a.float().reshape(-1, hd), b.float().reshape(-1, hd), dim=-1
    )
    return float(sims.mean())


def _cos_temporal(a: Tensor, b: Tensor, head_dim: int | None) -> float:
    hd = a.shape[-1] if head_dim is None else head_dim
    a2, b2 = a.float().reshape(-1, hd), b.float().reshape(-1, hd)
    an = a2 / (a2.norm(dim=-1, keepdim=True) + 1e-8)
    bn = b2 / (b2.norm(dim=-1, keepdim=True) + 1e-8)
    return float((an * bn).sum(-1).mean())


def _propagate_reference(edges: list[tuple[int, int]], n: int) -> list[int]:
    rep = list(range(n))
    while True:
        low = [min(rep[d], rep[s]) for d, s in edges]
        nxt = list(rep)
        for (d, s), m in zip(edges, low):
            nxt[d] = min(nxt[d], m)
            nxt[s] = min(nxt[s], m)
        nxt = [nxt[nxt[i]] for i in range(n)]
        if all(nxt[nxt[i]] == nxt[i] for i in range(n)):
            return nxt
        rep = nxt


def _components(edges: list[tuple[int, int]], n: int) -> list[int]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for d, s in edges:
        a, b = find(d), find(s)
        parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(n)]


def oracle_merge(
    grid: Tensor,
    tau_s: float,
    tau_t: float,
    *,
    reference: bool = True,
    root_level: int = 1,
    spatial: bool = True,
    temporal: bool = True,
    head_dim: int | None = None,
    weighted: bool = False,
) -> OracleResult:
    t_len, h_len, w_len, c = grid.shape
    sizes = _sizes(h_len, w_len)
    used = sizes[min(root_level, len(sizes) - 1) :]
    if not spatial or (reference and w_len == 1):
        used = sizes[-1:]
    n_lv = len(used)
    lvl_dtype = grid.dtype if reference else torch.float32
    # Finest rows/columns covered by each node of each level.
    rows: list[list[list[int]]] = [[] for _ in range(n_lv)]
    cols: list[list[list[int]]] = [[] for _ in range(n_lv)]
    rows[-1] = [[y] for y in range(h_len)]
    cols[-1] = [[x] for x in range(w_len)]
    for lv in range(n_lv - 2, -1, -1):
        gy, gx = _groups(used[lv + 1][0]), _groups(used[lv + 1][1])
        rows[lv] = [[r for k in g for r in rows[lv + 1][k]] for g in gy]
        cols[lv] = [[r for k in g for r in cols[lv + 1][k]] for g in gx]
    # Level values, finest first, one node at a time.
    values: list[dict[tuple[int, int, int], Tensor]] = [{} for _ in range(n_lv)]
    for t in range(t_len):
        for y in range(h_len):
            for x in range(w_len):
                values[-1][t, y, x] = grid[t, y, x]
    for lv in range(n_lv - 2, -1, -1):
        gy, gx = _groups(used[lv + 1][0]), _groups(used[lv + 1][1])
        for t in range(t_len):
            for i, ry in enumerate(gy):
                for j, rx in enumerate(gx):
                    acc = torch.zeros(c, dtype=torch.float32)
                    for cy in ry:
                        for cx in rx:
                            acc = acc + values[lv + 1][t, cy, cx].float()
                    if not weighted:
                        acc = acc / (len(ry) * len(rx))
                    values[lv][t, i, j] = acc.to(lvl_dtype)

    emitted: list[tuple[int, int, int, int]] = []  # (t, level, i, j)

    def visit(t: int, lv: int, i: int, j: int) -> None:
        if lv == n_lv - 1:
            emitted.append((t, lv, i, j))
            return
        gy, gx = _groups(used[lv + 1][0])[i], _groups(used[lv + 1][1])[j]
        kids = [(cy, cx) for cy in gy for cx in gx]
        parent = values[lv][t, i, j]
        if not reference and len(kids) == 1:
            visit(t, lv + 1, *kids[0])  # the same region: its children decide
            return
        sims = [_cos_spatial(parent, values[lv + 1][(t, *k)], head_dim) for k in kids]
        if reference:  # missing slots read the child at (t, 0, 0)
            corner = _cos_spatial(parent, values[lv + 1][t, 0, 0], head_dim)
            sims += [corner] * (4 - len(kids))
        if all(s >= tau_s for s in sims):
            emitted.append((t, lv, i, j))
        else:
            for k in kids:
                visit(t, lv + 1, *k)

    for t in range(t_len):
        for i in range(used[0][0]):
            for j in range(used[0][1]):
                visit(t, 0, i, j)

    def box(e: tuple[int, int, int, int]) -> tuple[int, int, int, int, int]:
        t, lv, i, j = e
        ry, rx = rows[lv][i], cols[lv][j]
        return (t, ry[0], rx[0], ry[-1] + 1, rx[-1] + 1)

    emitted.sort(key=lambda e: (e[0], box(e)[1], box(e)[2]))
    boxes = [box(e) for e in emitted]
    feats = [values[e[1]][e[0], e[2], e[3]] for e in emitted]
    areas = [(b[3] - b[1]) * (b[4] - b[2]) for b in boxes]
    n = len(emitted)

    run_temporal = temporal and t_len > 1 and not (reference and tau_t <= 0)
    rep = list(range(n))
    if run_temporal:
        edges = []
        for a in range(n):
            for b in range(n):
                ba, bb = boxes[a], boxes[b]
                if bb[0] != ba[0] + 1:
                    continue
                a_in_b = (
                    bb[1] <= ba[1]
                    and bb[2] <= ba[2]
                    and ba[3] <= bb[3]
                    and ba[4] <= bb[4]
                )
                b_in_a = (
                    ba[1] <= bb[1]
                    and ba[2] <= bb[2]
                    and bb[3] <= ba[3]
                    and bb[4] <= ba[4]
                )
                if (a_in_b or b_in_a) and _cos_temporal(
                    feats[a], feats[b], head_dim
                ) >= tau_t:
                    edges.append((a, b))
        rep = _propagate_reference(edges, n) if reference else _components(edges, n)

    reps = sorted(set(rep))
    out_of = {r: k for k, r in enumerate(reps)}
    out_feats, out_sizes = [], []
    for r in reps:
        members = [i for i in range(n) if rep[i] == r]
        acc = torch.zeros(c, dtype=lvl_dtype)
        for i in members:
            acc = acc + feats[i].to(lvl_dtype)
        denom = sum(areas[i] for i in members) if weighted else len(members)
        out_feats.append((acc / denom).to(grid.dtype))
        out_sizes.append(sum(areas[i] for i in members))
    assignment = [0] * (t_len * h_len * w_len)
    for i, bx in enumerate(boxes):
        for y in range(bx[1], bx[3]):
            for x in range(bx[2], bx[4]):
                assignment[(bx[0] * h_len + y) * w_len + x] = out_of[rep[i]]
    return OracleResult(
        features=torch.stack(out_feats),
        tlbr=[boxes[r] for r in reps],
        sizes=out_sizes,
        assignment=assignment,
    )
