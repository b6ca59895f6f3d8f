"""Builtin model adapters, registered lazily: nothing imports transformers here.

``tiny`` is the embedded default (no download). The others load a local checkpoint
directory given as ``--model PATH`` or as ``model.name=<adapter> model.path=PATH``.
"""

from __future__ import annotations

from typing import Any

from tokenred.hookspecs import hookimpl


@hookimpl
def register_model_adapters(register: Any) -> None:
    """Register tiny, llava_onevision (alias llava_video), qwen2_vl, qwen2_5_vl, ..."""
    register("tiny", "tokenred.adapters.tiny:TinyAdapter")
    register(
        "llava_onevision",
        "tokenred.adapters.llava_onevision:LlavaOnevisionAdapter",
        aliases=("llava_video",),
    )
    register("qwen2_vl", "tokenred.adapters.qwen2_vl:Qwen2VLAdapter")
    register("qwen2_5_vl", "tokenred.adapters.qwen2_vl:Qwen25VLAdapter")
    register(
        "llava_next_video", "tokenred.adapters.llava_next_video:LlavaNextVideoAdapter"
    )
