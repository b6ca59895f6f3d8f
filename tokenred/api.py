"""The Python API for notebooks: ``tokenred.run(...)`` and ``tokenred.load_results``.

Both return :class:`Results`: one row (a plain dict) per run, the same summary the
``tokenred report`` tables show, and the same rows as a pandas DataFrame in
:attr:`Results.frame`. ``run`` takes what the CLI takes -- study files, the
shorthands and ``key=value`` overrides -- and goes through the same config loader,
plugins and runner, so a notebook result and a CLI result of one config share a run
store (and reuse each other's answers).

Nothing here prints: progress only when asked (``progress=True``), and the model
library's own weight-loading bar is switched off for the call unless asked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from tokenred.runner import RunOutcome

PathLike = str | Path


class Results(list[dict[str, Any]]):
    """One row per run (a list of dicts), unreduced baselines first.

    Each row carries the run's identity (``run_id``, ``model``, ``dataset``,
    ``reducer``, ``method``, ``budget``), its accuracy (``accuracy`` in %,
    ``acc_ci_low``/``acc_ci_high``), its costs (``kept_tokens``, ``kept_ratio``,
    ``eq_tokens``, ``flops_prefill``, ``flops_vision``, ``ttft_ms``, ...), the
    values relative to the unreduced run of the same model and dataset
    (``rel_accuracy``, ``rel_flops``, ...), and ``run_dir``, the run store's folder
    (for :func:`load_results` or ``tokenred report``). Missing values are None.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], frame: pd.DataFrame) -> None:
        super().__init__(rows)
        self.frame = frame
        """The same rows as a DataFrame (NaN for missing values)."""

    def to_pandas(self) -> pd.DataFrame:
        """Return :attr:`frame` (the rows as a DataFrame)."""
        return self.frame


def _budget_flag(budget: float | int | str | None) -> str | None:
    """Write ``budget`` as the CLI's ``--budget`` would receive it."""
    if budget is None or isinstance(budget, str):
        return budget
    if isinstance(budget, bool):
        msg = f"budget must be a fraction or a token count, got {budget!r}"
        raise TypeError(msg)
    return repr(budget) if isinstance(budget, float) else str(int(budget))


def run(
    config: PathLike | Sequence[PathLike] | None = None,
    *,
    reducer: str | None = None,
    budget: float | int | str | None = None,
    model: str | None = None,
    data: str | None = None,
    overrides: Sequence[str] = (),
    plugins: Sequence[object] = (),
    disable_plugins: Sequence[str] = (),
    progress: bool | Callable[[str, int], Any] = False,
) -> Results:
    """Run a study (or one reducer and its unreduced baseline) and return its rows.

    The inputs mirror ``tokenred run``: ``run("study.yaml")`` is ``tokenred run -c
    study.yaml``; ``run(reducer="sttm", budget=0.3, overrides=["data.limit=10"])`` is
    ``tokenred run --reducer sttm --budget 0.3 data.limit=10``. Finished samples are
    reused, as on the command line.

    Args:
        config: A study or experiment YAML file, or several merged in order.
        reducer: ``reducer.name``.
        budget: A fraction in (0, 1] (``budget.ratio``) or a token count
            (``budget.tokens``).
        model: ``model.name`` (an adapter name, checkpoint folder or id).
        data: ``data.name``.
        overrides: Dotted ``key=value`` overrides; they win over everything else.
        plugins: Extra plugin objects to register for this call.
        disable_plugins: Plugin names to skip, like ``--disable-plugin``.
        progress: True for a progress bar on stderr, or a factory ``(label,
            total) -> bar`` (``tqdm``-like); False (default) shows nothing.

    Returns:
        One row per run, the unreduced baseline first (see :class:`Results`).

    Raises:
        TokenredError: Bad configs, unknown names, incompatible parts, as the CLI.
    """
    from tokenred.config import load_study
    from tokenred.plugins import get_plugin_manager
    from tokenred.registry import Registries
    from tokenred.runner import run_study

    files = [] if config is None else _paths(config)
    pm = get_plugin_manager(block=disable_plugins, extra=plugins)
    registries = Registries.from_plugin_manager(pm)
    study = load_study(
        files,
        reducer=reducer,
        model=model,
        data=data,
        budget=_budget_flag(budget),
        overrides=list(overrides),
        registries=registries,
    )
    with quiet_model_loading(enabled=bool(progress)):
        outcomes = run_study(study, registries, pm, progress=_factory(progress))
    return _outcome_results(outcomes)


def load_results(path: PathLike | Sequence[PathLike]) -> Results:
    """Return the rows of finished run stores without running anything.

    Args:
        path: A study folder (``runs/<name>``, every run below it), one run folder,
            or several of either.

    Raises:
        UsageError: When no run store is found there.
    """
    from tokenred.report import find_run_dirs

    return _results(find_run_dirs(_paths(path)))


def _paths(value: PathLike | Sequence[PathLike]) -> list[str]:
    if isinstance(value, str | Path):
        return [str(value)]
    return [str(v) for v in value]


def _factory(progress: bool | Callable[[str, int], Any]) -> Any:
    if callable(progress):
        return progress
    if not progress:
        return None
    from tqdm.auto import tqdm

    def bar(label: str, total: int) -> Any:
        return tqdm(total=total, desc=label, unit="q", leave=False)

    return bar


@contextmanager
def quiet_model_loading(*, enabled: bool) -> Iterator[None]:
    """Switch the model library's weight-loading bars off unless ``enabled``.

    The CLI uses it off a terminal too: a carriage-return bar is noise in a log.
    """
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _outcome_results(outcomes: Sequence[RunOutcome]) -> Results:
    return _results([o.store.path for o in outcomes])


def _results(run_dirs: Sequence[Path]) -> Results:
    import pandas as pd

    from tokenred.report import load_runs, samples_frame, summary_frame

    runs = load_runs(run_dirs)
    samples = samples_frame(runs)
    frame = summary_frame(samples) if not samples.empty else pd.DataFrame()
    if not frame.empty:
        where = {str(r.manifest.get("run_id", r.path.name)): str(r.path) for r in runs}
        frame["run_dir"] = frame["run_id"].astype(str).map(where)
    rows = [
        {str(k): _plain(v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]
    return Results(rows, frame)


def _plain(value: Any) -> Any:
    """Return a JSON-like Python value: NaN becomes None, numpy scalars Python's."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | bytes):
        value = item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


__all__ = ["Results", "load_results", "quiet_model_loading", "run"]
