"""Typed, frozen stage configs: loaded from YAML, overridden by ``key=value`` pairs, validated early.

Every stage config is a frozen dataclass whose ``__post_init__`` calls the checks below, so a bad value
fails before any expensive work, with a message naming the field, the value and what is allowed::

    cfg = load_config(CleanConfig, "clean.yaml", overrides=["strategy=basic", "min_chars=5"])
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from aptops.core.errors import ConfigError

C = TypeVar("C")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

#: The most nodes a YAML document may expand to (aliases counted at every place they are used); a config
#: holds tens, a generous one thousands. A "billion laughs" document is refused instead of built.
MAX_YAML_NODES = 100_000
#: The deepest nesting a YAML document may have.
MAX_YAML_DEPTH = 64

_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel = 120, 120, 3
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 8


def show(value: object) -> str:
    """``repr(value)`` cut to a line: an error message names a huge or deeply nested value without building it."""
    return _SHOW.repr(value)


def load_yaml(text: str, *, source: str, max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_YAML_DEPTH) -> Any:
    """Parse one YAML document safely (``yaml.SafeLoader``) with bounded alias expansion and depth, refusing a
    key given twice in one mapping.

    Anchors and aliases stay usable (``<<: *defaults``), but the document's size counted with every alias
    expanded, and its nesting depth, must stay under the limits; the graph is measured before any Python
    object is built, so a "billion laughs" document costs nothing.

    Raises:
        ConfigError: not valid YAML, or over a limit; the message names ``source`` and the limit.
    """
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters here already
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}", value=source) from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{source}: nested deeper than {max_depth} levels; flatten it", value=source) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}", value=source) from None
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def size(n: yaml.Node, depth: int) -> int:
            if depth > max_depth:
                raise ConfigError(f"{source}: nested deeper than {max_depth} levels; flatten it", value=source)
            if id(n) in sizes:
                return sizes[id(n)]
            sizes[id(n)] = max_nodes + 1  # a node that contains itself expands without end
            if isinstance(n, yaml.MappingNode):
                keys = [k.value for k, _ in n.value if isinstance(k, yaml.ScalarNode) and k.value != "<<"]
                twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
                if twice is not None:  # YAML keeps the last silently: a second `credentials:` drops the first
                    raise ConfigError(f"{source}: the key {twice!r} appears twice in one mapping (line "
                                      f"{n.start_mark.line + 1}); keep one", value=source)
                total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in n.value)
            elif isinstance(n, yaml.SequenceNode):
                total = 1 + sum(size(v, depth + 1) for v in n.value)
            else:
                total = 1
            if total > max_nodes:
                raise ConfigError(f"{source}: expands to more than {max_nodes} values through its anchors and aliases "
                                  "(a YAML bomb?); write the values out or use fewer aliases", value=source)
            sizes[id(n)] = total
            return total

        size(node, 0)
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}", value=source) from None
    finally:
        loader.dispose()


def with_overrides(config: C, overrides: Mapping[str, Any], *, prefix: str = "") -> C:
    """``config`` with the fields named in a (nested) mapping replaced, coerced and validated as in
    :func:`from_dict`; nested configs take nested mappings (``{"training": {"lora_r": 8}}``) or dotted keys
    (``{"training.lora_r": 8}``); a mapping-valued field (``training_args``) is merged key by key.

    Raises:
        ConfigError: an unknown key (the message lists the known ones) or an invalid value.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"{config!r} is not a config instance")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        _set_dotted(nested, str(key), value)
    if not nested:
        return config
    cls = type(config)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    changes: dict[str, Any] = {}
    for name, value in nested.items():
        if name not in fields:
            raise ConfigError(f"unknown config key {prefix + name!r} for {cls.__name__}{_did_you_mean(name, fields)}: "
                              f"known keys are {', '.join(sorted(fields))}", field=prefix + name, value=show(value))
        current = getattr(config, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[name] = with_overrides(current, value, prefix=f"{prefix}{name}.")
        elif isinstance(current, Mapping) and isinstance(value, Mapping):  # training_args: merged key by key
            changes[name] = {**current, **_coerce(hints[name], value, prefix + name)}
        else:
            changes[name] = _coerce(hints[name], value, prefix + name)
    try:
        return dataclasses.replace(config, **changes)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def check_interval(name: str, value: int) -> None:
    """Intervals count steps or batches: a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be a whole number of steps (1 = every step)", field=name,
                          value=value)
    check_range(name, value, min_value=1)


def check_range(
    field: str,
    value: float,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number in the given range."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{field}={value!r} must be a finite number", field=field, value=value)
    low_ok = min_value is None or (value >= min_value if min_inclusive else value > min_value)
    high_ok = max_value is None or (value <= max_value if max_inclusive else value < max_value)
    if low_ok and high_ok:
        return
    lo = "-inf" if min_value is None else f"{min_value}"
    hi = "+inf" if max_value is None else f"{max_value}"
    interval = f"{'[' if min_inclusive else '('}{lo}, {hi}{']' if max_inclusive else ')'}"
    raise ConfigError(
        f"{field}={show(value)} is out of range: allowed {interval}", field=field, value=value
    )


def check_choice(field: str, value: object, choices: Iterable[object]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    allowed = list(choices)
    if value not in allowed:
        raise ConfigError(
            f"{field}={show(value)} is not supported: choose one of {', '.join(map(str, allowed))}",
            field=field,
            value=value,
        )


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``["a=1", "b.c=x"]`` into ``{"a": "1", "b.c": "x"}``; values stay strings until coerced."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override {pair!r} is not of the form key=value (for example strategy=basic)",
                field=key or None,
                value=pair,
            )
        out[key] = value
    return out


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    *,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    section: str | None = None,
) -> C:
    """Build a config dataclass from an optional YAML file plus overrides.

    Args:
        cls: the frozen config dataclass.
        path: a YAML (or JSON) file with a mapping of field values; optional.
        overrides: ``key=value`` strings (from the CLI) or a mapping; they win over the file.
        section: read this top-level key of the file instead of the whole mapping.

    Returns:
        A validated instance of ``cls``.

    Raises:
        ConfigError: the file is unreadable or not a mapping, a key is unknown, or a value is invalid.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(path, section)
    items = parse_overrides(list(overrides)) if not isinstance(overrides, Mapping) else dict(overrides)
    for key, raw in items.items():
        _set_dotted(data, key, raw)
    return from_dict(cls, data)


def from_dict(cls: type[C], data: Mapping[str, Any], *, prefix: str = "", base: Any = None) -> C:
    """Coerce a mapping into the dataclass ``cls`` field by field (nested dataclasses included).

    Fields the mapping leaves out keep their defaults, a nested config's too: a parent whose default nests
    ``TrainConfig(resume="never")`` keeps ``resume="never"`` when the mapping sets only ``training.block_size``.
    ``base``: start from this instance instead of the defaults.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{prefix}{unknown[0]}"
        raise ConfigError(
            f"unknown config key {name!r} for {cls.__name__}{_did_you_mean(unknown[0], fields)}: known keys are "
            f"{', '.join(sorted(fields))}",
            field=name,
            value=show(data[unknown[0]]),
        )
    kwargs = {}
    for name, value in data.items():
        nested = _nested_base(base, fields[name]) if dataclasses.is_dataclass(hints[name]) else None
        if nested is not None and isinstance(value, Mapping):
            kwargs[name] = from_dict(hints[name], value, prefix=f"{prefix}{name}.", base=nested)
        else:
            kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def _nested_base(base: Any, f: dataclasses.Field[Any]) -> Any:
    """The instance a nested config field starts from: ``base``'s value, else the field's own default."""
    if base is not None:
        return getattr(base, f.name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def to_dict(config: object) -> dict[str, Any]:
    """A JSON-ready mapping of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))  # type: ignore[call-overload]


def read_yaml_mapping(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """The mapping a YAML file holds (its ``section`` key if given), read with :func:`load_yaml`'s limits.

    Raises:
        ConfigError: the file is missing, not UTF-8, not valid YAML, over a limit, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist: pass an existing YAML file", value=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text: {exc}", value=str(path)) from exc
    loaded = load_yaml(text, source=f"config file {str(path)!r}")
    if loaded is None:
        loaded = {}
    if section is not None and isinstance(loaded, dict):
        loaded = loaded.get(section, {})
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of field: value, got {type(loaded).__name__}",
            value=str(path),
        )
    return loaded


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section", field=key, value=value)
        node = child
    node[parts[-1]] = value


def _coerce(tp: Any, value: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.strip().lower() in {"none", "null", "~"})
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, field)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{field}: bad value {show(value)}", field=field, value=value)
    if origin is typing.Literal:
        # Literal choices are checked by the dataclass itself; coerce to the choices' type.
        sample = args[0]
        value = _coerce(type(sample), value, field)
        check_choice(field, value, args)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{field} must be a mapping, got {show(value)}", field=field, value=value)
        return from_dict(tp, value, prefix=f"{field}.")
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, str):
            value = _parse_inline(value)
        if not isinstance(value, list | tuple):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed shape: tuple[str, int]
            if len(value) != len(args):
                raise ConfigError(f"{field} must have {len(args)} items, got {len(value)}", field=field, value=value)
            return tuple(_coerce(t, v, f"{field}[{i}]") for i, (t, v) in enumerate(zip(args, value, strict=True)))
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{field}[{i}]") for i, v in enumerate(value)]
        return list(items) if origin is list or tp is list else tuple(items)
    if origin in (dict, Mapping) or tp is dict:
        if isinstance(value, str):
            value = _parse_inline(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{field} must be a mapping, got {show(value)}", field=field, value=value)
        k_tp, v_tp = args if args else (Any, Any)
        return {_coerce(k_tp, k, field): _coerce(v_tp, v, f"{field}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{field} must be true or false, got {show(value)}", field=field, value=value)
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{field} must be an integer, got {show(value)}", field=field, value=value)
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{field} must be an integer, got {show(value)}", field=field, value=value) from exc
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{field} must be a number, got {show(value)}", field=field, value=value) from exc
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{field} must be a string, got {show(value)}", field=field, value=value)
    if tp is Path:
        return Path(value)
    return value


def _parse_inline(text: str) -> Any:
    """Parse an inline YAML value (``[a, b]``, ``{k: v}``) from an override."""
    try:
        return load_yaml(text, source=f"the value {show(text)}")
    except ConfigError:
        return text
