"""Typed method configs: every tunable with its type, default, allowed values and one line of
help, checked in one place.

A method's config is a frozen dataclass deriving from `MethodConfig`, its fields declared with
`option(...)`. The same class builds the config from a params.yaml section (`from_mapping`)
and from command-line flags (`add_arguments` / `from_args`), so the two can never disagree on a
default or a check. Any unknown key, wrong type or value out of range raises `ConfigError`,
which names where the value came from (params.yaml's section and key, or the flag).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from crediflow.errors import ConfigError

_UNSET = object()


def option(
    default: Any,
    help: str,  # noqa: A002 - the argparse word
    *,
    choices: Sequence[Any] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A config field: its default, one line of help, and what is allowed.

    `choices` lists the allowed values (for a sequence field: the allowed items); `low` and
    `high` bound a number (inclusive unless `low_open`/`high_open`); `check` returns a reason
    when a value is refused, else None.
    """
    if isinstance(default, list):
        default = tuple(default)
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None,
            "low": low, "high": high, "low_open": low_open, "high_open": high_open,
            "check": check}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config; subclasses set `section` and declare `option` fields."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(self, f, hints[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)
            _check_bounds(self, f, value)
        self.validate()

    def validate(self) -> None:
        """Checks across fields; subclasses raise `self.error(key, reason)`."""

    def error(self, key: str, reason: str) -> ConfigError:
        """A ConfigError for `key` of this config's section, naming where it came from."""
        return ConfigError(reason, section=self.section, key=key)

    @classmethod
    def describe(cls) -> dict[str, dict[str, Any]]:
        """Each field's type, default, allowed values and help (for docs and flags)."""
        hints = typing.get_type_hints(cls)
        return {f.name: {"type": _type_name(hints[f.name]), "default": f.default,
                         "allowed": _allowed(f), "help": f.metadata.get("help", "")}
                for f in dataclasses.fields(cls)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, *,
                     source: str = "params.yaml") -> MethodConfig:
        """The config from a params.yaml section; missing keys keep their defaults.

        An unknown key (a typo) is refused, naming the keys there are.
        """
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"expected a mapping of keys to values, got "
                              f"{type(values).__name__}", source=source, section=cls.section)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            raise ConfigError(f"unknown key; the keys of this section are "
                              f"{', '.join(sorted(known))}", source=source, section=cls.section,
                              key=unknown[0])
        try:
            return cls(**dict(values))
        except ConfigError as exc:
            raise exc.with_source(source) from None

    def to_dict(self) -> dict[str, Any]:
        """Field values as plain YAML/JSON types (tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *,
                      skip: Sequence[str] = ()) -> None:
        """One `--flag` per field (underscores become dashes), help and default from the field.

        Flags are parsed as text and checked by the config itself, so a bad value gets the
        same message on the command line as in params.yaml.
        """
        group = parser.add_argument_group(f"{cls.section} settings (params.yaml section "
                                          f"{cls.section!r})")
        for name, info in cls.describe().items():
            if name in skip:
                continue
            allowed = f"; allowed: {info['allowed']}" if info["allowed"] else ""
            group.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg_{name}", default=_UNSET,
                               metavar=_metavar(info["type"]),
                               help=f"{info['help']} (default: {_show(info['default'])}"
                                    f"{allowed})")

    @classmethod
    def from_args(cls, args: argparse.Namespace, **fixed: Any) -> MethodConfig:
        """The config from parsed `add_arguments` flags (plus `fixed` values)."""
        values = dict(fixed)
        for f in dataclasses.fields(cls):
            raw = getattr(args, f"cfg_{f.name}", _UNSET)
            if raw is not _UNSET:
                values[f.name] = _parse_flag(raw, f.name, cls)
        return cls.from_mapping(values, source="the command line")


def _metavar(type_name: str) -> str:
    """INT, FLOAT, STR, BOOL; FLOAT,... for lists."""
    base = type_name.removesuffix(" or none")
    return f"{base.removeprefix('list of ').upper()},..." if base.startswith("list of ") else (
        base.upper())


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return f"{_type_name(args[0])} or none" if len(args) == 1 else " or ".join(
            _type_name(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return f"list of {_type_name(args[0])}"
    return getattr(hint, "__name__", str(hint))


def _allowed(f: dataclasses.Field) -> str:
    meta = f.metadata
    if meta.get("choices"):
        return " | ".join(map(str, meta["choices"]))
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return ""
    parts = []
    if low is not None:
        parts.append(f"{'>' if meta['low_open'] else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if meta['high_open'] else '<='} {high:g}")
    return " and ".join(parts)


def _parse_flag(raw: str, name: str, cls: type[MethodConfig]) -> Any:
    """A flag's text as the field's type: numbers, booleans, none, comma-separated lists."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional and raw.strip().lower() in ("none", "null", ""):
        return None
    base = args[0] if optional and len(args) == 1 else hint
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        return [_scalar(p.strip(), item) for p in raw.split(",") if p.strip()]
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        return _scalar(raw, float) if _is_number(raw) else raw
    return _scalar(raw, base)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _scalar(text: str, kind: Any) -> Any:
    if kind is bool:
        low = text.strip().lower()
        return {"true": True, "yes": True, "1": True, "false": False, "no": False,
                "0": False}.get(low, text)
    if kind in (int, float):
        try:
            number = float(text)
        except ValueError:
            return text  # the config's type check names the flag
        return int(number) if kind is int and number.is_integer() else number
    return text


def _coerce(cfg: MethodConfig, f: dataclasses.Field, hint: Any, value: Any) -> Any:
    """`value` as the field's type (lists as tuples, ints accepted for floats), else an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(cfg, f, arg, value)
            except ConfigError:
                continue
        raise cfg.error(f.name, f"expected {_type_name(hint)}, got {_describe(value)}")
    if origin is tuple:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise cfg.error(f.name, f"expected a list of {_type_name(args[0])}, got "
                                    f"{_describe(value)}")
        return tuple(_coerce(cfg, f, args[0], v) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise cfg.error(f.name, f"expected {_type_name(hint)}, got {_describe(value)}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"


def _check_bounds(cfg: MethodConfig, f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None:
        return
    items = value if isinstance(value, tuple) else (value,)
    choices = meta.get("choices")
    if choices is not None:
        bad = [v for v in items if v not in choices]
        if bad:
            raise cfg.error(f.name, f"{bad[0]!r} is not allowed; choose one of "
                                    f"{', '.join(map(str, choices))}")
    low, high = meta.get("low"), meta.get("high")
    for v in items:
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        if v != v:  # NaN
            raise cfg.error(f.name, "NaN is not allowed")
        if low is not None and (v <= low if meta["low_open"] else v < low):
            raise cfg.error(f.name, f"{v!r} is out of range; allowed: {_allowed(f)}")
        if high is not None and (v >= high if meta["high_open"] else v > high):
            raise cfg.error(f.name, f"{v!r} is out of range; allowed: {_allowed(f)}")
    check = meta.get("check")
    if check is not None:
        reason = check(value)
        if reason:
            raise cfg.error(f.name, reason)
