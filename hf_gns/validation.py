"""Argument checks shared by the public constructors.

Each check raises ValueError with a message that names the argument, the value given and
what is accepted, so a wrong setting fails where it is written, not steps into training.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, NoReturn


def fail(name: str, value: Any, accepted: str, hint: str = "") -> NoReturn:
    """Raise the ValueError every check raises: ``name must be ACCEPTED, got VALUE[; HINT]``."""
    raise ValueError(f"{name} must be {accepted}, got {value!r}" + (f"; {hint}" if hint else ""))


def is_finite_number(value: Any) -> bool:
    """A finite int or float, bools excluded (a logged value that can be shown or plotted)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An integer, bools excluded."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number, bools excluded."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """``value`` is one of ``choices``."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        fail(name, value, "one of " + ", ".join(repr(c) for c in choices))


def check_int(name: str, value: Any, minimum: int, optional: bool = False, hint: str = "") -> None:
    """``value`` is an integer >= ``minimum`` (or None, when ``optional``)."""
    if optional and value is None:
        return
    if not is_int(value) or value < minimum:
        fail(name, value, ("None or " if optional else "") + f"an integer >= {minimum}", hint)


def check_positive_int(name: str, value: Any, optional: bool = False) -> None:
    """``value`` is an integer >= 1 (or None, when ``optional``)."""
    check_int(name, value, 1, optional)


def check_number(name: str, value: Any, minimum: float = 0.0, strict: bool = True, optional: bool = False) -> None:
    """``value`` is a finite number > ``minimum`` (>= when not ``strict``; or None, when ``optional``)."""
    if optional and value is None:
        return
    if not is_number(value) or not math.isfinite(value) or value < minimum or (strict and value == minimum):
        fail(name, value, ("None or " if optional else "") + f"a finite number {'>' if strict else '>='} {minimum:g}")


def check_fraction(name: str, value: Any) -> None:
    """``value`` is a number strictly between 0 and 1."""
    if not is_number(value) or not 0.0 < value < 1.0:
        fail(name, value, "a number in the open interval (0, 1)")


def check_type(name: str, value: Any, kind: type | tuple[type, ...], accepted: str) -> None:
    """``value`` is an instance of ``kind`` (``accepted`` says so in words)."""
    if not isinstance(value, kind):
        fail(name, value, accepted)
