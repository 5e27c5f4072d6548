"""Durations as people write them: 90, "90s", "10m", "1h30m", "1d" — in the file and the environment alike."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
DECADE_S = 10 * 366 * 86400.0  # past any real wait, job or age: a time further off is a unit or stamp slip


def parse_duration(value: object) -> object:
    """Seconds from a duration string; numbers (and anything else) pass through for the float check."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower().replace(" ", "")
    if _NUMBER.fullmatch(text):
        return float(text)
    parts = _PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"{value!r} is not a duration; give seconds (90) or e.g. '90s', '10m', '1h30m'")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


Seconds = Annotated[float, BeforeValidator(parse_duration)]
"""A number of seconds that may also be written as a duration string."""
