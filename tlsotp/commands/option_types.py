"""Coercers for ``usage.Options`` parameters shared by the daemons and commands."""

from __future__ import annotations

import datetime
import re
from typing import Any, Callable, Mapping

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def duration(text: str) -> datetime.timedelta:
    """A positive duration written as 90s, 30m, 12h or 90d (a bare number is seconds)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 12h or 90d")
    value = datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if value <= datetime.timedelta(0):
        raise ValueError("a duration must be longer than 0 s")
    return value


_SPAN = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def span_in(bare_unit: str, *, whole: bool = False) -> Callable[[str], float]:
    """A coercer for a positive duration option, given in ``bare_unit`` ("s", "h" or "d").

    It accepts the duration syntax (90s, 30m, 1h, 7d) and a bare number, which means
    ``bare_unit`` as the option always has (so ``--crl-hours 12`` stays 12 hours), and returns the
    value in ``bare_unit`` — a float, or an int when ``whole`` (then it must come out whole)."""
    unit_seconds = _UNITS[bare_unit]
    unit_name = {"s": "seconds", "h": "hours", "d": "days"}[bare_unit]

    def coerce(text: str) -> float:
        match = _SPAN.fullmatch(text.strip().lower())
        if match is None:
            raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 1h or 7d (a bare number is {unit_name})")
        number, suffix = float(match.group(1)), match.group(2)
        value = number if not suffix else number * _UNITS[suffix] / unit_seconds
        if not value > 0:
            raise ValueError("a duration must be longer than 0 s")
        if whole:
            if value != int(value):
                raise ValueError(f"{text!r} is not a whole number of {unit_name}")
            return int(value)
        return value

    coerce.coerceDoc = f"A duration: 90s, 30m, 1h, 7d; a bare number is {unit_name}."  # type: ignore[attr-defined]
    return coerce


#: Durations whose bare number means seconds (``--timeout 20``, ``--crl-refresh 5m``).
seconds = span_in("s")
#: Durations in whole seconds (``--otp-ttl 300`` or ``--otp-ttl 5m``).
whole_seconds = span_in("s", whole=True)
#: Durations whose bare number means hours (``--crl-hours 24`` or ``--crl-hours 1d``).
hours = span_in("h")
#: Durations in whole days (``--cert-days 7``, ``--cert-days 7d`` or ``--cert-days 168h``).
whole_days = span_in("d", whole=True)

positive_int.coerceDoc = "A positive whole number."  # type: ignore[attr-defined]
positive_float.coerceDoc = "A positive number."  # type: ignore[attr-defined]
duration.coerceDoc = "A duration: 90s, 30m, 12h, 90d."  # type: ignore[attr-defined]


def same_named(options: Mapping[str, Any], *fields: str) -> dict[str, Any]:
    """The values of the options named like these settings fields (``drain_timeout`` is
    ``--drain-timeout``), as keyword arguments for the settings."""
    return {field: options[field.replace("_", "-")] for field in fields}
