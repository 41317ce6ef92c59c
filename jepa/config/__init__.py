"""One typed config object for a run: dataclasses, YAML loading, CLI overrides, validation.

Every problem is reported as a ``ConfigError`` that names the key path and what would be
valid, so a user never meets a traceback from deep inside the trainer.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml

from jepa.config.parse import _build, _flatten, _set_dotted, _type_name, parse_overrides, parse_value, read_yaml
from jepa.config.schema import (VICREG_DEFAULTS, _to_plain, CheckpointConfig, Config, DataConfig, DistributedConfig,
                                EvalConfig, FinetuneConfig, LoggingConfig, LossConfig, MaskConfig, MixPart, ModelConfig,
                                OptimConfig, ProbeConfig, ProfilingConfig, TrainingConfig, field_docs, sections)
from jepa.config.validate import validate
from jepa.errors import ConfigError

__all__ = ["Config", "ConfigError", "ModelConfig", "MixPart", "DataConfig", "MaskConfig", "LossConfig",
           "OptimConfig", "TrainingConfig", "LoggingConfig", "CheckpointConfig", "EvalConfig", "ProbeConfig", "FinetuneConfig", "ProfilingConfig",
           "DistributedConfig", "VICREG_DEFAULTS", "load_config", "config_from_dict", "parse_overrides",
           "add_config_args", "config_from_cli", "validate", "help_text"]


def _apply_overrides(raw: dict, overrides: dict[str, Any] | None):
    """Set dotted keys in ``raw``; string values are read as YAML where they parse."""
    for dotted, value in (overrides or {}).items():
        if isinstance(value, str):
            try:
                value = parse_value(value, dotted)
            except ConfigError:
                pass  # not YAML: a plain string (a path, say); fields of other types reject it by name
        _set_dotted(raw, dotted, value)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML file (or defaults), apply dotted overrides, validate.

    ``cfg.explicit`` says where each key the user set came from (``"config file"`` or ``"command line"``):
    ``model.size: from_file`` lets the file's architecture replace what an earlier layer set.
    """
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}" if not path.exists() else
                              f"config file {path} is not a file")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
        raw = read_yaml(text, str(path))
        if not isinstance(raw, dict):
            got = "an empty file" if raw is None else f"{type(raw).__name__} {raw!r}"
            raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, ...), got {got}")
        raw.setdefault("name", path.stem)
    in_file = set(_flatten(raw))
    _apply_overrides(raw, overrides)
    explicit = _flatten(raw)
    cfg = validate(_build(Config, raw), explicit)
    cfg.explicit = {key: "config file" if key in in_file and key not in (overrides or {}) else "command line"
                    for key in explicit}
    return cfg


def help_text() -> str:
    """Every config key with its type, default and what it does (``--help-config``)."""
    default = Config()
    lines = ["Config keys (set in the YAML file, or on the command line as --section.key value):"]
    for name, cls in sections():
        lines.append(f"\n{name}: {cls.__doc__}")
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            value = yaml.safe_dump(_to_plain(getattr(getattr(default, name), f.name)), default_flow_style=True)
            value = value.strip().removesuffix("...").strip()
            lines.append(f"  {name}.{f.name} = {value}  ({_type_name(hints[f.name])})")
            lines.append(f"      {docs.get(f.name, '')}")
    return "\n".join(lines)


def add_config_args(parser: argparse.ArgumentParser):
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its meaning and exit")


def config_from_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse known flags, treat the rest as dotted overrides; exit 2 with a message on errors.

    ``--print-config`` prints the validated config; the mask geometry is checked where the sampler is built
    (``jepa.data.build_mask_sampler``), so mask settings the sampler cannot honour pass ``--print-config``.
    """
    args, rest = parser.parse_known_args(argv)
    if args.help_config:
        print(help_text())
        raise SystemExit(0)
    try:
        cfg = load_config(args.config, parse_overrides(rest))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        raise SystemExit(0)
    return cfg, args


def config_from_dict(raw: dict, overrides: dict[str, Any] | None = None) -> Config:
    """Rebuild a Config saved with ``to_dict`` (checkpoints, exports), then apply dotted CLI ``overrides``."""
    raw = copy.deepcopy(raw)
    raw.pop("__source__", None)
    _apply_overrides(raw, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the run warned when it started; a reader need not
        return validate(_build(Config, raw))
