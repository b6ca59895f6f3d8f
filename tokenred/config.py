"""Config loading with OmegaConf: "select, then validate".

This is the only module that imports omegaconf; everything else receives the plain,
typed dataclasses of :mod:`tokenred.schema` (re-exported here). Loading works in two
passes so that plugin configs are typed too:

1. The YAML files, shorthand flags and ``key=value`` overrides are read untyped,
   only to find ``reducer.name``, ``model.name`` and ``data.name``.
2. Those names are looked up in the registries, and the schema is built from the
   registered ``Config`` classes. The sources are merged onto it in precedence
   order (defaults < files < sweep point < flags < overrides) and converted to
   dataclasses, whose ``__post_init__`` does cross-field validation.

``budget.ratio``, ``budget.tokens`` and ``budget.flops`` are alternatives: a source
that sets one clears the others, so ``--budget 64`` overrides a file's
``budget: {ratio: 0.3}``.
Likewise a source that selects another reducer (model, dataset) drops the options
earlier sources gave the previous one, as Hydra's config groups do.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import itertools
import logging
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from tokenred.adapter import resolve_model_name
from tokenred.errors import ConfigError, TokenredError
from tokenred.plan import BUDGET_KEYS
from tokenred.schema import (
    SELECTORS,
    STUDY_KEYS,
    AdapterConfig,
    BudgetConfig,
    DataConfig,
    ExperimentConfig,
    InsertionConfig,
    MeasureConfig,
    OutputConfig,
    ReducerConfig,
    Study,
    StudyConfig,
    check_budget,
    parse_budget,
    to_dict,
)

if TYPE_CHECKING:
    from tokenred.registry import Entry, Registries

__all__ = [
    "BudgetConfig",
    "ExperimentConfig",
    "InsertionConfig",
    "MeasureConfig",
    "OutputConfig",
    "Study",
    "StudyConfig",
    "check_budget",
    "load_config",
    "load_study",
    "parse_budget",
    "to_dict",
    "to_yaml",
    "validate_config_class",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Layer:
    source: str
    data: dict[str, Any]


# --------------------------------------------------------------------------- sources
def _normalize(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Expand shorthands: ``reducer: sttm`` and ``budget: 0.3``."""
    out = dict(data)
    for section in SELECTORS:
        if isinstance(out.get(section), str):
            out[section] = {"name": out[section]}
    budget = out.get("budget")
    if budget is not None and not isinstance(budget, Mapping):
        out["budget"] = parse_budget(budget)
    elif isinstance(budget, Mapping):
        budget = dict(budget)
        # A source that sets one alternative clears the others.
        if any(budget.get(key) is not None for key in BUDGET_KEYS):
            for key in BUDGET_KEYS:
                budget.setdefault(key, None)
        out["budget"] = budget
    return out


def _nest(key: str, value: Any) -> dict[str, Any]:
    """``("a.b", 1)`` -> ``{"a": {"b": 1}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return typing.cast("dict[str, Any]", value)


def _deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _flat_keys(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys |= _flat_keys(value, path + ".")
        else:
            keys.add(path)
    return keys


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        yamls = sorted(x.name for x in p.glob("*.y*ml"))[:5]
        hint = f", e.g. {p / yamls[0]}" if yamls else ""
        msg = f"config file '{p}' is a directory; give a YAML file{hint}"
        raise ConfigError(msg)
    if not p.is_file():
        msg = f"config file '{p}' not found"
        raise ConfigError(msg)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        msg = (
            f"config file '{p}' is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        )
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = f"config file '{p}' cannot be read: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        msg = (
            f"config file '{p}' is empty; give experiment keys (e.g. reducer: random) "
            "or a study (study:, base:, sweep:), or leave out -c to run the defaults"
        )
        raise ConfigError(msg)
    try:
        # OmegaConf's loader (not yaml.safe_load) reads 1e-3 as a float.
        loaded = OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        msg = f"config file '{p}' is not valid YAML: {first}"
        raise ConfigError(msg) from None
    except (OSError, OmegaConfBaseException):  # a single scalar value
        loaded = None
    if not OmegaConf.is_dict(loaded):
        kind = "a list" if OmegaConf.is_list(loaded) else "a single value"
        msg = f"config file '{p}' must hold a mapping of keys, not {kind}"
        raise ConfigError(msg)
    data = OmegaConf.to_container(loaded, resolve=False)
    return typing.cast("dict[str, Any]", data)


def _experiment_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(ExperimentConfig)]


def _read_study(data: dict[str, Any], source: str) -> StudyConfig:
    extra = sorted(set(data) - STUDY_KEYS)
    study_keys = ", ".join(sorted(STUDY_KEYS))
    unknown = [k for k in extra if k not in _experiment_keys()]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), sorted(STUDY_KEYS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        msg = (
            f"{source}: unknown top-level key '{key}' in a study file.{hint} A study "
            f"file has the keys {study_keys}; experiment keys go under base:"
        )
        raise ConfigError(msg)
    if extra:
        msg = (
            f"{source}: experiment key(s) {', '.join(extra)} at the top level of a "
            f"study file (keys {study_keys}); move them under base:"
        )
        raise ConfigError(msg)
    _check_sweep_shape(data.get("sweep"), source)
    schema = OmegaConf.structured(StudyConfig)
    try:
        merged = OmegaConf.merge(schema, data)
        study = typing.cast("StudyConfig", OmegaConf.to_object(merged))
    except OmegaConfBaseException as exc:
        raise _translate(exc, StudyConfig(), source) from None
    for key, values in study.sweep.items():
        if not values:
            msg = f"{source}: sweep.{key} is an empty list; give at least one value"
            raise ConfigError(msg)
    return study


def _check_sweep_shape(sweep: Any, source: str) -> None:
    """A sweep maps dotted keys to lists; say so instead of OmegaConf's type names."""
    if sweep is None:
        return
    if not isinstance(sweep, Mapping):
        msg = (
            f"{source}: sweep must map config keys to lists of values, e.g. "
            f"sweep: {{budget.ratio: [0.1, 0.3]}}; got {sweep!r}"
        )
        raise ConfigError(msg)
    for key, values in sweep.items():
        if not isinstance(values, list):
            msg = (
                f"{source}: sweep.{key} must be a list of values, e.g. "
                f"{key}: [{values!r}]; got {values!r}"
            )
            raise ConfigError(msg)


def _file_layers(
    files: Sequence[str | Path],
) -> tuple[list[_Layer], dict[str, list[Any]]]:
    layers: list[_Layer] = []
    sweep: dict[str, list[Any]] = {}
    for path in files:
        source = f"file {path}"
        data = _read_yaml(path)
        if set(data) & STUDY_KEYS:
            study = _read_study(data, source)
            if study.study:
                layers.append(_Layer(source, {"name": study.study}))
            layers.append(_Layer(source, _normalize(study.base, source)))
            sweep.update(study.sweep)
        else:
            layers.append(_Layer(source, _normalize(data, source)))
    return layers, sweep


def _override_layer(overrides: Sequence[str]) -> _Layer:
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            msg = f"override '{item}' is not key=value, e.g. reducer.name=random"
            raise ConfigError(msg)
    data = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    data = typing.cast("dict[str, Any]", data)
    return _Layer("command-line override", _normalize(data, "command line"))


def _flag_layer(
    reducer: str | None, model: str | None, data: str | None, budget: str | None
) -> _Layer:
    out: dict[str, Any] = {}
    for section, value in (("reducer", reducer), ("model", model), ("data", data)):
        if value is not None:
            out[section] = {"name": value}
    if budget is not None:
        out["budget"] = parse_budget(budget)
    return _Layer("command-line flag", out)


# ------------------------------------------------------------------------- resolving
def _selected(merged: Mapping[str, Any], section: str, default: str) -> str:
    value = merged.get(section, {}).get("name", default)
    if not isinstance(value, str) or not value:
        msg = f"config key '{section}.name' must be a registered name, got {value!r}"
        raise ConfigError(msg)
    return value


def _config_instance(entry: Entry[Any], base: type, kind: str) -> Any:
    """Instantiate the registered class's Config with its registry name."""
    cls = entry.load()
    config_cls: Any = getattr(cls, "Config", base)
    is_config = isinstance(config_cls, type) and issubclass(config_cls, base)
    if not (is_config and dataclasses.is_dataclass(config_cls)):
        msg = (
            f"{kind} '{entry.name}' from plugin {entry.origin()}: Config must be a "
            f"dataclass subclass of {base.__name__}"
        )
        raise ConfigError(msg)
    try:
        return typing.cast("Any", config_cls)(name=entry.name)
    except (TypeError, ValueError) as exc:
        msg = (
            f"{kind} '{entry.name}' from plugin {entry.origin()}: its Config defaults "
            f"are invalid: {exc}"
        )
        raise ConfigError(msg) from None


def _reset_on_switch(layers: Sequence[_Layer]) -> list[_Layer]:
    """Drop a section's earlier settings when a later source selects another name.

    Like Hydra's config groups: ``-c sttm.yaml --reducer tome`` runs ToMe with its
    defaults instead of failing on STTM's keys.
    """
    out: list[_Layer] = []
    current: dict[str, Any] = {}
    for layer in layers:
        for section in SELECTORS:
            value = layer.data.get(section)
            name = value.get("name") if isinstance(value, Mapping) else None
            if name is not None and name != current.get(section):
                current[section] = name
                out = [
                    _Layer(o.source, {k: v for k, v in o.data.items() if k != section})
                    for o in out
                ]
        out.append(layer)
    return out


def _resolve(layers: Sequence[_Layer], registries: Registries) -> ExperimentConfig:
    layers = _reset_on_switch(layers)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _deep_merge(merged, layer.data)
    # model.name may be a checkpoint directory: its config.json picks the adapter.
    model_name = _selected(merged, "model", AdapterConfig().name)
    model_key, model_path = resolve_model_name(registries.models, model_name)
    entries = {
        "reducer": registries.reducers.entry(
            _selected(merged, "reducer", ReducerConfig().name)
        ),
        "model": registries.models.entry(model_key),
        "data": registries.datasets.entry(_selected(merged, "data", DataConfig().name)),
    }
    template = ExperimentConfig(
        reducer=_config_instance(entries["reducer"], ReducerConfig, "reducer"),
        model=_config_instance(entries["model"], AdapterConfig, "model"),
        data=_config_instance(entries["data"], DataConfig, "dataset"),
    )
    cfg = OmegaConf.structured(template)
    for layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer.data)
        except OmegaConfBaseException as exc:
            raise _translate(exc, template, layer.source) from None
    for section, entry in entries.items():
        cfg[section].name = entry.name  # aliases -> the registry key
    if model_path is not None:
        cfg.model.path = model_path
    try:
        return typing.cast("ExperimentConfig", OmegaConf.to_object(cfg))
    except OmegaConfBaseException as exc:
        raise _translate(exc, template, "the merged config") from None
    except TokenredError:
        raise
    except (TypeError, ValueError) as exc:
        msg = f"invalid config: {exc}"
        raise ConfigError(msg) from None


def _walk(root: Any, path: str) -> Any:
    node = root
    for part in [p for p in path.split(".") if p]:
        node = getattr(node, part, None)
    return node


def _field_type(root: Any, key: str) -> Any:
    parent_path, _, leaf = key.rpartition(".")
    parent = _walk(root, parent_path)
    if not dataclasses.is_dataclass(parent):
        return None
    hints = typing.get_type_hints(type(parent))
    hint = hints.get(leaf)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 else hint


def _expected(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "valid choices: " + ", ".join(str(m.value) for m in tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        keys = ", ".join(f.name for f in dataclasses.fields(tp))
        return f"expected a mapping with keys: {keys}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    return "expected " + names.get(tp, str(tp))


def _translate(exc: OmegaConfBaseException, root: Any, source: str) -> ConfigError:
    """Re-raise an OmegaConf error as one line with the key path and the choices."""
    key = str(getattr(exc, "full_key", "") or "")
    where = f" (from {source})"
    if isinstance(exc, ConfigKeyError) and key:
        parent_path, _, leaf = key.rpartition(".")
        parent = _walk(root, parent_path)
        valid = (
            [f.name for f in dataclasses.fields(parent)]
            if dataclasses.is_dataclass(parent)
            else []
        )
        close = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        scope = f" under '{parent_path}'" if parent_path else ""
        msg = (
            f"unknown config key '{key}'{where}.{hint} Valid keys{scope}: "
            f"{', '.join(valid)}"
        )
        return ConfigError(msg)
    if isinstance(exc, ValidationError) and key:
        value = getattr(exc, "value", None)
        expected = _expected(_field_type(root, key))
        msg = f"config key '{key}': invalid value {value!r}{where}; {expected}"
        return ConfigError(msg)
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    label = f"config key '{key}'" if key else "config"
    return ConfigError(f"{label}{where}: {first}")


# ----------------------------------------------------------------------- public API
def _default_registries() -> Registries:
    from tokenred.plugins import get_plugin_manager
    from tokenred.registry import Registries

    return Registries.from_plugin_manager(get_plugin_manager())


def load_study(
    files: Sequence[str | Path] = (),
    *,
    reducer: str | None = None,
    model: str | None = None,
    data: str | None = None,
    budget: str | None = None,
    overrides: Sequence[str] = (),
    registries: Registries | None = None,
) -> Study:
    """Resolve config files, flags and overrides into one or more experiments.

    Study files (top-level ``study``/``base``/``sweep``) expand into the Cartesian
    product of their sweep. A key set by a flag or an override pins that key and
    drops its sweep axis, so ``reducer.name=sttm`` narrows a reducer sweep to STTM.

    Args:
        files: YAML files, merged in order (later wins).
        reducer: ``--reducer`` shorthand for ``reducer.name``.
        model: ``--model`` shorthand for ``model.name``.
        data: ``--data`` shorthand for ``data.name``.
        budget: ``--budget``: ``"0.3"`` sets ``budget.ratio``, ``"64"`` tokens.
        overrides: ``key=value`` items (OmegaConf dotlist), applied last.
        registries: Where names are looked up; default: every installed plugin.

    Raises:
        ConfigError: For any bad key or value, naming the key path and choices.
        UnknownNameError: For an unregistered reducer, model or dataset.
    """
    regs = registries if registries is not None else _default_registries()
    file_layers, sweep = _file_layers(files)
    pinned_layers = [
        _flag_layer(reducer, model, data, budget),
        _override_layer(overrides),
    ]
    pinned = set().union(*(_flat_keys(layer.data) for layer in pinned_layers))
    axes = {k: v for k, v in sweep.items() if k not in pinned}
    for key in sorted(set(sweep) - set(axes)):
        log.info("sweep axis %s is pinned by the command line", key)
    points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    experiments = []
    for point in points:
        sweep_data: dict[str, Any] = {}
        for key, value in point.items():
            sweep_data = _deep_merge(sweep_data, _nest(key, value))
        layer = _Layer("sweep", _normalize(sweep_data, "sweep"))
        experiments.append(_resolve([*file_layers, layer, *pinned_layers], regs))
    return Study(
        name=experiments[0].name, experiments=tuple(experiments), points=tuple(points)
    )


def load_config(
    files: Sequence[str | Path] = (),
    *,
    reducer: str | None = None,
    model: str | None = None,
    data: str | None = None,
    budget: str | None = None,
    overrides: Sequence[str] = (),
    registries: Registries | None = None,
) -> ExperimentConfig:
    """Resolve exactly one experiment; see :func:`load_study` for the arguments.

    Raises:
        ConfigError: Also when the files describe a sweep of several runs.
    """
    study = load_study(
        files,
        reducer=reducer,
        model=model,
        data=data,
        budget=budget,
        overrides=overrides,
        registries=registries,
    )
    if len(study.experiments) != 1:
        msg = (
            f"the config describes a sweep of {len(study.experiments)} runs; use "
            "load_study() (tokenred run handles sweeps)"
        )
        raise ConfigError(msg)
    return study.experiments[0]


def to_yaml(config: Any) -> str:
    """Return a dataclass config as YAML that :func:`load_config` reads back."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(config)))


def validate_config_class(config_cls: type, name: str | None = None) -> None:
    """Check that a plugin's Config works as an OmegaConf structured config.

    Args:
        config_cls: The dataclass, e.g. ``STTMReducer.Config``.
        name: The registry name its ``name`` field must default to.

    Raises:
        ConfigError: Naming the first problem found.
    """
    label = config_cls.__name__
    if not dataclasses.is_dataclass(config_cls):
        msg = f"{label} is not a dataclass"
        raise ConfigError(msg)
    try:
        schema = OmegaConf.structured(config_cls)
        defaults = OmegaConf.to_object(schema)
    except OmegaConfBaseException as exc:
        msg = f"{label} is not a valid OmegaConf structured config: {exc.msg}"
        raise ConfigError(msg.splitlines()[0]) from None
    except (TypeError, ValueError) as exc:
        msg = f"{label} defaults are invalid: {exc}"
        raise ConfigError(msg) from None
    try:
        OmegaConf.merge(schema, {"__no_such_key__": 1})
    except ConfigKeyError:
        pass
    else:
        msg = f"{label} accepts unknown keys; it must be a closed structured config"
        raise ConfigError(msg)
    # ``name`` may be redeclared without metadata: the base class documents it.
    missing = [
        f.name
        for f in dataclasses.fields(config_cls)
        if not f.metadata.get("help") and f.name != "name"
    ]
    if missing:
        msg = f"{label} fields without metadata help: {', '.join(missing)}"
        raise ConfigError(msg)
    if name is not None and getattr(defaults, "name", None) != name:
        msg = (
            f"{label}.name defaults to {getattr(defaults, 'name', None)!r}; it must "
            f"default to the registry name {name!r}"
        )
        raise ConfigError(msg)
