"""The contract checks every registered reducer must pass.

Each ``check_*`` takes a reducer (class or instance) and raises :class:`CheckFailure`
with a message naming the violated invariant and the failing case; it returns an
optional note (e.g. "not applicable"). The first paragraph of each docstring is its
row in the docs table (:func:`tokenred.testing.checks_table`).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from tokenred.errors import ContractError, TokenredError
from tokenred.reducer import TokenReducer
from tokenred.registry import NAME_RE
from tokenred.testing.cases import (
    GRIDS,
    Case,
    all_cases,
    budgets_for,
    make_case,
    make_context,
    make_tokens,
)
from tokenred.tokens import Need, PositionPolicy, Reduction, Stage, VisualTokens

ReducerLike = TokenReducer | type[TokenReducer]
Check = Callable[..., str | None]


class CheckFailure(AssertionError):
    """A reducer violated one invariant of the contract."""


def _instance(reducer: ReducerLike) -> TokenReducer:
    return reducer() if isinstance(reducer, type) else reducer


def _fail(red: TokenReducer, what: str, case: Case | None = None) -> CheckFailure:
    where = f" on {case.label()}" if case is not None else ""
    return CheckFailure(f"reducer '{red.name}'{where}: {what}")


def _run(
    red: TokenReducer, case: Case, omit: frozenset[Need] = frozenset()
) -> tuple[VisualTokens, Reduction]:
    """Call ``reduce`` on a fresh synthetic input, as the framework would."""
    tokens = make_tokens(case)
    ctx = make_context(case, type(red), omit=omit)
    with torch.inference_mode():
        out = red.reduce(tokens, ctx)
    if not isinstance(out, Reduction):
        raise _fail(
            red, f"reduce() returned {type(out).__name__}, not a Reduction", case
        )
    return tokens, out


def _reducing_cases(device: str, dtype: torch.dtype) -> Iterator[Case]:
    """Every grid at budgets below N (where something must happen).

    The largest grid runs at N//4 only: it is there for realism, and the other
    budgets are covered on the smaller grids at a fraction of the cost.
    """
    for grid in GRIDS:
        n = grid[0] * grid[1] * grid[2]
        budgets = {max(1, n // 4)} if n > 1000 else {1, max(1, n // 4), max(1, n - 1)}
        for b in sorted(budgets):
            yield make_case(grid, b, device=device, dtype=dtype)


def _mid_cases(device: str, dtype: torch.dtype) -> list[Case]:
    return [
        make_case((4, 7, 5), 35, device=device, dtype=dtype),
        make_case((2, 6, 9), 27, seed=1, device=device, dtype=dtype),
    ]


def check(fn: Check) -> Check:
    """Mark a check: keyword defaults for device and dtype, run without autograd."""

    @functools.wraps(fn)
    def wrapper(
        reducer: ReducerLike,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> str | None:
        return fn(_instance(reducer), device=device, dtype=dtype)

    return wrapper


@check
def check_types(red: TokenReducer, *, device: str, dtype: torch.dtype) -> str | None:
    """Check output types, device, dtype and shapes.

    `reduce` returns a `Reduction`; its dtype, device and width C match the input;
    coords are `[N_out, 3]` and sizes `[N_out]` float32, assignment `[N_in]` int64.
    """
    for grid in GRIDS:
        n = grid[0] * grid[1] * grid[2]
        case = make_case(grid, max(1, n // 4), device=device, dtype=dtype)
        tokens, out = _run(red, case)
        f = out.tokens.features
        if f.dim() != 2 or f.shape[1] != tokens.channels:
            raise _fail(red, f"features {tuple(f.shape)} are not [N_out, C]", case)
        if f.dtype != tokens.dtype or f.device != tokens.device:
            msg = f"output is {f.dtype} on {f.device}, input {dtype} on {device}"
            raise _fail(red, msg, case)
        n_out = f.shape[0]
        c, s = out.tokens.coords, out.tokens.sizes
        if tuple(c.shape) != (n_out, 3) or c.dtype != torch.float32:
            raise _fail(red, f"coords {tuple(c.shape)} {c.dtype} != [N_out, 3]", case)
        if tuple(s.shape) != (n_out,) or s.dtype != torch.float32:
            raise _fail(red, f"sizes {tuple(s.shape)} {s.dtype} != [N_out]", case)
        a = out.assignment
        if a.dtype != torch.long or tuple(a.shape) != (n,):
            raise _fail(red, f"assignment {tuple(a.shape)} {a.dtype} != [N_in]", case)
        if out.tokens.grid != tokens.grid:
            raise _fail(red, "output grid differs from the input grid", case)
        if not all(isinstance(v, int | float) for v in out.info.values()):
            raise _fail(red, "info values must be floats", case)
    return None


@check
def check_budget(red: TokenReducer, *, device: str, dtype: torch.dtype) -> str | None:
    """Check the budget is respected (and met exactly when promised).

    `N_out <= ctx.budget` for every budget case; `N_out == min(budget, N)` when
    `exact_budget`.
    """
    for case in all_cases(device, dtype):
        _, out = _run(red, case)
        k = out.n_out
        if k > case.budget:
            raise _fail(red, f"returned {k} tokens, over the budget", case)
        if k < 1:
            raise _fail(red, "returned no tokens (at least one must remain)", case)
        if red.exact_budget and k != min(case.budget, case.n):
            msg = (
                f"exact_budget=True promises min(budget, N) = "
                f"{min(case.budget, case.n)} tokens, returned {k}"
            )
            raise _fail(red, msg, case)
    return None


@check
def check_finite(red: TokenReducer, *, device: str, dtype: torch.dtype) -> str | None:
    """Check every output value is finite.

    Output features, coords and sizes hold no NaN or Inf for finite inputs (the
    framework rejects such a result at run time).
    """
    for case in _reducing_cases(device, dtype):
        _, out = _run(red, case)
        for what, t in (
            ("features", out.tokens.features),
            ("coords", out.tokens.coords),
            ("sizes", out.tokens.sizes),
        ):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise _fail(red, f"output {what} contain NaN or Inf", case)
    return None


@check
def check_full_budget_identity(
    red: TokenReducer, *, device: str, dtype: torch.dtype
) -> str | None:
    """Check an exact reducer is the identity at full budget.

    For `exact_budget` reducers, when `budget >= N` the assignment is `arange(N)`
    and features, coords and sizes are unchanged.
    """
    if not red.exact_budget:
        return "not applicable: exact_budget=False"
    for grid in GRIDS:
        n = grid[0] * grid[1] * grid[2]
        for b in (n, n + 3):
            case = make_case(grid, b, device=device, dtype=dtype)
            tokens, out = _run(red, case)
            expect = torch.arange(n, device=out.assignment.device)
            if not torch.equal(out.assignment, expect):
                raise _fail(red, "assignment is not arange(N) at full budget", case)
            for attr in ("features", "coords", "sizes"):
                if not torch.equal(getattr(out.tokens, attr), getattr(tokens, attr)):
                    raise _fail(red, f"{attr} changed at full budget", case)
    return None


def _checked_assignment(red: TokenReducer, out: Reduction, case: Case) -> torch.Tensor:
    a = out.assignment
    if a.dtype != torch.long or tuple(a.shape) != (case.n,):
        raise _fail(red, f"assignment {tuple(a.shape)} {a.dtype} != [N_in]", case)
    if a.numel() and (int(a.min()) < -1 or int(a.max()) >= out.n_out):
        msg = f"assignment values must lie in [-1, {out.n_out})"
        raise _fail(red, msg, case)
    return a


@check
def check_assignment(
    red: TokenReducer, *, device: str, dtype: torch.dtype
) -> str | None:
    """Check the assignment map is in range and covers every output.

    Assignment values lie in `[-1, N_out)` and every output has at least one source.
    """
    for case in _reducing_cases(device, dtype):
        _, out = _run(red, case)
        a = _checked_assignment(red, out, case)
        counts = torch.bincount(a[a >= 0], minlength=out.n_out)
        orphans = int((counts == 0).sum())
        if orphans:
            msg = f"{orphans} output tokens have no source in the assignment"
            raise _fail(red, msg, case)
    return None


@check
def check_sizes_conserved(
    red: TokenReducer, *, device: str, dtype: torch.dtype
) -> str | None:
    """Check sizes are conserved through merging.

    Output sizes equal the scatter-sum of the sizes of the kept inputs they absorb.
    """
    for case in _reducing_cases(device, dtype):
        tokens, out = _run(red, case)
        a = _checked_assignment(red, out, case)
        kept = a >= 0
        summed = torch.zeros(out.n_out, device=a.device).index_add(
            0, a[kept], tokens.sizes[kept]
        )
        if not torch.allclose(summed, out.tokens.sizes.float(), atol=1e-4):
            raise _fail(red, "output sizes are not the sum of their sources", case)
    return None


@check
def check_coords_within_sources(
    red: TokenReducer, *, device: str, dtype: torch.dtype
) -> str | None:
    """Check merged coordinates stay inside their sources.

    Each output coord lies within the per-axis min/max of its sources' coords.
    """
    for case in _reducing_cases(device, dtype):
        tokens, out = _run(red, case)
        a = _checked_assignment(red, out, case)
        kept = a >= 0
        idx = a[kept][:, None].expand(-1, 3)  # [K] -> [K, 3]
        src = tokens.coords[kept]
        lo = torch.full((out.n_out, 3), float("inf"), device=a.device)
        hi = torch.full((out.n_out, 3), float("-inf"), device=a.device)
        lo = lo.scatter_reduce(0, idx, src, reduce="amin")
        hi = hi.scatter_reduce(0, idx, src, reduce="amax")
        c = out.tokens.coords.float()
        bad = ((c < lo - 1e-4) | (c > hi + 1e-4)).any(dim=1)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            msg = (
                f"output {i} has coords {c[i].tolist()} outside its sources' box "
                f"{lo[i].tolist()}..{hi[i].tolist()}"
            )
            raise _fail(red, msg, case)
    return None


@check
def check_order(red: TokenReducer, *, device: str, dtype: torch.dtype) -> str | None:
    """Check outputs are ordered by their earliest source.

    Outputs are strictly increasing in their earliest source index (adapters derive
    positions from it).
    """
    for case in _reducing_cases(device, dtype):
        _, out = _run(red, case)
        _checked_assignment(red, out, case)
        first = out.representatives()
        if out.n_out > 1 and not bool((first[1:] > first[:-1]).all()):
            raise _fail(red, "outputs are not ordered by earliest source", case)
    return None


@check
def check_no_mutation(
    red: TokenReducer, *, device: str, dtype: torch.dtype
) -> str | None:
    """Check the inputs are left untouched.

    Inputs (features, coords, sizes and context tensors) are bit-identical after the
    call.
    """
    for case in _mid_cases(device, dtype):
        tokens = make_tokens(case)
        ctx = make_context(case, type(red))
        names = ("features", "coords", "sizes")
        before = {k: getattr(tokens, k).clone() for k in names}
        ctx_before = {
            k: v.clone()
            for k in ("attention", "query", "keys")
            if (v := getattr(ctx, k)) is not None
        }
        with torch.inference_mode():
            red.reduce(tokens, ctx)
        for k, v in before.items():
            if not torch.equal(getattr(tokens, k), v):
                raise _fail(red, f"reduce() mutated the input {k}", case)
        for k, v in ctx_before.items():
            if not torch.equal(getattr(ctx, k), v):
                raise _fail(red, f"reduce() mutated ctx.{k}", case)
    return None


def _rng_state() -> list[Any]:
    state: list[Any] = [torch.get_rng_state(), random.getstate()]
    np_state: Any = np.random.get_state()
    state.append((np_state[0], np_state[1].copy(), *np_state[2:]))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state.append(torch.cuda.get_rng_state_all())
    return state


def _same_rng(a: list[Any], b: list[Any]) -> bool:
    torch_same = torch.equal(a[0], b[0])
    np_same = a[2][0] == b[2][0] and np.array_equal(a[2][1], b[2][1])
    np_same = np_same and a[2][2:] == b[2][2:]
    cuda_same = len(a) < 4 or all(torch.equal(x, y) for x, y in zip(a[3], b[3]))
    return torch_same and a[1] == b[1] and np_same and cuda_same


@check
def check_deterministic(
    red: TokenReducer, *, device: str, dtype: torch.dtype
) -> str | None:
    """Check determinism under a seed and that the global RNG is untouched.

    The same seed gives identical output, and the global torch, numpy and Python RNG
    states are unchanged (use `ctx.generator`).
    """
    for case in _mid_cases(device, dtype):
        state = _rng_state()
        _, first = _run(red, case)
        if not _same_rng(state, _rng_state()):
            msg = "reduce() used the global RNG; draw from ctx.generator only"
            raise _fail(red, msg, case)
        _, second = _run(red, case)
        for attr in ("features", "coords", "sizes"):
            x, y = getattr(first.tokens, attr), getattr(second.tokens, attr)
            if x.shape != y.shape or not torch.equal(x, y):
                raise _fail(red, f"two runs with one seed differ in {attr}", case)
        if not torch.equal(first.assignment, second.assignment):
            raise _fail(red, "two runs with one seed differ in assignment", case)
    return None


@check
def check_needs(red: TokenReducer, *, device: str, dtype: torch.dtype) -> str | None:
    """Check the declared needs are real and reported when missing.

    It works when the undeclared context fields are `None`; a missing declared need
    raises `ContractError` naming the need.
    """
    case = _mid_cases(device, dtype)[0]
    _run(red, case)  # only the declared needs are set, the rest are None
    for need in sorted(red.needs, key=lambda n: n.value):
        try:
            _run(red, case, omit=frozenset({need}))
        except ContractError as exc:
            if need.value not in str(exc).lower():
                msg = f"the ContractError for missing {need.value} does not name it"
                raise _fail(red, f"{msg}: {exc}", case) from None
            continue
        except Exception as exc:
            msg = (
                f"missing declared need {need.value} raised {type(exc).__name__} "
                f"instead of ContractError; use ctx.require(Need.{need.name}, "
                "self.name)"
            )
            raise _fail(red, msg, case) from exc
        msg = f"declares need {need.value} but ran without it (declare only real needs)"
        raise _fail(red, msg, case)
    return None


@check
def check_degenerate_grids(
    red: TokenReducer, *, device: str, dtype: torch.dtype
) -> str | None:
    """Check tiny, odd and non-square grids.

    It handles T=1, N=1, budget=1 and odd, non-square grids (7x5, 6x9) with a valid
    result.
    """
    from tokenred.tokens import validate_reduction

    specs = [
        ((1, 1, 1), 1),
        ((1, 3, 5), 1),
        ((1, 3, 5), 3),
        ((4, 7, 5), 1),
        ((2, 6, 9), 1),
        ((2, 6, 9), 107),
    ]
    for grid, budget in specs:
        case = make_case(grid, budget, device=device, dtype=dtype)
        tokens, out = _run(red, case)
        try:
            validate_reduction(tokens, out, budget, red.name)
        except ContractError as exc:
            raise _fail(red, str(exc), case) from None
    return None


@check
def check_budget_monotone(
    red: TokenReducer, *, device: str, dtype: torch.dtype
) -> str | None:
    """Check a larger budget never yields fewer tokens.

    A larger budget never yields fewer tokens.
    """
    for grid in GRIDS[1:]:
        n = grid[0] * grid[1] * grid[2]
        prev = 0
        for b in budgets_for(n):
            case = make_case(grid, b, device=device, dtype=dtype)
            k = _run(red, case)[1].n_out
            if k < prev:
                msg = f"returned {k} tokens, fewer than {prev} at a smaller budget"
                raise _fail(red, msg, case)
            prev = k
    return None


@check
def check_config(red: TokenReducer, *, device: str, dtype: torch.dtype) -> str | None:
    """Check the Config dataclass works as a structured config.

    `OmegaConf.structured(Config)` works, the defaults are valid, `name` defaults to
    the registry name, every field has help metadata, and an unknown key is
    rejected.
    """
    from tokenred.config import validate_config_class
    from tokenred.reducer import ReducerConfig

    # A reducer without options may share the base config; the framework always
    # passes its name explicitly.
    config_cls = type(red).Config
    try:
        validate_config_class(
            config_cls, name=None if config_cls is ReducerConfig else red.name
        )
    except TokenredError as exc:
        raise _fail(red, str(exc)) from None
    return None


@check
def check_metadata(red: TokenReducer, *, device: str, dtype: torch.dtype) -> str | None:
    """Check the declared metadata the docs and the CLI show.

    The name matches `^[a-z][a-z0-9_]*$`, the docstring has a summary line, `paper`
    is a URL, `reference` is set, `stages` is non-empty.
    """
    cls = type(red)
    problems = []
    if not isinstance(cls.name, str) or not NAME_RE.match(cls.name):
        problems.append(f"name {cls.name!r} must match {NAME_RE.pattern}")
    if not cls.description():
        problems.append("the class docstring needs a one-line summary")
    if not re.match(r"^https?://", cls.paper or ""):
        problems.append("paper must be the paper's URL")
    if not cls.reference:
        problems.append("reference must name the reference implementation")
    if not cls.stages or not all(isinstance(s, Stage) for s in cls.stages):
        problems.append("stages must be a non-empty frozenset of Stage")
    if not all(isinstance(n, Need) for n in cls.needs):
        problems.append("needs must hold Need members")
    if not isinstance(cls.position_policy, PositionPolicy):
        problems.append("position_policy must be a PositionPolicy")
    for flag in ("exact_budget", "query_agnostic"):
        if not isinstance(getattr(cls, flag), bool):
            problems.append(f"{flag} must be a bool")
    if problems:
        raise _fail(red, "; ".join(problems))
    return None


CHECKS: tuple[Check, ...] = (
    check_types,
    check_budget,
    check_finite,
    check_full_budget_identity,
    check_assignment,
    check_sizes_conserved,
    check_coords_within_sources,
    check_order,
    check_no_mutation,
    check_deterministic,
    check_needs,
    check_degenerate_grids,
    check_budget_monotone,
    check_config,
    check_metadata,
)
"""Every contract check, in the order they run."""
