"""tokenred plugin registering the ``dycoke_ttm`` reducer (DyCoke stage 1)."""

from __future__ import annotations

from typing import Any

from tokenred import hookimpl


@hookimpl
def register_reducers(register: Any) -> None:
    """Register :class:`~tokenred_dycoke_ttm.reducer.DyCokeTTMReducer`."""
    from tokenred_dycoke_ttm.reducer import DyCokeTTMReducer

    register(DyCokeTTMReducer)
