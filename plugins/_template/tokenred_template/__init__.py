"""tokenred-template: a copy-me reducer plugin.

This module holds only the hook implementation; the reducer lives in ``reducer.py``.
The import stays lazy-free and cheap: tokenred imports this module when it loads
plugins, so keep heavy imports inside functions.
"""

from __future__ import annotations

from typing import Any

from tokenred import hookimpl


@hookimpl
def register_reducers(register: Any) -> None:
    """Register ``template_stride``."""
    from tokenred_template.reducer import StrideReducer

    register(StrideReducer)
