"""Field reference tables generated from config dataclasses' ``metadata["help"]``.

Feeds ``docs/config.md`` (checked by a test), the reducer options that
``tokenred list reducers --json`` shows, and the CLI help. Reads dataclasses only; no
OmegaConf.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["FieldDoc", "describe_fields", "fields_table"]


@dataclass(frozen=True)
class FieldDoc:
    """One documented config key."""

    key: str
    type: str
    default: str
    help: str

    def as_dict(self) -> dict[str, str]:
        """Return the field as JSON-ready values."""
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return " | ".join(_type_name(a) for a in inner) + " | null"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return " | ".join(str(m.value) for m in tp)
    origin = typing.get_origin(tp)
    if origin is not None:
        params = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{params}]"
    return getattr(tp, "__name__", str(tp))


def _value(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def describe_fields(cls: type, prefix: str = "") -> list[FieldDoc]:
    """Return every key of a config dataclass, nested dataclasses flattened.

    Args:
        cls: A config dataclass, e.g. ``ExperimentConfig`` or ``STTMConfig``.
        prefix: Key prefix, e.g. ``"reducer."``.
    """
    hints = typing.get_type_hints(cls)
    rows: list[FieldDoc] = []
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        default = _default(f)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            rows += describe_fields(type(default), key + ".")
            continue
        shown = "required" if default is dataclasses.MISSING else _value(default)
        rows.append(FieldDoc(key, _type_name(tp), shown, f.metadata.get("help", "")))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def fields_table(cls: type, prefix: str = "") -> str:
    """Return a Markdown table of :func:`describe_fields`."""
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for row in describe_fields(cls, prefix):
        cells = (f"`{row.key}`", _cell(row.type), f"`{row.default}`", _cell(row.help))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def config_reference() -> str:
    """Return the generated part of ``docs/config.md``: one table per section."""
    from tokenred.schema import ExperimentConfig, StudyConfig

    out = ["### Top level\n", "| key | type | default | description |"]
    out.append("| --- | --- | --- | --- |")
    rows = [r for r in describe_fields(ExperimentConfig) if "." not in r.key]
    for row in rows:
        out.append(
            f"| `{row.key}` | {row.type} | `{row.default}` | {_cell(row.help)} |"
        )
    for f in dataclasses.fields(ExperimentConfig):
        default = _default(f)
        if not dataclasses.is_dataclass(default) or isinstance(default, type):
            continue
        cls = type(default)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        out.append(f"\n### `{f.name}`: {f.metadata.get('help', '')}\n")
        out.append(f"{summary} (`{cls.__module__}.{cls.__name__}`)\n")
        out.append(fields_table(cls, f.name + "."))
    out.append("\n### Study files\n")
    out.append(
        "A YAML file whose top-level keys are only `study`, `base` and `sweep` is a "
        "study (`tokenred.config.StudyConfig`).\n"
    )
    out.append(fields_table(StudyConfig))
    return "\n".join(out)
