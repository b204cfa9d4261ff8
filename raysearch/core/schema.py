"""Typed hyperparameters: each one's default, type and allowed values, checked before anything runs.

A component registry (optimizers, schedulers, losses, preprocessing steps, model families) supplies the
allowed names; `HParam.problem` says in a few words why a value is not allowed, so that a search space's
`choices`, range ends and `fixed` values, and a trial's resolved configuration, are refused with one line
naming the file and the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from raysearch.errors import ConfigError

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default, the Python types it takes, and its allowed names or range."""

    default: Any
    types: tuple[type, ...]
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    check: Check | None = None

    @property
    def numeric(self) -> bool:
        """Whether an int or float range may be searched for it."""
        return bool({int, float} & set(self.types)) and bool not in self.types

    @property
    def integral(self) -> bool:
        """Whether it takes whole numbers only."""
        return self.types == (int,)

    @property
    def kinds(self) -> str:
        """What it takes, in words: "a name", "an integer", "true or false or a name"."""
        types = [t for t in self.types if not (t is int and float in self.types)]  # a number includes integers
        return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed (a short phrase), or None when it is."""
        wrong_bool = isinstance(value, bool) and bool not in self.types
        if wrong_bool or not isinstance(value, self.types):
            return f"expected {self.kinds}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"unknown {value!r}; valid: {', '.join(str(c) for c in self.choices)}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                return f"must be a finite number, got {value!r}"
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                return f"must be {'>' if self.low_open else '>='} {self.low}, got {value!r}"
            if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
                return f"must be {'<' if self.high_open else '<='} {self.high}, got {value!r}"
        return self.check(value) if self.check is not None else None


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a name"}


def choice(default: str, names: Iterable[str]) -> HParam:
    """A name from a registry."""
    return HParam(default, (str,), choices=tuple(names))


def integer(default: int, low: int | None = None, high: int | None = None) -> HParam:
    """A whole number in [low, high]."""
    return HParam(default, (int,), low=low, high=high)


def real(default: float, low: float | None = None, high: float | None = None, *, low_open: bool = False,
         high_open: bool = False) -> HParam:
    """A number in the range (ends excluded where `*_open`)."""
    return HParam(default, (int, float), low=low, high=high, low_open=low_open, high_open=high_open)


def flag(default: bool) -> HParam:
    """True or false."""
    return HParam(default, (bool,))


def checked(default: Any, check: Check, types: tuple[type, ...] = (str,)) -> HParam:
    """A value that `check` accepts (it returns why not, or None), e.g. a model name looked up in timm."""
    return HParam(default, types, check=check)


def defaults_of(schema: Mapping[str, HParam]) -> dict[str, Any]:
    """The default of every hyperparameter of `schema`."""
    return {name: parameter.default for name, parameter in schema.items()}


def check_value(schema: Mapping[str, HParam], name: str, value: Any, where: str) -> None:
    """ConfigError `where: why` when `value` is not allowed for the hyperparameter `name`."""
    problem = schema[name].problem(value)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")


class HParams(Mapping[str, Any]):
    """A trial's configuration: every hyperparameter, validated against its schema, and read-only.

    It is a Mapping, so code that reads `hp["lr"]` or `hp.get(...)` needs no change; `dict(hp)` gives a
    plain copy (for YAML and JSON). Built from the defaults overlaid with the trial's values."""

    __slots__ = ("_values",)

    def __init__(self, schema: Mapping[str, HParam], values: Mapping[str, Any], *, where: str = "trial") -> None:
        unknown = sorted(set(values) - set(schema))
        if unknown:
            raise ConfigError(f"{where}: {unknown[0]}: unknown hyperparameter")
        resolved = {**defaults_of(schema), **values}
        for name, value in resolved.items():
            check_value(schema, name, value, f"{where}: {name}")
        self._values = resolved

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"HParams({self._values!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._values,))


def _rebuild(values: dict[str, Any]) -> HParams:
    """Unpickle an HParams (already validated where it was built) without its schema."""
    restored = HParams.__new__(HParams)
    restored._values = values
    return restored
