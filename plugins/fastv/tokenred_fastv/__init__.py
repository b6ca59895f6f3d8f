"""tokenred plugin registering the ``fastv`` reducer (FastV attention pruning)."""

from __future__ import annotations

from typing import Any

from tokenred import hookimpl


@hookimpl
def register_reducers(register: Any) -> None:
    """Register :class:`~tokenred_fastv.reducer.FastVReducer`."""
    from tokenred_fastv.reducer import FastVReducer

    register(FastVReducer)
