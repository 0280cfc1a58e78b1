"""Load, override and validate a run's configuration.

A configuration is a TOML file whose tables and keys mirror ``pgt._schema.Config``,
plus ``--set key=value`` overrides with dotted keys. Everything is checked before a
run starts: an unknown key, a value of the wrong type or outside its allowed range
raises ``ConfigError`` with a one-line message naming the key, so a typo never costs
an hour of training.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomli_w

from pgt._schema import Config

__all__ = ["ConfigError", "apply_overrides", "config_from", "config_to_toml", "load_config"]

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}

# Closed vocabularies; a value outside them is a ConfigError.
_CHOICES = {
    "device": ("cpu", "gpu"),
    "data.name": ("digits", "digit_rows", "delayed_parity", "narma10", "mackey_glass",
                  "delayed_recall"),
    "data.task": ("auto", "classification", "regression"),
    "model.name": ("dense", "transformer"),
    "model.pool": ("mean", "last"),
    "estimator.name": ("interface", "pgt", "spsa", "readout", "ridge", "twin", "backprop"),
    "estimator.twin_kind": ("grey", "black"),
    "estimator.form": ("central", "one-sided"),
    "estimator.distribution": ("rademacher", "gaussian"),
    "optimizer.name": ("adam", "sgd"),
    "optimizer.schedule": ("constant", "cosine"),
    "train.on_divergence": ("stop", "rollback"),
}
_POSITIVE = ("train.steps", "estimator.k", "data.batch_size", "train.eval_every",
             "train.keep_checkpoints", "estimator.sigma", "optimizer.lr",
             "train.checkpoint_seconds", "model.feature_scale", "model.d_model",
             "model.heads", "model.mlp_width", "data.seq_len", "data.parity_bits",
             "data.window", "data.length", "optimizer.eps", "train.log_every",
             "estimator.twin_max_period", "estimator.twin_lr", "estimator.twin_batch",
             "estimator.twin_buffer", "estimator.twin_hidden")
_NON_NEGATIVE = ("data.washout", "train.checkpoint_every", "optimizer.weight_decay", "data.delay",
                 "reservoir.trial_timeout_s", "reservoir.suspend_limit_s", "seed",
                 "data.split_seed", "estimator.spsa_a", "estimator.spsa_alpha",
                 "estimator.spsa_gamma", "model.init_scale", "estimator.twin_probes",
                 "estimator.twin_fit_steps")
# Values in [0, 1): the optimizers' averaging constants.
_UNIT = ("optimizer.beta1", "optimizer.beta2", "optimizer.momentum")
_MAX_INT = 2**63 - 1   # NumPy's seeds and the checkpoint's counters are 64-bit


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line naming the key."""


def load_config(path: str | Path | None, overrides: Iterable[str] = (),
                *, settings: Mapping[str, Any] | None = None) -> Config:
    """Build the run's ``Config`` from an optional TOML file and overrides.

    ``overrides`` are ``key=value`` strings whose value is read as a TOML literal
    (``8``, ``0.1``, ``true``, ``"x"``) or, when that fails or a string is expected,
    as the bare text. ``settings`` are already-typed dotted-key values (from CLI
    flags such as ``--backend``) applied last. Raises ``ConfigError``.
    """
    cfg = Config()
    if path is not None:
        _apply_table(cfg, _read_toml(Path(path)), prefix="", where=str(path))
    return apply_overrides(cfg, overrides, settings=settings)


def apply_overrides(cfg: Config, overrides: Iterable[str] = (), *,
                    settings: Mapping[str, Any] | None = None) -> Config:
    """Apply ``key=value`` overrides and typed ``settings`` to ``cfg`` (in place) as
    ``load_config`` does, and check the result. Raises ``ConfigError``."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"config: --set expects key=value, got {item!r}")
        _set_dotted(cfg, key.strip(), text.strip(), where="--set", raw=True)
    for key, value in (settings or {}).items():
        _set_dotted(cfg, key, value, where="the command line", raw=False)
    _check_values(cfg)
    return cfg


def config_from(config: Config | Mapping[str, Any] | None) -> Config:
    """A checked copy of ``config``: a Config, or a mapping of TOML-style tables
    (``{"estimator": {"name": "pgt"}}``), dotted keys (``{"estimator.k": 8}``) or both.
    Raises ``ConfigError`` exactly as a config file would."""
    import copy

    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif isinstance(config, Mapping):
        cfg = Config()
        for key, value in config.items():
            if not isinstance(key, str):
                raise ConfigError(f"config: keys must be strings, got {key!r}")
            if "." in key:
                _set_dotted(cfg, key, value, where="the config", raw=False)
            else:
                _set_field(cfg, key, value, "", "the config", raw=False)
    else:
        raise ConfigError(f"config: expected a Config or a mapping, got {type(config).__name__}")
    _check_values(cfg)
    return cfg


def config_to_toml(cfg: Config) -> str:
    """The resolved configuration as TOML text that ``load_config`` reads back."""
    return tomli_w.dumps(dataclasses.asdict(cfg))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config: no config file at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config: cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from None


def _apply_table(obj: Any, table: Mapping[str, Any], prefix: str, where: str) -> None:
    """Copy a parsed TOML table onto the dataclass ``obj``, checking every key."""
    for key, value in table.items():
        _set_field(obj, key, value, prefix, where, raw=False)


def _set_dotted(cfg: Config, dotted: str, value: Any, where: str, raw: bool) -> None:
    parts = dotted.split(".")
    obj, prefix = cfg, ""
    for part in parts[:-1]:
        hints = _hints(obj)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            raise _unknown(prefix + part, obj, prefix, where)
        obj, prefix = getattr(obj, part), f"{prefix}{part}."
    _set_field(obj, parts[-1], value, prefix, where, raw=raw)


def _set_field(obj: Any, key: str, value: Any, prefix: str, where: str,
               raw: bool) -> None:
    hints = _hints(obj)
    name = prefix + key
    if key not in hints:
        raise _unknown(name, obj, prefix, where)
    expected = hints[key]
    if dataclasses.is_dataclass(expected):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config: '{name}' in {where} is a table, "
                              f"not {_describe(value)}")
        _apply_table(getattr(obj, key), value, f"{name}.", where)
        return
    if raw:
        value = _parse_literal(value, expected)
    setattr(obj, key, _coerce(value, expected, name, where))


def _parse_literal(text: str, expected: type) -> Any:
    """Read an override's text as a TOML literal; keep the bare text for strings."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    # `--set run_name=2024` means the string "2024", not a type error.
    return text if expected is str and not isinstance(value, str) else value


def _coerce(value: Any, expected: type, name: str, where: str) -> Any:
    if typing.get_origin(expected) is list:   # reservoir.urls: a list of strings
        if not (isinstance(value, list) and all(type(v) is str for v in value)):
            raise ConfigError(f"config: '{name}' in {where} must be a list of strings, "
                              f"got {_describe(value)}")
        return list(value)
    # bool is a subclass of int in Python, but `steps = true` is a mistake.
    ok = type(value) is expected or (expected is float and type(value) is int)
    if not ok:
        raise ConfigError(f"config: '{name}' in {where} must be "
                          f"{_TYPE_NAMES.get(expected, expected.__name__)}, "
                          f"got {_describe(value)}")
    return float(value) if expected is float else value


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    kind = _TYPE_NAMES.get(type(value), type(value).__name__)
    return f"{kind} {value!r}"


def _unknown(name: str, obj: Any, prefix: str, where: str) -> ConfigError:
    valid = [prefix + k for k in _hints(obj)]
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"config: unknown key '{name}' in {where}{hint}")


def _hints(obj: Any) -> dict[str, Any]:
    # The schema uses `from __future__ import annotations`: resolve the strings.
    return typing.get_type_hints(type(obj))


def _get(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def leaves(obj: Any, prefix: str = ""):
    """(dotted key, value) of every setting."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, value


def _check_values(cfg: Config) -> None:
    for key, value in leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config: '{key}' must be a finite number, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT:
            raise ConfigError(f"config: '{key}' is too large ({value})")
        texts = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        for text in texts:
            if any(ord(c) < 32 or c == "\x7f" for c in text):
                raise ConfigError(f"config: '{key}' contains a control character: {text!r}")
    for key in _UNIT:
        if not 0 <= _get(cfg, key) < 1:
            raise ConfigError(f"config: '{key}' must be at least 0 and below 1, "
                              f"got {_get(cfg, key)!r}")
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"config: '{key}' must be one of {', '.join(choices)}, "
                              f"got {_get(cfg, key)!r}")
    for key in _POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"config: '{key}' must be positive, got {_get(cfg, key)!r}")
    for key in _NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"config: '{key}' must not be negative, "
                              f"got {_get(cfg, key)!r}")
    if not 0 < cfg.data.test_fraction < 1:
        raise ConfigError("config: 'data.test_fraction' must be between 0 and 1, "
                          f"got {cfg.data.test_fraction!r}")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError("config: 'data.val_fraction' must be at least 0 and below 1, "
                          f"got {cfg.data.val_fraction!r}")
    if not cfg.data.label.strip():
        raise ConfigError("config: 'data.label' must name a column, got an empty string")
    if cfg.model.d_model % cfg.model.heads:
        raise ConfigError(f"config: 'model.heads' ({cfg.model.heads}) must divide "
                          f"'model.d_model' ({cfg.model.d_model})")
    requires = cfg.reservoir.requires
    if requires and (requires in ("CPU", "GPU", "memory") or not requires.replace("_", "").replace(
            "-", "").isalnum()):
        raise ConfigError(f"config: 'reservoir.requires' must name a custom Ray resource "
                          f"(letters, digits, _ and -), got {requires!r}")
    if "/" in cfg.run_name or "\\" in cfg.run_name or cfg.run_name in (".", ".."):
        raise ConfigError(f"config: 'run_name' must be a plain name, got {cfg.run_name!r}")
