"""Amounts people read and type: sizes, CPUs and CPT, each parsed and formatted in one place.

Money is integers only: 1 CPT = 1,000,000 micro-CPT, and no float ever touches it.
"""

from __future__ import annotations

import re
from decimal import Decimal, DecimalException, InvalidOperation

from hivemind_cluster.core.errors import InvalidInput

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIB = 1 << 20  # the unit most limits are written in
MAX_BYTES = 1 << 60  # an exbibyte: far beyond any machine, well inside int64
MAX_CPU_MILLIS = 1 << 40


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1.5GiB``, ``1048576`` → bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise InvalidInput(f"size {text[:30]!r} is not like 512M, 2G or 1048576")
    size = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not size < MAX_BYTES:
        raise InvalidInput(f"size {text[:30]!r} is more than any machine has")
    return int(size)


def parse_cpus(text: str) -> int:
    """``2``, ``0.5``, ``500m`` → millicores."""
    value = text.strip()
    try:
        millis = int(value[:-1]) if value.endswith("m") else round(float(value) * 1000)
    except (ValueError, OverflowError):  # OverflowError: inf
        raise InvalidInput(f"CPU amount {text[:30]!r} is not like 2, 0.5 or 500m") from None
    if not 0 < millis < MAX_CPU_MILLIS:
        raise InvalidInput(f"CPU amount {text[:30]!r} must be positive, within reason")
    return millis


def format_bytes(n: int, exact: bool = False) -> str:
    """``n`` in the largest binary unit it reaches: "1.5 KiB", "999 MiB", "1000 MiB".

    ``exact`` is for limits, which must not be rounded: a whole number of that unit
    ("16 MiB"), else the bytes ("1048586 bytes").
    """
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and exact:
            return f"{n // size} {unit}" if n % size == 0 else f"{n} bytes"
        if n >= size:
            value = n / size  # under 1024, so 3 significant digits, or whole from 1000 up
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{n} bytes" if exact else f"{n} B"


def format_duration(seconds: int) -> str:
    """A span people read in a message: "7 days", "36 hours", "30 minutes", "1 second".

    The largest unit that gives at least 2 of it, so "90 minutes", never a rounded "1 hour"
    or a "0 hours"; whole units, rounded down (a retention is never shown longer than it is).
    """
    seconds = max(0, int(seconds))
    for unit, length in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * length:
            return f"{seconds // length} {unit}"
    return "1 second" if seconds == 1 else f"{seconds} seconds"


MICRO = 1_000_000
MAX_AMOUNT = 10**18 - 1


def format_cpt(micro: int) -> str:
    """``1500000`` → ``"1.5"``: CPT with up to 6 decimals, exact."""
    whole, fraction = divmod(abs(micro), MICRO)
    text = f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")
    return ("-" if micro < 0 else "") + text


def parse_cpt(text: str) -> int:
    """``"1.5"`` → ``1500000``; more than 6 decimals, signs or garbage are refused."""
    try:
        if len(text) > 60:
            raise InvalidOperation
        value = Decimal(text.strip())
        if not value.is_finite() or abs(value.adjusted()) > 30:  # NaN, inf, 1e999999999
            raise InvalidOperation
        micro = value * MICRO
    except DecimalException:
        raise InvalidInput(f"amount {text[:30]!r} is not a number of CPT") from None
    if micro != micro.to_integral_value():
        raise InvalidInput(f"amount {text[:30]!r} has more than 6 decimals")
    if micro <= 0:
        raise InvalidInput(f"amount {text[:30]!r} must be positive")
    if micro > MAX_AMOUNT:
        raise InvalidInput(f"amount {text[:30]!r} is more than the whole supply")
    return int(micro)
