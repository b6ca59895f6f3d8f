"""The public contract suite for token reducers.

Three ways to run it:

* ``tokenred check NAME`` runs it in-process and prints each check.
* Plugin test suites use the sklearn-style decorator::

      from tokenred.testing import parametrize_with_checks

      @parametrize_with_checks(["my_reducer"])
      def test_contract(reducer, check):
          check(reducer)

* :func:`check_reducer` returns one :class:`CheckResult` per check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tokenred.testing.cases import Case, make_context, make_tokens
from tokenred.testing.checks import CHECKS, Check, CheckFailure, ReducerLike
from tokenred.testing.host_reads import HostRead, record_host_reads

if TYPE_CHECKING:
    from tokenred.registry import Registries

__all__ = [
    "CHECKS",
    "Case",
    "CheckFailure",
    "CheckResult",
    "HostRead",
    "check_reducer",
    "check_rows",
    "checks_table",
    "make_context",
    "make_tokens",
    "parametrize_with_checks",
    "record_host_reads",
]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check on one reducer."""

    reducer: str
    check: str
    passed: bool
    message: str = ""
    """Why it failed, or a note such as "not applicable"."""

    def line(self) -> str:
        """Return ``PASS check_x`` or ``FAIL check_x: why``."""
        status = "PASS" if self.passed else "FAIL"
        return f"{status} {self.check}" + (f": {self.message}" if self.message else "")


def _installed_registries() -> Registries:
    from tokenred.plugins import get_plugin_manager
    from tokenred.registry import Registries

    return Registries.from_plugin_manager(get_plugin_manager())


def _resolve(
    reducers: Iterable[str | ReducerLike], registries: Registries | None
) -> list[ReducerLike]:
    out: list[ReducerLike] = []
    for item in reducers:
        if isinstance(item, str):
            registries = registries or _installed_registries()
            out.append(registries.reducers.get(item))
        else:
            out.append(item)
    return out


def _name(reducer: ReducerLike) -> str:
    return str(reducer.name)


def _label(reducer: ReducerLike) -> str:
    """Return the name, plus the non-default config fields of an instance."""
    if isinstance(reducer, type):
        return _name(reducer)
    defaults = type(reducer.config)()
    changed = [
        f"{f.name}={getattr(reducer.config, f.name)}"
        for f in dataclasses.fields(reducer.config)
        if f.name != "name"
        and getattr(reducer.config, f.name) != getattr(defaults, f.name)
    ]
    return _name(reducer) + (f"[{','.join(changed)}]" if changed else "")


def _select(checks: Sequence[Check] | None) -> Sequence[Check]:
    return CHECKS if checks is None else checks


def check_reducer(
    reducer: str | ReducerLike,
    *,
    registries: Registries | None = None,
    checks: Sequence[Check] | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[CheckResult]:
    """Run the contract suite on one reducer and collect the results.

    Args:
        reducer: A registered name, a :class:`~tokenred.TokenReducer` subclass or a
            configured instance.
        registries: Where names are looked up; default: every installed plugin.
        checks: A subset of :data:`CHECKS`.
        device: Device of the synthetic inputs.
        dtype: Dtype of the synthetic features.

    Raises:
        UnknownNameError: If a name is not registered.
    """
    (target,) = _resolve([reducer], registries)
    results = []
    for fn in _select(checks):
        try:
            note = fn(target, device=device, dtype=dtype)
        except CheckFailure as exc:
            results.append(CheckResult(_name(target), fn.__name__, False, str(exc)))
            continue
        except Exception as exc:  # a crash is a failed check, not a crashed suite
            msg = f"raised {type(exc).__name__}: {exc}"
            results.append(CheckResult(_name(target), fn.__name__, False, msg))
            continue
        results.append(CheckResult(_name(target), fn.__name__, True, note or ""))
    return results


def parametrize_with_checks(
    reducers: Iterable[str | ReducerLike],
    *,
    registries: Registries | None = None,
    checks: Sequence[Check] | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Return a ``pytest.mark.parametrize`` over (reducer, check) pairs.

    The decorated test receives ``reducer`` (a class or instance) and ``check`` (a
    callable taking the reducer); ids read ``<name>-<check>``.

    Args:
        reducers: Registered names, classes or configured instances.
        registries: Where names are looked up; default: every installed plugin.
        checks: A subset of :data:`CHECKS`.
        device: Device of the synthetic inputs.
        dtype: Dtype of the synthetic features.
    """
    import pytest

    targets = _resolve(reducers, registries)
    params = []
    for target in targets:
        for fn in _select(checks):
            bound = _bind(fn, device, dtype)
            params.append(
                pytest.param(target, bound, id=f"{_label(target)}-{fn.__name__}")
            )
    return pytest.mark.parametrize(("reducer", "check"), params)


def _bind(fn: Check, device: str, dtype: torch.dtype) -> Callable[[Any], str | None]:
    def bound(reducer: ReducerLike) -> str | None:
        return fn(reducer, device=device, dtype=dtype)

    bound.__name__ = fn.__name__
    bound.__doc__ = fn.__doc__
    return bound


def check_rows() -> list[tuple[str, str]]:
    """Return ``(check name, what it asserts)`` from each check's docstring."""
    rows = []
    for fn in CHECKS:
        paragraphs = (fn.__doc__ or "").strip().split("\n\n")
        body = paragraphs[1] if len(paragraphs) > 1 else paragraphs[0]
        rows.append((fn.__name__, " ".join(body.split())))
    return rows


def checks_table() -> str:
    """Return the Markdown table of the checks, for ``docs/plugins/contract.md``."""
    lines = ["| check | asserts |", "| --- | --- |"]
    lines += [f"| `{name}` | {text} |" for name, text in check_rows()]
    return "\n".join(lines) + "\n"
