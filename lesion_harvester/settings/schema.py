"""Settings dataclasses checked where they are declared: a field's range is part of its type.

A setting states what it accepts beside its default, and a type shared by many settings states it once::

    Score = Annotated[float, number_between(0, 1, "a score")]

    @dataclass(frozen=True)
    class StackConfig(...):
        score_threshold: Score = 0.1
        link_iou: Annotated[float, number_between(0, 1, "an IoU")] = 0.8

:func:`check_settings` is the one checker. The plain type hints say what a conversion from YAML
cannot (a ``Literal`` field holds one of its values, a float is finite, a ``tuple[float, float]``
has two items) and each field's :class:`Rule` the rest; a problem is one line naming the key and
what it accepts (``"expected an integer >= 1, got 0"``). :func:`from_dict` builds a dataclass from
plain data (a YAML file, a checkpoint) with the same checks and the file named in the error.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from lesion_harvester.errors import ConfigError


class InvalidSetting(ConfigError):
    """A setting out of its choices or range: ``key`` (within its section) and ``problem``."""

    def __init__(self, section: str, key: str, problem: str):
        self.section, self.key, self.problem = section, key, problem
        super().__init__(f"{dotted(section, key)}: {problem}")

    def __reduce__(self):  # so that it crosses process boundaries (loader workers) intact
        return InvalidSetting, (self.section, self.key, self.problem)


@dataclass(frozen=True)
class Rule:
    """What a setting accepts, as the ``Annotated`` metadata of its type: ``test(value)`` is true for
    a valid value, ``expects`` says what a valid value is ("an integer >= 1") for the error."""

    test: Callable[[Any], bool]
    expects: str
    # checked when settings are read (YAML, --set, checkpoints) but not when built in code
    at_load: bool = False

    def problem(self, value) -> str | None:
        try:
            valid = bool(self.test(value))
        except (TypeError, ValueError):
            valid = False
        return None if valid else f"expected {self.expects}, got {show(value)}"


def when_read(rule: Rule) -> Rule:
    """``rule``, checked only when settings are read, not when a section is built in code."""
    return dataclasses.replace(rule, at_load=True)


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def at_least(n: int) -> Rule:
    return Rule(lambda v: is_int(v) and v >= n, f"an integer >= {n}")


def int_between(low: int, high: int, what: str = "an integer") -> Rule:
    return Rule(lambda v: is_int(v) and low <= v <= high, f"{what} in [{low}, {high}]")


def number_between(low: float, high: float, what: str = "a number", open_low: bool = False,
                   open_high: bool = False) -> Rule:
    def test(v) -> bool:
        return is_number(v) and (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    return Rule(test, f"{what} in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}")


def ordered_pair(minimum: float, expects: str, strict: bool = False) -> Rule:
    """A range to draw from: [low, high] with low <= high and low >= ``minimum`` (> with ``strict``)."""
    def test(v) -> bool:
        return (isinstance(v, (tuple, list)) and len(v) == 2 and all(map(is_number, v))
                and (v[0] > minimum if strict else v[0] >= minimum) and v[0] <= v[1])

    return Rule(test, expects)


def each(test: Callable[[Any], bool], expects: str) -> Rule:
    """One or more items, each passing ``test``."""
    return Rule(lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(map(test, v)), expects)


# --- the checker ---------------------------------------------------------------------------------


@functools.cache
def plain_hints(cls) -> dict[str, Any]:
    """The type hints of ``cls`` without their rules (``Annotated[int, ...]`` -> ``int``)."""
    return typing.get_type_hints(cls)


@functools.cache
def field_rules(cls) -> dict[str, tuple[Rule, ...]]:
    """The rules each field of ``cls`` declares on its type."""
    out = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        if typing.get_origin(hint) is Annotated:
            rules = tuple(m for m in hint.__metadata__ if isinstance(m, Rule))
            if rules:
                out[name] = rules
    return out


def check_settings(obj, at_load: bool = False) -> tuple[str, str] | None:
    """The first invalid setting of a section dataclass as ``(key, problem)``, or None.

    Driven by the type hints (choices, finite floats, tuple lengths) and by the :class:`Rule` each
    field declares (with ``at_load``, also those checked only when settings are read).
    """
    hints, rules = plain_hints(type(obj)), field_rules(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        problem = _hint_problem(value, hints[f.name])
        for rule in rules.get(f.name, ()):
            if problem is None and (at_load or not rule.at_load):
                problem = rule.problem(value)
        if problem is not None:
            return f.name, problem
    return None


def _hint_problem(value, hint) -> str | None:
    """What is wrong with ``value`` for type hint ``hint`` as far as a conversion cannot tell: a choice
    that is not one of the ``Literal``'s values, a float that is NaN or infinite, a tuple of the wrong
    length."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if not any(type(value) is type(a) and value == a for a in allowed):
            return f"{show(value)} is not one of {', '.join(repr(a) for a in allowed)}"
    elif origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is not None and options:
            return _hint_problem(value, options[0])
    elif origin is tuple and isinstance(value, (tuple, list)):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            return f"expected a list of {len(args)} values, got {show(value)}"
        for item, item_hint in zip(value, args):
            problem = _hint_problem(item, item_hint)
            if problem is not None:
                return f"{problem} (in {show(value)})"
    elif hint is float and isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {show(value)}"
    return None


@functools.cache
def sections(root) -> dict[str, type]:
    """The sections of a root dataclass: field name (``lpg_train``) -> its dataclass (``LPGTrainConfig``)."""
    hints = plain_hints(root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root) if dataclasses.is_dataclass(hints[f.name])}


# --- plain data in and out -----------------------------------------------------------------------


def dotted(*keys: str) -> str:
    return ".".join(k for k in keys if k)


def located(where: str, key: str) -> str:
    return f"{where}: {key}" if key else where


def show(value) -> str:
    """A value as a user wrote it in YAML (lists for tuples, null, true/false)."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _convert(value, annotation, where: str, key: str):
    at = located(where, key)
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where, key)
    if origin is Literal:  # checked with the other choices as the dataclass is built
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{at}: expected a list, got {show(value)}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else float
        return tuple(_convert(v, item_type, where, key) for v in value)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], where, key)
    if annotation is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 1e-4 (no dot) as text
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{at}: expected a number, got {show(value)}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{at}: expected an integer, got {show(value)}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{at}: expected true or false, got {show(value)}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{at}: expected a string, got {show(value)}")
        return value
    return value


def from_dict(cls, data: dict | None, where: str = "config", key: str = ""):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys, wrong types, choices that are not
    among their values and numbers out of their range (:func:`check_settings`, with the rules
    checked only when settings are read).

    Errors are one line, ``"{where}: {key}: {problem}"``: ``where`` names the file (or preset),
    ``key`` is the dotted path of the setting below it (``key``, if given, is that of ``cls``).
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{located(where, key)}: expected a mapping, got {type(data).__name__}")
    hints = plain_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise ConfigError(f"{located(where, key)}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    kwargs = {k: _convert(v, hints[k], where, dotted(key, k)) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
        problem = check_settings(obj, at_load=True)
    except InvalidSetting as exc:
        problem = (exc.key, exc.problem)
    if problem is not None:
        raise ConfigError(f"{located(where, dotted(key, problem[0]))}: {problem[1]}") from None
    return obj


def to_dict(obj) -> dict:
    """A dataclass as plain YAML-ready data (tuples as lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(obj)
