"""tokenred-sttm: Spatio-Temporal Token Merging (STTM) as a tokenred reducer plugin."""

from __future__ import annotations

from typing import Any

from tokenred import hookimpl


@hookimpl
def register_reducers(register: Any) -> None:
    """Register the ``sttm`` reducer."""
    from tokenred_sttm.reducer import STTMReducer

    register(STTMReducer)
