"""The ``tokenred`` command: run, list, plugins, check and report.

:func:`main` works in-process (tests call it with ``argv``). It loads the plugins,
lets them add subcommands, and maps every :class:`~tokenred.errors.TokenredError` to
one ``error: ...`` line on stderr and the error's exit code. This is the only place
that configures logging.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokenred.errors import ExitCode, TokenredError
from tokenred.plugins import TokenredPluginManager, get_plugin_manager
from tokenred.registry import Entry, Registries

if TYPE_CHECKING:
    from tokenred.protocol import SampleProtocol
    from tokenred.runner import RunOutcome

log = logging.getLogger(__name__)

HELP_WIDTH = 88
EPILOG = """\
examples:
  tokenred list reducers                       installed reducers and what they need
  tokenred run --reducer sttm --budget 0.3 --dry-run
                                               print the resolved config, run nothing
  tokenred run --reducer random --budget 64 data.limit=10
  tokenred run -c experiments/main_table.yaml  every run of a study (its sweep)
  tokenred check my_reducer                    run the contract suite on a reducer
  tokenred report runs/main_table --out reports/main_table
  tokenred --disable-plugin sttm plugins       list plugins with one disabled
"""
LIST_KINDS = ("reducers", "models", "datasets")
TIMED_COMMANDS = frozenset({"run", "calibrate", "report", "convert"})
"""Commands that end with an ``elapsed ...`` line on stderr (the quick listings and
``run --dry-run`` print only their answer)."""


def _formatter(prog: str) -> argparse.HelpFormatter:
    # A fixed width keeps the help identical on every terminal (docs/cli.md).
    return argparse.RawDescriptionHelpFormatter(prog, width=HELP_WIDTH)


@dataclass
class Session:
    """What one ``tokenred`` invocation shares between its commands."""

    pm: TokenredPluginManager
    _registries: Registries | None = field(default=None, repr=False)

    @property
    def registries(self) -> Registries:
        """Build the registries on first use (calls the plugins' register hooks)."""
        if self._registries is None:
            self._registries = Registries.from_plugin_manager(self.pm)
        return self._registries


Handler = Callable[[argparse.Namespace], int]


def _global_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Add the global flags; subcommand copies leave unset values alone."""
    group = parser.add_argument_group("global options")

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group.add_argument(
        "--disable-plugin",
        action="append",
        metavar="NAME",
        default=default([]),
        help="skip a plugin by name (repeatable; also TOKENRED_DISABLE_PLUGINS=a,b)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="more log output (-vv for debug)",
    )
    group.add_argument(
        "--traceback",
        action="store_true",
        default=default(False),
        help="show the full traceback of errors",
    )


def build_parser(session: Session) -> argparse.ArgumentParser:
    """Build the parser with the builtin commands and those of plugins."""
    from tokenred import __version__

    parser = argparse.ArgumentParser(
        prog="tokenred",
        description="Compare visual-token reducers for video LLMs on equal terms.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    _global_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    add = functools.partial(_add_command, sub)
    _run_command(add("run", "run experiments (or print them with --dry-run)"), session)
    _list_command(add("list", "list registered reducers, models or datasets"), session)
    _plugins_command(add("plugins", "list loaded and failed plugins"), session)
    _check_command(add("check", "run the reducer contract suite"), session)
    _report_command(add("report", "tables and figures from run stores"))
    _calibrate_command(
        add("calibrate", "fit a reducer's thresholds to an average budget"), session
    )
    _convert_command(
        add("convert", "convert an original-format LLaVA checkpoint to HF format")
    )
    session.pm.hook.register_commands(subparsers=sub)
    return parser


def _add_command(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, formatter_class=_formatter
    )
    _global_flags(parser, suppress=True)
    return parser


def _run_command(p: argparse.ArgumentParser, session: Session) -> None:
    _config_arguments(p)
    ex = p.add_argument_group("execution")
    ex.add_argument(
        "--dry-run",
        action="store_true",
        help="print every resolved config as YAML and exit",
    )
    p.set_defaults(func=functools.partial(_cmd_run, session))


def _calibrate_command(p: argparse.ArgumentParser, session: Session) -> None:
    _config_arguments(p)
    p.add_argument(
        "--videos",
        type=int,
        default=16,
        metavar="N",
        help="calibrate on the first N distinct videos of the selected samples",
    )
    p.set_defaults(func=functools.partial(_cmd_calibrate, session))


def _config_arguments(p: argparse.ArgumentParser) -> None:
    cfg = p.add_argument_group("configuration (later wins: files < flags < KEY=VALUE)")
    cfg.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="experiment or study YAML (repeatable, merged in order)",
    )
    cfg.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. reducer.name=random data.limit=10",
    )
    short = p.add_argument_group("shorthands")
    short.add_argument("--reducer", metavar="NAME", help="reducer.name")
    short.add_argument("--model", metavar="NAME", help="model.name")
    short.add_argument("--data", metavar="NAME", help="data.name")
    short.add_argument(
        "--budget",
        metavar="B",
        help="a fraction in (0, 1] sets budget.ratio; an integer sets budget.tokens",
    )


def _list_command(p: argparse.ArgumentParser, session: Session) -> None:
    p.add_argument("kind", choices=LIST_KINDS, help="what to list")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=functools.partial(_cmd_list, session))


def _plugins_command(p: argparse.ArgumentParser, session: Session) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=functools.partial(_cmd_plugins, session))


def _check_command(p: argparse.ArgumentParser, session: Session) -> None:
    p.add_argument("name", metavar="NAME", help="registered reducer name")
    p.add_argument("--device", default="cpu", help="device of the synthetic inputs")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the synthetic features",
    )
    p.set_defaults(func=functools.partial(_cmd_check, session))


def _report_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run store(s)")
    p.add_argument(
        "--out", metavar="DIR", help="output directory (default: RUN_DIR/../report)"
    )
    p.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw acc_vs_ttft (default: only when every timed run was timed on a "
        "GPU; CPU timings stay in the tables, FLOPs are the cost axis)",
    )
    p.set_defaults(func=_cmd_report)


def _convert_command(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="original LLaVA-OneVision/Video checkpoint (LlavaQwenForCausalLM): a "
        "directory or a cached Hugging Face id, e.g. lmms-lab/LLaVA-Video-7B-Qwen2",
    )
    p.add_argument(
        "output", metavar="OUT_DIR", help="new HF-format checkpoint directory"
    )
    p.set_defaults(func=_cmd_convert)


# --------------------------------------------------------------------------- commands
def _config_sources(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    """Return the shorthand flags and overrides as config-loader keywords."""
    return {
        "reducer": args.reducer,
        "model": args.model,
        "data": args.data,
        "budget": args.budget,
        "overrides": args.overrides,
        "registries": session.registries,
    }


def _cmd_run(session: Session, args: argparse.Namespace) -> int:
    from tokenred.config import load_study, to_yaml

    study = load_study(args.config, **_config_sources(session, args))
    if args.dry_run:
        total = len(study.experiments)
        for i, (cfg, point) in enumerate(zip(study.experiments, study.points), 1):
            if i > 1:
                print("---")
            swept = " ".join(f"{k}={v}" for k, v in point.items())
            print(f"# run {i}/{total}" + (f": {swept}" if swept else ""))
            print(to_yaml(cfg), end="")
        return int(ExitCode.OK)
    from tokenred.api import quiet_model_loading
    from tokenred.distributed import World
    from tokenred.runner import run_study

    world = World.current()  # torchrun/accelerate ranks: only rank 0 reports
    if not world.is_main:
        logging.getLogger("tokenred").setLevel(logging.WARNING)
    try:
        bar, announce = (_bar, _print_header) if world.is_main else (None, None)
        with quiet_model_loading(enabled=_isatty(sys.stderr)):
            outcomes = run_study(
                study, session.registries, session.pm, progress=bar, announce=announce
            )
    finally:
        world.close()
    if not world.is_main:
        return int(ExitCode.OK)
    return _print_outcomes(outcomes)


def _print_header(protocol: SampleProtocol) -> None:
    """Print one run's header line: what will run, under which controls.

    The runner calls it for every run of the study once all have passed preflight
    (so an impossible point fails alone, before any header), with the same
    resolved insertion point, policy and budget unit the manifests will store.
    """
    from tokenred.controls import header_line

    print(header_line(protocol.cfg, protocol.controls()), file=sys.stderr)


def _bar(label: str, total: int) -> Any:
    """Progress on stderr: a tqdm bar on a terminal, plain lines in logs."""
    if not _isatty(sys.stderr):  # CI, tee, Slurm: whole lines every few seconds
        from tokenred.progress import LineProgress

        return LineProgress(label, total, _log_line)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="q", leave=False)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _log_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_outcomes(outcomes: Sequence[RunOutcome]) -> int:
    """Print each run's status line (stderr) and the summary table (stdout).

    Returns:
        0 when every sample produced an answer, 1 when some samples errored.
    """
    from tokenred.report import summary_table

    errors = 0
    for out in outcomes:
        status = f"{out.new_records} new, {out.reused} reused" + (
            f", {out.errors} errors" if out.errors else ""
        )
        print(f"run {out.store.path}: {status}", file=sys.stderr)
        errors += sum(1 for r in out.store.records() if r.status != "ok")
    print(summary_table([o.store for o in outcomes]), end="")
    if any((o.store.read_manifest() or {}).get("random_weights") for o in outcomes):
        print(
            "note: the model has RANDOM weights (no trained checkpoint); accuracy "
            "is meaningless, costs are real"
        )
    return int(ExitCode.RUN_FAILED if errors else ExitCode.OK)


def _origin(entry: Entry[Any]) -> dict[str, Any]:
    return {
        "plugin": entry.plugin,
        "distribution": entry.dist,
        "version": entry.version,
        "aliases": list(entry.aliases),
    }


def _reducer_row(entry: Entry[Any]) -> dict[str, Any]:
    from tokenred._configdoc import describe_fields

    cls = entry.load()
    row: dict[str, Any] = {**cls.metadata(), **_origin(entry)}
    row["options"] = [
        f.as_dict()
        for f in describe_fields(cls.Config, "reducer.")
        if f.key != "reducer.name"
    ]
    return row


def _class_row(entry: Entry[Any], attrs: Sequence[str]) -> dict[str, Any]:
    cls = entry.load()
    doc = (cls.__doc__ or "").strip()
    row: dict[str, Any] = {"name": entry.name}
    row["description"] = doc.splitlines()[0] if doc else ""
    for attr in attrs:
        value = getattr(cls, attr, None)
        if isinstance(value, frozenset | set):
            value = sorted(getattr(v, "value", v) for v in value)
        elif isinstance(value, tuple):
            value = list(value)
        row[attr] = value
    return {**row, **_origin(entry)}


def _rows(session: Session, kind: str) -> list[dict[str, Any]]:
    regs = session.registries
    rows = []
    for entry in getattr(regs, kind):
        try:
            if kind == "reducers":
                rows.append(_reducer_row(entry))
            elif kind == "models":
                row = _class_row(
                    entry,
                    ("stages", "rope", "default_stage", "default_layer",
                     "default_positions", "checkpoints"),
                )  # fmt: skip
                row["defaults"] = _defaults(row)
                rows.append(row)
            else:
                rows.append(_class_row(entry, ("homepage",)))
        except TokenredError as exc:
            rows.append({"name": entry.name, "error": str(exc), **_origin(entry)})
    return rows


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _where(row: dict[str, Any]) -> str:
    dist = row.get("distribution")
    return f"{dist} {row.get('version')}" if dist else str(row.get("plugin"))


def _cmd_list(session: Session, args: argparse.Namespace) -> int:
    rows = _rows(session, args.kind)
    if args.json:
        print(json.dumps(rows, indent=2))
        return int(ExitCode.OK)
    if not rows:
        print(f"no {args.kind} registered")
        return int(ExitCode.OK)
    if args.kind == "reducers":
        head = ["NAME", "STAGES", "NEEDS", "EXACT", "QUERY-AGN.", "PREF. POSITIONS"]
        keys = ["stages", "needs", "exact_budget", "query_agnostic", "position_policy"]
    elif args.kind == "models":
        head = ["NAME", "STAGES", "ROPE", "DEFAULT INSERTION", "CHECKPOINTS"]
        keys = ["stages", "rope", "defaults", "checkpoints"]
    else:
        head, keys = ["NAME", "HOMEPAGE"], ["homepage"]
    table = [[*head, "FROM", "DESCRIPTION"]]
    for row in rows:
        if "error" in row:
            table.append([row["name"], *["?"] * len(keys), _where(row), row["error"]])
            continue
        cells = [_cell(row.get(k)) for k in keys]
        table.append([row["name"], *cells, _where(row), row["description"]])
    print(_table(table))
    return int(ExitCode.OK)


def _defaults(row: dict[str, Any]) -> str:
    """``in_llm K=2, reassign``: a model family's default controls."""
    stage = getattr(row.get("default_stage"), "value", row.get("default_stage"))
    where = f"in_llm K={row.get('default_layer')}" if stage == "in_llm" else stage
    policy = getattr(row.get("default_positions"), "value", "?")
    return f"{where}, {policy}"


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


def _cmd_plugins(session: Session, args: argparse.Namespace) -> int:
    _ = session.registries  # registration failures count as failed plugins
    rows = session.pm.plugin_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return int(ExitCode.OK)
    table = [["NAME", "STATUS", "DISTRIBUTION", "HOOKS / ERROR"]]
    for r in rows:
        dist = f"{r['distribution']} {r['version']}" if r["distribution"] else "-"
        detail = r["error"] if r["status"] == "failed" else ",".join(r["hooks"])
        table.append([r["name"], r["status"].upper(), dist, detail or "-"])
    print(_table(table))
    return int(ExitCode.OK)


def _cmd_check(session: Session, args: argparse.Namespace) -> int:
    import torch

    from tokenred.testing import check_reducer

    entry = session.registries.reducers.entry(args.name)
    print(f"contract suite for reducer '{entry.name}' from {entry.origin()}")
    results = check_reducer(
        entry.load(), device=args.device, dtype=getattr(torch, args.dtype)
    )
    for result in results:
        print(result.line())
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return int(ExitCode.RUN_FAILED if failed else ExitCode.OK)


def _cmd_calibrate(session: Session, args: argparse.Namespace) -> int:
    from tokenred.calibration import calibrate_reducer
    from tokenred.config import load_config

    cfg = load_config(args.config, **_config_sources(session, args))
    overrides, info = calibrate_reducer(cfg, session.registries, videos=args.videos)
    print(
        f"# {cfg.reducer.name} calibrated on {int(info.get('videos', 0))} videos "
        f"for an average kept ratio <= {cfg.budget.ratio}"
    )
    for key, value in info.items():
        print(f"#   {key}: {value:.6g}")
    print(" ".join(f"reducer.{k}={v}" for k, v in overrides.items()))
    return int(ExitCode.OK)


def _cmd_report(args: argparse.Namespace) -> int:
    from tokenred.report import main_report

    out = main_report(args.run_dirs, args.out, latency=args.latency)
    print(f"report written to {out}")
    return int(ExitCode.OK)


def _cmd_convert(args: argparse.Namespace) -> int:
    from tokenred.convert import convert_llava_original

    result = convert_llava_original(args.source, args.output)
    for note in result.notes:
        print(f"note: {note}")
    out = result.output
    print(f"wrote {result.tensors} tensors to {out}; use --model {out}")
    return int(ExitCode.OK)


# ------------------------------------------------------------------------------ main
class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _pre_parse(argv: Sequence[str]) -> argparse.Namespace:
    """Read the global flags wherever they are, before plugins load."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _global_flags(pre, suppress=False)
    known, _ = pre.parse_known_args(list(argv))
    return known


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    args, extra = parser.parse_known_args(list(argv))
    # KEY=VALUE overrides may follow options; argparse leaves those in `extra`.
    if getattr(args, "command", None) == "run":
        items = [e for e in extra if "=" in e and not e.startswith("-")]
        args.overrides = [*args.overrides, *items]
        extra = [e for e in extra if e not in items]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None, plugins: Sequence[object] = ()) -> int:
    """Run the ``tokenred`` command and return its exit code.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.
        plugins: Extra plugin objects to register (tests, embedding).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = _pre_parse(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("tokenred")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel([logging.WARNING, logging.INFO][min(flags.verbose, 1)])
    if flags.verbose >= 2:
        root.setLevel(logging.DEBUG)
    try:
        code = _main(argv, flags, plugins)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else int(ExitCode.USAGE_ERROR)
    except TokenredError as exc:
        if flags.traceback:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tokenred list reducers | head -1`: the reader left
        _silence_stdout()
        return int(ExitCode.OK)
    except Exception as exc:
        if flags.traceback:
            traceback.print_exc()
        hint = "" if flags.traceback else " (rerun with --traceback for details)"
        print(f"internal error: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return int(ExitCode.INTERNAL_ERROR)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again.

    Without this, Python reports the closed pipe a second time at exit ("Exception
    ignored ... BrokenPipeError") and exits with 120.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # captured stdout (tests)
        pass


def _main(argv: list[str], flags: argparse.Namespace, plugins: Sequence[object]) -> int:
    pm = get_plugin_manager(block=flags.disable_plugin, extra=plugins)
    session = Session(pm)
    parser = build_parser(session)
    args = _parse(parser, argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return int(ExitCode.USAGE_ERROR)
    if args.command not in TIMED_COMMANDS or getattr(args, "dry_run", False):
        return int(func(args))
    from tokenred.progress import format_duration

    start = time.monotonic()
    code = int(func(args))
    # After a command that ran (errored samples included); a raised user error
    # stays the one ``error: ...`` line. Flushing first keeps the summary above it
    # in a ``2>&1`` log.
    sys.stdout.flush()
    _log_line(f"elapsed {format_duration(time.monotonic() - start)}")
    return code


def help_markdown() -> str:
    """Return ``docs/cli.md``'s generated part: the help of every builtin command."""
    pm = get_plugin_manager(autoload=False)
    parser = build_parser(Session(pm))
    sections = [("tokenred", parser.format_help())]
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in subs[0].choices.items():
        sections.append((f"tokenred {name}", sub.format_help()))
    return "\n".join(
        f"## `{title}`\n\n```text\n{text}```\n" for title, text in sections
    )
