"""Argument checks shared by the sources and configs; errors name the field and the range."""

from __future__ import annotations

import math


def check_number(field: str, value: object, *, low: float, high: float, allow_none: bool = False,
                 low_inclusive: bool = False) -> float | None:
    """Validate a real number in ``(low, high]`` (or ``[low, high]`` with ``low_inclusive``).

    Returns the value as float (or None when allowed and given).

    Raises:
        ValueError: naming ``field``, the allowed range and the value received.
    """
    opening = "[" if low_inclusive else "("
    allowed = f"a number in {opening}{low:g}, {high:g}]" + (" or None" if allow_none else "")
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{field} must be {allowed}; got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be {allowed}; got {value!r}")
    number = float(value)
    above_low = number >= low if low_inclusive else number > low
    if math.isnan(number) or not above_low or number > high:
        raise ValueError(f"{field} must be {allowed}; got {value!r}")
    return number


def check_int(field: str, value: object, *, low: int, high: int, allow_none: bool = False) -> int | None:
    """Validate an integer in ``[low, high]`` (bools are refused).

    Raises:
        ValueError: naming ``field``, the allowed range and the value received.
    """
    allowed = f"an integer in [{low}, {high}]" + (" or None" if allow_none else "")
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{field} must be {allowed}; got None")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field} must be {allowed}; got {value!r}")
    return int(value)


def check_timeout(field: str, value: object) -> float | None:
    """A timeout in seconds: a number in (0, 86400] or None (wait forever)."""
    return check_number(field, value, low=0.0, high=86400.0, allow_none=True)
