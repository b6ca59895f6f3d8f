"""Train the embedded ``tiny`` model on the synthetic benchmark's training split.

Deterministic (seeded, single process, fixed threads) and CPU-sized: the default
run takes about 20 minutes on 2 cores and writes ``model.safetensors`` and
``training_log.json`` into ``tokenred/assets/tiny/``; the logic is in the
``demo_model`` package next to this script. See docs/demo-model.md.

    python experiments/train_tiny.py                 # the committed model
    python experiments/train_tiny.py --steps 3 --train-videos 8 --val-videos 4 \
        --out /tmp/tiny                               # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields
from typing import Any

from tqdm import tqdm

from demo_model.training import TrainConfig, train


def parse(argv: list[str] | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from the command line (one flag per field)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        value = getattr(defaults, f.name)
        kind: Any = type(value) if value is not None else str
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=value,
            help=f"default: {value}",
        )
    try:
        return TrainConfig(**vars(parser.parse_args(argv)))
    except ValueError as err:  # a malformed --tasks or --task-weights
        parser.error(str(err))


def main(argv: list[str] | None = None) -> None:
    """Train and print the final held-out accuracy."""
    logging.basicConfig(level=logging.WARNING)
    cfg = parse(argv)
    result = train(
        cfg,
        progress=lambda n: tqdm(total=n, desc="train tiny", unit="step"),
        echo=tqdm.write,
    )
    final = result["evals"][-1] if result["evals"] else {}
    print(json.dumps({"train_seconds": result["train_seconds"], **final}))


if __name__ == "__main__":
    main()
