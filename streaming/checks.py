"""The one set of argument checks every config and source uses; errors name the field and the range.

It imports only the standard library, so every layer (streaming, compression, memory, app, ui) may use it.
Each check returns the value it accepted and raises ``error`` (``ValueError`` unless the caller passes its
own class, e.g. ``error=ConfigError``) with a message in one style::

    window_tokens must be an integer in [16, 1000000]; got 8
    tau must be a number in (-1.0, 1.0]; got 1.5
    top_k must be an integer >= 0 or None; got -1
    drop must be one of off, feature, pixel, budget; got 'magic'
    rerank must be true or false; got 'yes'

Bounds are printed as the caller wrote them (``0`` and ``0.0`` read differently), so pass them in the
type the message should show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["check_bool", "check_choice", "check_int", "check_number", "check_timeout", "describe_range"]


def describe_range(low: float | None, high: float | None, *, low_inclusive: bool = True,
                   high_inclusive: bool = True) -> str:
    """``[low, high]``, ``(low, high]``, ``>= low``, ``> low``, ``<= high`` ... as the messages print it."""
    if low is not None and high is not None:
        return f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
    if low is not None:
        return f"{'>=' if low_inclusive else '>'} {low}"
    if high is not None:
        return f"{'<=' if high_inclusive else '<'} {high}"
    return "finite"


def _allowed(kind: str, low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool,
             allow_none: bool) -> str:
    rng = describe_range(low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive)
    if low is not None and high is not None:
        text = f"{kind} in {rng}"
    elif low is None and high is None:
        text = f"a finite {kind.split()[-1]}" if kind else "finite"
    else:
        text = f"{kind} {rng}"
    return text.strip() + (" or None" if allow_none else "")


def _in_range(number: float, low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> bool:
    if low is not None and not (number >= low if low_inclusive else number > low):
        return False
    if high is not None and not (number <= high if high_inclusive else number < high):
        return False
    return True


def check_int(field: str, value: object, *, low: int | None = None, high: int | None = None, allow_none: bool = False,
              error: type[Exception] = ValueError, kind: str = "an integer") -> int | None:
    """Validate an integer in ``[low, high]`` (either end may be None = unbounded); bools are refused.

    Args:
        field: the name the message starts with (``"window_tokens"``, ``"BankConfig.hnsw_m"``, ``"--repeat"``).
        kind: how the message names the type (``"an integer"``; memory's configs say ``"an int"``;
            ``""`` leaves it out: ``"--repeat must be in [1, 100]"``).

    Returns:
        ``int(value)``, or None when ``allow_none`` and ``value is None``.

    Raises:
        error: ``"{field} must be an integer in [low, high]; got {value!r}"``.
    """
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int) and _in_range(value, low, high, True, True)
    if not ok:
        raise error(f"{field} must be {_allowed(kind, low, high, True, True, allow_none)}; got {value!r}")
    return int(value)  # type: ignore[arg-type]


def check_number(field: str, value: object, *, low: float | None = None, high: float | None = None,
                 allow_none: bool = False, low_inclusive: bool = False, high_inclusive: bool = True,
                 error: type[Exception] = ValueError, kind: str = "a number") -> float | None:
    """Validate a finite real number between ``low`` and ``high`` (``(low, high]`` by default).

    ``low_inclusive=True`` closes the low end (``[low, high]``), ``high_inclusive=False`` opens the high end;
    either bound may be None (unbounded; NaN and infinities are always refused). Bools are refused.
    ``kind`` names the type in the message as in :func:`check_int`.

    Returns:
        ``float(value)``, or None when ``allow_none`` and ``value is None``.

    Raises:
        error: ``"{field} must be a number in (low, high]; got {value!r}"``.
    """
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        number = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(number) and _in_range(number, low, high, low_inclusive, high_inclusive)
    if not ok:
        allowed = _allowed(kind, low, high, low_inclusive, high_inclusive, allow_none)
        raise error(f"{field} must be {allowed}; got {value!r}")
    return number


def check_choice(field: str, value: object, choices: Sequence[object], *, allow_none: bool = False,
                 error: type[Exception] = ValueError) -> object:
    """Validate that ``value`` is one of ``choices``: equal and of the same type (``True`` is not ``1``,
    ``16.0`` is not ``16``; any ``str`` matches a ``str`` choice).

    Raises:
        error: ``"{field} must be one of a, b, c; got {value!r}"``.
    """
    if value is None and allow_none:
        return None
    ok = any(value == c and (type(value) is type(c) or (isinstance(value, str) and isinstance(c, str)))
             for c in choices)
    if not ok:
        listed = ", ".join(map(str, choices)) + (" or None" if allow_none else "")
        raise error(f"{field} must be one of {listed}; got {value!r}")
    return value


def check_bool(field: str, value: object, *, error: type[Exception] = ValueError) -> bool:
    """Validate a real bool (not 0/1, not "true").

    Raises:
        error: ``"{field} must be true or false; got {value!r}"``.
    """
    if not isinstance(value, bool):
        raise error(f"{field} must be true or false; got {value!r}")
    return value


def check_timeout(field: str, value: object, *, error: type[Exception] = ValueError) -> float | None:
    """A timeout in seconds: a number in (0.0, 86400.0] or None (wait forever)."""
    return check_number(field, value, low=0.0, high=86400.0, allow_none=True, error=error)
