"""Turning YAML and command-line values into the schema's types, with errors that name the key."""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Literal, Union

import yaml

from jepa.config.schema import Config
from jepa.errors import ConfigError


MAX_VALUES = 10_000  # values a config may hold once YAML aliases are expanded
MAX_DEPTH = 16  # nesting depth of a config's mappings and lists
INT64 = 2 ** 63


class _KeyNotScalar(yaml.YAMLError):
    """A mapping key that is a list or mapping: YAML allows it, a config (and Python's dict) does not."""

    def __init__(self, key_node):
        super().__init__()
        start, end = key_node.start_mark, key_node.end_mark
        text = " ".join((start.buffer or "")[start.index:end.index].split())
        self.key = text if len(text) <= 60 else text[:57] + "..."
        self.kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
        self.line = start.line + 1


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping and a key that is not a plain value."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _KeyNotScalar(key_node)
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (first {seen[key]})", key_node.start_mark)
            seen[key] = f"line {key_node.start_mark.line + 1}"
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, source: str) -> Any:
    """Parse config YAML safely: no tags beyond the safe ones, no duplicate keys, bounded size and depth."""
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _KeyNotScalar as e:
        raise ConfigError(f"{source}: line {e.line}: the key {e.key} is a {e.kind}; config keys are plain names "
                          "like model or depth") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config") from None
    _check_size(value, source)
    return value


def _check_size(value, source: str):
    """Refuse configs that expand (through aliases) past ``MAX_VALUES`` values or nest past ``MAX_DEPTH``."""
    stack, count = [(value, 0)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{source}: holds more than {MAX_VALUES} values once YAML aliases are expanded; "
                              "not a config")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels; not a config")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def parse_value(text: str, path: str) -> Any:
    """A command-line value read as YAML (``3`` is an int, ``[0.3, 1]`` a list); errors name the key."""
    return read_yaml(text, f"--{path} {text!r}")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None)) + (
            " or null" if type(None) in typing.get_args(tp) else "")
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if origin is tuple:
            return "a pair [" + ", ".join(_type_name(a) for a in args) + "]"
        return f"a list of {_type_name(args[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, path: str):
    """Convert a YAML/CLI value to the declared type or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        valid = typing.get_args(tp)
        for choice in valid:  # exact type, so true is not 1 and "3" is not 3
            if type(value) is type(choice) and value == choice:
                return choice
        raise ConfigError(f"{path}: must be one of {', '.join(map(str, valid))}, got {value!r}")
    if origin is Union:
        return _coerce_union(value, tp, path)
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        return _coerce_int(value, path)
    if tp is float:
        return _coerce_float(value, path)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported type {tp}")


def _coerce_union(value, tp, path: str):
    """The first member type that takes ``value``; a bad element of an optional list is named by its index."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    inner = None
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, path)
        except ConfigError as e:
            inner = e if str(e).startswith(f"{path}[") else inner  # a bad element: say which and why
    if inner is not None and len(args) == 2:
        raise inner from None
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _coerce_sequence(value, tp, path: str):
    """A list, or a tuple of fixed length, each element converted to its declared type."""
    if isinstance(value, str):
        value = parse_value(value, path)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {_type_name(tp)} ({len(args)} values), got {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]


def _coerce_int(value, path: str) -> int:
    """An integer (or a float or string holding one) that fits in 64 bits; never a bool."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    number = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            pass
    if number is None:
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if not -INT64 <= number < INT64:
        raise ConfigError(f"{path}: {value!r} does not fit in 64 bits")
    return number


def _coerce_float(value, path: str) -> float:
    """A finite number (an int, float or string holding one); never a bool."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    number = None
    try:
        if isinstance(value, (int, float, str)):
            number = float(value)
    except (ValueError, OverflowError):
        pass
    if number is None:
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if not math.isfinite(number):
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")
    return number


def _unknown_key(key: str, valid: list[str], path: str) -> ConfigError:
    where = f"{path}.{key}" if path else key
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return ConfigError(f"unknown config key '{where}'{hint} (valid keys: {', '.join(valid)})")


def _build(cls, raw: dict, path: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise _unknown_key(str(key), names, path)
        sub = f"{path}.{key}" if path else key
        kwargs[key] = _coerce(value, hints[key], sub)
    return cls(**kwargs)


def _set_dotted(raw: dict, dotted: str, value: Any):
    """Set ``a.b.c`` in a nested dict, checking every key against the schema."""
    keys = dotted.split(".")
    cls = Config
    node = raw
    for i, key in enumerate(keys):
        names = [f.name for f in dataclasses.fields(cls)]
        if key not in names:
            raise _unknown_key(key, names, ".".join(keys[:i]))
        if i == len(keys) - 1:
            node[key] = value
            return
        tp = typing.get_type_hints(cls)[key]
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{'.'.join(keys[: i + 1])} is not a section; cannot set '{dotted}'")
        if key in node and not isinstance(node[key], dict):
            raise ConfigError(f"{'.'.join(keys[: i + 1])}: the section must be a mapping of keys, got "
                              f"{node[key]!r}; cannot set '{dotted}'")
        node = node.setdefault(key, {})
        cls = tp


def _flatten(raw: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in raw.items():
        p = f"{prefix}.{k}" if prefix else str(k)
        out.add(p)
        if isinstance(v, dict):
            out |= _flatten(v, p)
    return out


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Turn ``--a.b value`` / ``--a.b=value`` pairs into a dict."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"--{key} needs a value")
            i += 1
            value = args[i]
        out[key] = value
        i += 1
    return out
