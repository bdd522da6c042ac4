"""Coercers for ``usage.Options`` parameters shared by the daemons and commands."""

from __future__ import annotations


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


positive_int.coerceDoc = "A positive whole number."  # type: ignore[attr-defined]
positive_float.coerceDoc = "A positive number."  # type: ignore[attr-defined]
