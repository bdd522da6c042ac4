"""Coercers for ``usage.Options`` parameters shared by the daemons and commands."""

from __future__ import annotations

import datetime
import re
from typing import Any, Mapping

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


positive_int.coerceDoc = "A positive whole number."  # type: ignore[attr-defined]
positive_float.coerceDoc = "A positive number."  # type: ignore[attr-defined]
duration.coerceDoc = "A duration: 90s, 30m, 12h, 90d."  # type: ignore[attr-defined]


def same_named(options: Mapping[str, Any], *fields: str) -> dict[str, Any]:
    """The values of the options named like these settings fields (``drain_timeout`` is
    ``--drain-timeout``), as keyword arguments for the settings."""
    return {field: options[field.replace("_", "-")] for field in fields}
