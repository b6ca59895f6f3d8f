"""Builtin dataset plugin: the synthetic default and the six real benchmarks.

Every dataset registers lazily (``"name", "module:Class"``), so listing datasets
imports none of the loaders.
"""

from __future__ import annotations

from typing import Any

from tokenred.hookspecs import hookimpl

DATASETS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("synthetic", "tokenred.builtin.synthetic:SyntheticDataset", ()),
    ("videomme", "tokenred.datasets.videomme:VideoMME", ("video_mme",)),
    ("mlvu", "tokenred.datasets.mlvu:MLVU", ()),
    ("longvideobench", "tokenred.datasets.longvideobench:LongVideoBench", ("lvb",)),
    ("egoschema", "tokenred.datasets.egoschema:EgoSchema", ()),
    ("nextqa", "tokenred.datasets.nextqa:NExTQA", ("next_qa",)),
    ("vnbench", "tokenred.datasets.vnbench:VNBench", ()),
)
"""(name, "module:Class", aliases) of every builtin dataset."""


@hookimpl
def register_datasets(register: Any) -> None:
    """Register the builtin datasets lazily."""
    for name, target, aliases in DATASETS:
        register(name, target, aliases=aliases)
