"""Configs declared once: each dataclass field carries its help text and its bounds.

Every config of a job (training, skip adapter, capture, dose, sampling) is a dataclass whose
fields are made with :func:`option`. From that one declaration come

* the command-line flags of the jobs (``jobs.cli.add_config_options``: type, default,
  choices and help),
* the type and range checks of :func:`check` (wrong type, NaN or infinity, out of bounds),
  which name the key (``lr: must be > 0, got -1``) so a job can print the flag instead, and
* :func:`from_dict`, which refuses unknown keys and checks types for config files and stored
  configs, and :func:`stable_hash`, which identifies a configuration across runs.

Config classes inherit :class:`Declared` (``from_dict``, ``check_fields`` and ``to_dict``, each
raising the class's own error type) or :class:`Checked` (the same, and the fields are checked
when the object is made: constants of a mechanism, which no later step validates).

Checks that depend on the model (depth, context length) stay with the code that knows it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from typing import Any, ClassVar

_MISSING = dataclasses.MISSING

# Every seed of every job and config: MLX, NumPy and scikit-learn take unsigned 32-bit seeds,
# so one range, declared here, is checked wherever a seed enters (flags, config files, links).
MAX_SEED = 2**32 - 1
SEED_BOUNDS = {"min": 0, "max": MAX_SEED}


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the key's name."""


def option(default: Any = _MISSING, *, default_factory: Any = _MISSING, help: str = "",
           min: float | None = None, max: float | None = None, above: float | None = None,
           below: float | None = None, choices: tuple | None = None, flag: bool = True) -> Any:
    """A dataclass field with its help, bounds (``min <= v <= max``, ``v > above``, ``v < below``)
    and choices.

    ``flag=False`` keeps the field out of the command line (set by the code, not the user).
    """
    meta = {"help": help, "min": min, "max": max, "above": above, "below": below, "choices": choices, "flag": flag}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def seed_option(default: Any = 0, *, default_factory: Any = _MISSING, help: str = "") -> Any:
    """A seed field (or a list of seeds): an integer in ``[0, MAX_SEED]``."""
    return option(default, default_factory=default_factory, help=help, **SEED_BOUNDS)


def check_seed(name: str, value: Any) -> None:
    """A seed that did not come through a config field (``jobs.analyze``, ``jobs.sweep --seeds``)."""
    hint = list[int] if isinstance(value, list) else int
    check_value(name, value, hint, dict(SEED_BOUNDS))


def hints(cls) -> dict[str, Any]:
    """Resolved type annotations of a config class (they are strings under postponed evaluation)."""
    return typing.get_type_hints(cls)


def _parts(hint) -> tuple[Any, bool]:
    """(base type, None allowed) of ``X`` or ``X | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _kind(base) -> str:
    if typing.get_origin(base) is list:
        return f"a list of {_kind(typing.get_args(base)[0])}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(base, base.__name__)


def _type_ok(value: Any, base) -> bool:
    if typing.get_origin(base) is list:
        return isinstance(value, list) and all(_type_ok(v, typing.get_args(base)[0]) for v in value)
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, base)


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_problem(value: float, meta: dict) -> str | None:
    lo, hi, above, below = meta.get("min"), meta.get("max"), meta.get("above"), meta.get("below")
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if lo is not None and hi is not None and not lo <= value <= hi:
        return f"must be in [{_num(lo)}, {_num(hi)}]"
    if lo is not None and value < lo:
        return f"must be at least {lo}" if isinstance(lo, int) else f"must be >= {lo:g}"
    if hi is not None and value > hi:
        return f"must be at most {_num(hi)}"
    if above is not None and below is not None and not above < value < below:
        return f"must be in ({_num(above)}, {_num(below)})"
    if above is not None and not value > above:
        return f"must be > {_num(above)}"
    if below is not None and not value < below:
        return f"must be < {_num(below)}"
    return None


def check_value(name: str, value: Any, hint, meta: dict | None = None) -> None:
    """Type, finiteness, bounds and choices of one value; ConfigError naming ``name``."""
    meta = meta or {}
    base, optional = _parts(hint)
    if value is None and optional:
        return
    if dataclasses.is_dataclass(base):
        if not isinstance(value, base):
            raise ConfigError(f"{name}: expected a table of options, got {value!r}")
        check(value)
        return
    if not _type_ok(value, base):
        raise ConfigError(f"{name}: expected {_kind(base)}, got {value!r}")
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not any(isinstance(v, list) for v in value):
        # A list option never means a value twice: it would run (and count) twice.
        seen = [v for i, v in enumerate(value) if v in value[:i]]
        if seen:
            raise ConfigError(f"{name}: repeated values ({seen[0]!r} is given more than once)")
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            problem = _range_problem(item, meta)
            if problem:
                each = "each " if isinstance(value, list) else ""
                raise ConfigError(f"{name}: {each}{problem}, got {item!r}")
        if meta.get("choices") is not None and item not in meta["choices"]:
            shown = ", ".join("none" if c is None else str(c) for c in meta["choices"])
            raise ConfigError(f"{name}: must be one of {shown}, got {item!r}")


def check(cfg) -> None:
    """Check every field of a config dataclass against its declaration."""
    resolved = hints(type(cfg))
    for f in dataclasses.fields(cfg):
        check_value(f.name, getattr(cfg, f.name), resolved[f.name], dict(f.metadata))


def from_dict(cls, params: Any, *, section: str = ""):
    """A checked ``cls`` from a dict (a config file, a stored config); nested configs recurse.

    Unknown keys and values of the wrong type raise ConfigError naming the key.
    """
    prefix = f"{section}." if section else ""
    if not isinstance(params, dict):
        raise ConfigError(f"{section or 'config'}: expected a table of options, got {params!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown option")
    resolved = hints(cls)
    values = {}
    for key, value in params.items():
        base, _ = _parts(resolved[key])
        if dataclasses.is_dataclass(base) and not isinstance(value, base):
            value = from_dict(base, value, section=prefix + key)
        elif base is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        check_value(prefix + key, value, resolved[key], dict(names[key].metadata))
        values[key] = value
    return cls(**values)


def stable_hash(settings: dict, length: int = 16) -> str:
    """A short hash of JSON-serialisable settings, independent of key order."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:length]


class Declared:
    """Mixin for config dataclasses: the declared checks, raising ``cls.error`` (a ConfigError
    or the subclass's own ValueError, with the same message)."""

    error: ClassVar[type[ValueError]] = ConfigError

    @classmethod
    def _raise(cls, exc: ConfigError):
        if isinstance(exc, cls.error):
            raise exc
        raise cls.error(str(exc)) from exc

    @classmethod
    def from_dict(cls, params: Any):
        """A checked config from a dict (a config file, a stored config), see :func:`from_dict`."""
        try:
            return from_dict(cls, params)
        except ConfigError as exc:
            cls._raise(exc)

    def check_fields(self) -> None:
        """Every field against its declaration (:func:`check`)."""
        try:
            check(self)
        except ConfigError as exc:
            self._raise(exc)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Checked(Declared):
    """A :class:`Declared` config whose fields are checked as soon as it is made."""

    def __post_init__(self):
        self.check_fields()
