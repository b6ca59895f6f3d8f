"""Synthetic inputs for the contract suite: small grids a reducer must handle.

Features are piecewise-constant blocks plus small noise, so mergers find something
to merge and pruners something to rank. Attention, query and keys are synthetic and
given only for the needs a reducer declares, exactly as the framework does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenred.reducer import TokenReducer
from tokenred.tokens import Need, ReduceContext, Stage, VisualTokens

GRIDS: tuple[tuple[int, int, int], ...] = (
    (1, 1, 1),
    (1, 3, 5),
    (4, 7, 5),
    (2, 6, 9),
    (8, 14, 14),
)
"""Grids ``(T, H, W)``: a single token, one frame, odd sizes, non-square, realistic."""
HEADS = 2
"""Heads of the synthetic attention."""
QUERIES = 3
"""Query positions of the synthetic attention and query states."""
IN_LLM_LAYER = 2
"""Layer K used for reducers that run inside the LLM."""


@dataclass(frozen=True)
class Case:
    """One synthetic reducer call.

    Attributes:
        grid: ``(T, H, W)``.
        budget: ``ctx.budget``.
        channels: Feature width ``C``.
        seed: Seeds the features and ``ctx.generator``.
        device: Device of every tensor.
        dtype: Dtype of the features (and of attention/query/keys).
    """

    grid: tuple[int, int, int]
    budget: int
    channels: int = 8
    seed: int = 0
    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    @property
    def n(self) -> int:
        """Number of input tokens ``T*H*W``."""
        t, h, w = self.grid
        return t * h * w

    def label(self) -> str:
        """Return e.g. ``grid=(4, 7, 5) budget=35``, for failure messages."""
        return f"grid={self.grid} C={self.channels} budget={self.budget}"


def channels_for(grid: tuple[int, int, int]) -> int:
    """Return C: 64 for the larger grids, 8 for the tiny ones."""
    t, h, w = grid
    return 64 if t * h * w >= 100 else 8


def budgets_for(n: int) -> list[int]:
    """Return the sorted budgets ``{1, N//4, N-1, N, N+3}`` (all >= 1)."""
    return sorted({b for b in (1, n // 4, n - 1, n, n + 3) if b >= 1})


def make_case(
    grid: tuple[int, int, int],
    budget: int,
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Case:
    """Build a case with the grid's default width."""
    return Case(grid, budget, channels_for(grid), seed, device, dtype)


def all_cases(device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[Case]:
    """Return every grid at every budget of :func:`budgets_for`."""
    return [
        make_case(g, b, device=device, dtype=dtype)
        for g in GRIDS
        for b in budgets_for(g[0] * g[1] * g[2])
    ]


def make_tokens(case: Case) -> VisualTokens:
    """Return original tokens: block-constant features plus 1% noise."""
    t, h, w = case.grid
    gen = torch.Generator().manual_seed(1000 + case.seed)
    # Blocks of 2 frames x 3 rows x 3 columns share one base vector.
    bt, bh, bw = (t + 1) // 2, (h + 2) // 3, (w + 2) // 3
    base = torch.randn(bt * bh * bw, case.channels, generator=gen)
    tt, yy, xx = torch.meshgrid(
        torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"
    )
    # [T, H, W] block ids -> [T*H*W]
    block = ((tt // 2) * bh * bw + (yy // 3) * bw + xx // 3).reshape(-1)
    noise = 0.01 * torch.randn(t * h * w, case.channels, generator=gen)
    features = (base[block] + noise).to(device=case.device, dtype=case.dtype)
    return VisualTokens.from_grid(features, case.grid)


def stage_for(cls: type[TokenReducer]) -> tuple[Stage, int]:
    """Pick the stage and layer to test: in-LLM (K=2) for reducers with needs."""
    if Stage.PRE_LLM in cls.stages and not cls.needs:
        return Stage.PRE_LLM, 0
    if Stage.IN_LLM in cls.stages:
        return Stage.IN_LLM, IN_LLM_LAYER
    return Stage.PRE_LLM, 0


def make_context(
    case: Case,
    cls: type[TokenReducer],
    *,
    omit: frozenset[Need] = frozenset(),
) -> ReduceContext:
    """Return the context the framework would build for ``cls``.

    Only the declared needs are filled; ``omit`` leaves some out on purpose.
    """
    stage, layer = stage_for(cls)
    n, c = case.n, case.channels
    gen = torch.Generator().manual_seed(2000 + case.seed)
    extra: dict[str, torch.Tensor] = {}
    wanted = cls.needs - omit
    if Need.ATTENTION in wanted:
        logits = torch.randn(HEADS, QUERIES, n, generator=gen)
        extra["attention"] = logits.softmax(dim=-1)  # [heads, Q, N]
    if Need.QUERY in wanted:
        extra["query"] = torch.randn(QUERIES, c, generator=gen)  # [Q, D]
    if Need.KEYS in wanted:
        extra["keys"] = torch.randn(n, c, generator=gen)  # [N, D]
    extra = {k: v.to(device=case.device, dtype=case.dtype) for k, v in extra.items()}
    # The framework's generator is always a CPU one (tokenred.insertion), also on
    # CUDA, so results do not depend on the device's RNG.
    generator = torch.Generator(device="cpu").manual_seed(case.seed)
    return ReduceContext(
        budget=case.budget,
        generator=generator,
        stage=stage,
        layer=layer,
        head_dim=max(1, c // HEADS),
        sample_id=f"contract-{case.grid}-{case.budget}",
        **extra,  # type: ignore[arg-type]
    )
