"""Numbers written the way papers write them: ``8/255``, ``5e-4``, ``0.5``.

PyYAML reads ``5e-4`` (no dot) and ``8/255`` as strings; configs accept both forms for any
float field, so eps values can be written exactly as in the papers.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Any

from pydantic import BeforeValidator


def parse_number(value: Any) -> Any:
    """Turn ``"8/255"``, ``"5e-4"`` or ``"1_000"`` into a float; leave other values alone."""
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                return float(Fraction(float(num.strip())) / Fraction(float(den.strip())))
            return float(text)
        except (ValueError, ZeroDivisionError):
            return value  # let pydantic report "not a valid number" with the key path
    return value


Number = Annotated[float, BeforeValidator(parse_number)]


def format_eps(eps: float, norm: str) -> str:
    """Human label for an eps: ``8/255`` for Linf multiples of 1/255, else ``0.5``."""
    if norm == "linf" and eps > 0:
        k = eps * 255
        if abs(k - round(k)) < 1e-6:
            return f"{int(round(k))}/255"
    return f"{eps:g}"
