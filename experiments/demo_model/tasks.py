"""Which training questions an epoch draws: task lists and per-task weights.

Parsed when the :class:`~demo_model.training.TrainConfig` is built, so a typo in
``--tasks`` or ``--task-weights`` fails in one line before any data is generated.
"""

from __future__ import annotations

import numpy as np

from tokenred.builtin.synthetic_render import OPTIONS
from tokenred.data import Sample


def task_names(tasks: str, option: str = "tasks") -> set[str]:
    """Parse a comma list of synthetic task names ("" = none listed).

    Raises:
        ValueError: A name that is not a synthetic task (one line, listing them).
    """
    names = {t.strip() for t in tasks.split(",") if t.strip()}
    unknown = sorted(names - set(OPTIONS))
    if unknown:
        msg = (
            f"{option}: unknown task {unknown[0]!r}; "
            f"the synthetic tasks are {', '.join(OPTIONS)}"
        )
        raise ValueError(msg)
    return names


def task_weights(weights: str) -> dict[str, int]:
    """Parse ``task=k`` comma items (integer ``k >= 1``) into a weight per task.

    Raises:
        ValueError: A malformed item or an unknown task name (one line).
    """
    repeat: dict[str, int] = {}
    for item in (w for w in weights.split(",") if w.strip()):
        name, _, k = (part.strip() for part in item.partition("="))
        if not name or not k.isdigit() or int(k) < 1:
            msg = f"task_weights: {item!r} must be task=k with an integer k >= 1"
            raise ValueError(msg)
        task_names(name, "task_weights")  # rejects an unknown task
        repeat[name] = int(k)
    return repeat


def epoch_indices(tasks: str, weights: str, samples: list[Sample]) -> np.ndarray:
    """Training-sample indices of one epoch, each repeated by its task's weight.

    Args:
        tasks: Comma list of the task names to train on (all if "").
        weights: Comma list of ``task=k`` (:func:`task_weights`); a task not listed
            has weight 1. A sample of weight ``k`` is drawn ``k`` times per epoch, so
            the slow-to-learn direction and count questions get more of the updates.
        samples: The training split.
    """
    wanted = task_names(tasks)
    repeat = task_weights(weights)
    idx = [
        i
        for i, s in enumerate(samples)
        for _ in range(repeat.get(str(s.meta["task"]), 1))
        if not wanted or s.meta["task"] in wanted
    ]
    return np.array(idx, dtype=np.int64)
