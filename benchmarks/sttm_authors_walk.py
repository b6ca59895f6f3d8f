"""A timing baseline that does STTM the way the authors' code is organised.

This is our own restatement (nothing copied) of the *structure* of the reference
implementation (https://github.com/HYUNJS/STTM@00736c7) as described in
``/work/shared/reference/sttm.md``: the whole pyramid is pooled, the quadtree is
walked level by level over the live parents, each live parent's four child slots are
gathered and compared with ``F.cosine_similarity``, every frame's emitted nodes are
padded to ``M`` (the most nodes in a frame) and all ``[T-1, M, M]`` node pairs of
adjacent frames are tested for nesting, and the groups are averaged with
``index_add_``. It produces the same tokens as ``tokenred_sttm`` in reference mode
(checked by ``benchmarks/sttm_speed.py --check``), so timing both in one process
gives a same-machine ratio.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _sizes(h: int, w: int) -> list[tuple[int, int]]:
    out = [(h, w)]
    while h != 2 and w != 2:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        out.insert(0, (h, w))
    return out


def _pool(x: Tensor) -> Tensor:
    """``[T, C, h, w]`` -> parents: 1-wide first row/column on odd sides."""
    h, w = x.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        return F.avg_pool2d(x, 2, 2)
    xp = F.pad(x, (w % 2, 0, h % 2, 0))
    s = F.avg_pool2d(xp, 2, 2, divisor_override=1)
    rows = torch.full((s.shape[-2],), 2.0)
    cols = torch.full((s.shape[-1],), 2.0)
    if h % 2:
        rows[0] = 1.0
    if w % 2:
        cols[0] = 1.0
    return s / (rows[:, None] * cols[None, :])


def authors_walk(
    grid: Tensor, tau_s: float, tau_t: float, root_level: int = 1
) -> Tensor:
    """Return ``[N', C]`` merged tokens of a ``[T, H, W, C]`` video (reference mode)."""
    t_len, h, w, c = grid.shape
    sizes = _sizes(h, w)[root_level:]
    feats = [grid.permute(0, 3, 1, 2)]  # [T, C, h, w] per level, finest first
    for _ in range(len(sizes) - 1):
        feats.insert(0, _pool(feats[0]))
    # First and one-past-last finest row/column of every node, per level.
    sy, ey = [torch.arange(h)], [torch.arange(h) + 1]
    sx, ex = [torch.arange(w)], [torch.arange(w) + 1]
    for lvl in range(len(sizes) - 2, -1, -1):
        (hp, wp), (hc, wc) = sizes[lvl], sizes[lvl + 1]
        py, px = torch.arange(hp), torch.arange(wp)
        sy.insert(0, sy[0][(2 * py - hc % 2).clamp(min=0)])
        ey.insert(0, ey[0][2 * py + 1 - hc % 2])
        sx.insert(0, sx[0][(2 * px - wc % 2).clamp(min=0)])
        ex.insert(0, ex[0][2 * px + 1 - wc % 2])
    out_t, out_y, out_x, out_lv = [], [], [], []
    rh, rw = sizes[0]
    tt, yy, xx = torch.meshgrid(
        torch.arange(t_len), torch.arange(rh), torch.arange(rw), indexing="ij"
    )
    live = (tt.reshape(-1), yy.reshape(-1), xx.reshape(-1))
    for lvl in range(len(sizes)):
        t_i, y_i, x_i = live
        if lvl == len(sizes) - 1:
            out_t.append(t_i), out_y.append(y_i), out_x.append(x_i)
            out_lv.append(torch.full_like(t_i, lvl))
            break
        hc, wc = sizes[lvl + 1]
        two = torch.arange(2)
        cy = 2 * y_i[:, None] + two - hc % 2  # [n, 2]
        cx = 2 * x_i[:, None] + two - wc % 2
        vy, vx = cy >= 0, cx >= 0
        ky = cy.clamp(min=0)[:, :, None].expand(-1, 2, 2)
        kx = cx.clamp(min=0)[:, None, :].expand(-1, 2, 2)
        valid = vy[:, :, None] & vx[:, None, :]
        ky = torch.where(valid, ky, 0).reshape(-1, 4)
        kx = torch.where(valid, kx, 0).reshape(-1, 4)
        parent = feats[lvl][t_i, :, y_i, x_i]  # [n, C]
        child = feats[lvl + 1][t_i[:, None], :, ky, kx]  # [n, 4, C]
        sim = F.cosine_similarity(parent[:, None].float(), child.float(), dim=-1)
        stop = (sim >= tau_s).all(dim=1)
        out_t.append(t_i[stop]), out_y.append(y_i[stop]), out_x.append(x_i[stop])
        out_lv.append(torch.full_like(t_i[stop], lvl))
        go = ~stop
        keep = valid[go].reshape(-1)
        nt = t_i[go][:, None].expand(-1, 4).reshape(-1)[keep]
        live = (nt, ky[go].reshape(-1)[keep], kx[go].reshape(-1)[keep])
    t_n, y_n, x_n, lv_n = (torch.cat(v) for v in (out_t, out_y, out_x, out_lv))
    y0, y1 = torch.empty_like(y_n), torch.empty_like(y_n)
    x0, x1 = torch.empty_like(x_n), torch.empty_like(x_n)
    for lvl in range(len(sizes)):
        sel = lv_n == lvl
        y0[sel], y1[sel] = sy[lvl][y_n[sel]], ey[lvl][y_n[sel]]
        x0[sel], x1[sel] = sx[lvl][x_n[sel]], ex[lvl][x_n[sel]]
    order = torch.argsort((t_n * h + y0) * w + x0)
    t_n, y_n, x_n, lv_n = t_n[order], y_n[order], x_n[order], lv_n[order]
    box = torch.stack([y0[order], x0[order], y1[order], x1[order]], 1)
    nodes = torch.empty(t_n.shape[0], c, dtype=grid.dtype)
    for lvl in range(len(sizes)):
        sel = lv_n == lvl
        nodes[sel] = feats[lvl][t_n[sel], :, y_n[sel], x_n[sel]]
    n = nodes.shape[0]
    rep = torch.arange(n)
    if t_len > 1 and tau_t > 0:
        counts = torch.bincount(t_n, minlength=t_len)
        m = int(counts.max())
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n) - start[t_n]
        pad = torch.full((t_len, m, 4), -1, dtype=torch.int32)
        pad[t_n, slot] = box.to(torch.int32)
        ok = torch.zeros(t_len, m, dtype=torch.bool)
        ok[t_n, slot] = True
        a, b = (
            pad[:-1, :, None, :],
            pad[1:, None, :, :],
        )  # [T-1, M, 1, 4], [T-1, 1, M, 4]
        diff = a - b  # [T-1, M, M, 4]
        a_in_b = (diff[..., 0] >= 0) & (diff[..., 1] >= 0) & (diff[..., 2] <= 0)
        a_in_b &= diff[..., 3] <= 0
        b_in_a = (diff[..., 0] <= 0) & (diff[..., 1] <= 0) & (diff[..., 2] >= 0)
        b_in_a &= diff[..., 3] >= 0
        nested = (a_in_b | b_in_a) & ok[:-1, :, None] & ok[1:, None, :]
        pt, pi, pj = torch.nonzero(nested, as_tuple=True)
        dst, src = start[pt] + pi, start[pt + 1] + pj
        u = nodes.float()
        u = u / (u.norm(dim=-1, keepdim=True) + 1e-8)
        sims = (u[dst] * u[src]).sum(-1)
        edge = sims >= tau_t
        dst, src = dst[edge], src[edge]
        while True:
            low = torch.minimum(rep[dst], rep[src])
            rep = rep.scatter_reduce(0, dst, low, reduce="amin")
            rep = rep.scatter_reduce(0, src, low, reduce="amin")
            rep = rep[rep]
            if torch.equal(rep, rep[rep]):
                break
    keep = torch.nonzero(rep == torch.arange(n)).squeeze(1)
    acc = torch.zeros(n, c, dtype=grid.dtype).index_add_(0, rep.to(torch.int32), nodes)
    cnt = torch.zeros(n).index_add_(0, rep, torch.ones(n))
    return (acc[keep] / cnt[keep, None]).to(grid.dtype)
