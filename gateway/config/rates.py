"""Rates written as text (``60/minute``, ``1000/hour``, ``5/10s``), parsed once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Rate", "parse_rate"]

_UNITS: Final[dict[str, float]] = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_RATE: Final = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` events per `period_s` seconds."""

    count: int
    period_s: float
    text: str

    @property
    def policy_name(self) -> str:
        """A token usable as an IETF RateLimit policy name, e.g. ``60-per-60s``."""
        return f"{self.count}-per-{self.period_s:g}s"


def parse_rate(text: str) -> Rate:
    """Parse ``N/unit`` or ``N/<k><unit>``; raise ValueError with a readable reason."""
    match = _RATE.match(text.lower()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f'expected a rate like "60/minute", got {text!r}')
    count, multiple, unit = match.groups()
    if unit not in _UNITS:
        raise ValueError(f"unknown time unit {unit!r} in {text!r} (second, minute, hour, day)")
    period = _UNITS[unit] * (float(multiple) if multiple else 1.0)
    if int(count) < 1 or period <= 0:
        raise ValueError(f"a rate needs a positive count and period, got {text!r}")
    return Rate(count=int(count), period_s=period, text=text.strip())
