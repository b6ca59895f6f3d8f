"""tokenred plugin registering the ``pool`` reducer (uniform average pooling)."""

from __future__ import annotations

from typing import Any

from tokenred import hookimpl


@hookimpl
def register_reducers(register: Any) -> None:
    """Register :class:`~tokenred_pool.reducer.PoolReducer`."""
    from tokenred_pool.reducer import PoolReducer

    register(PoolReducer)
