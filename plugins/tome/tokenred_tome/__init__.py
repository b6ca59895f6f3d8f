"""tokenred plugin registering the ``tome`` reducer (ToMe for video tokens)."""

from __future__ import annotations

from typing import Any

from tokenred import hookimpl


@hookimpl
def register_reducers(register: Any) -> None:
    """Register :class:`~tokenred_tome.reducer.ToMeReducer`."""
    from tokenred_tome.reducer import ToMeReducer

    register(ToMeReducer)
