"""Units of the scenario language: sizes, durations and integers.

Sizes take a number of bytes (decimal or hex) with an optional binary unit
(`4KiB`, `2MiB`, `1GiB`); durations take `500ms`, `5s`, `2m` (or a bare number of
seconds); integers take decimal or hex. Each parser raises ValueError with a
message meant for the user; pydantic places it at the value's position.
pydantic turns ValueError (not TypeError) into a located validation error, which is
why type mismatches raise ValueError here too.
"""

from __future__ import annotations

import re

SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Decimal units people type by habit, mapped to what they most likely meant.
_SIZE_HINTS = {"k": "KiB", "kb": "KiB", "kib": "KiB", "m": "MiB", "mb": "MiB", "mib": "MiB",
               "g": "GiB", "gb": "GiB", "gib": "GiB", "t": "TiB", "tb": "TiB", "tib": "TiB",
               "b": "B"}

_NUMBER = r"(0[xX][0-9a-fA-F_]+|[0-9][0-9_]*)"
_SIZE_RE = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-z]*)\s*$")
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*$")


def _number(text: str) -> int:
    return int(text.replace("_", ""), 16 if text[:2].lower() == "0x" else 10)


def parse_int(value: object) -> int:
    """An integer from an int or a decimal/hex string (`0x1000`)."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")  # noqa: TRY004
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        neg = text.startswith("-")
        m = re.fullmatch(_NUMBER, text[1:] if neg else text)
        if m:
            n = _number(m.group(1))
            return -n if neg else n
    raise ValueError(f"expected an integer (decimal or 0x hex), got {value!r}")


def parse_size(value: object) -> int:
    """A byte count from an int, hex, or a number with a binary unit (`2MiB`)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")  # noqa: TRY004
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            number, unit = m.groups()
            if unit in SIZE_UNITS or unit == "":
                return _number(number) * SIZE_UNITS.get(unit, 1)
            hint = _SIZE_HINTS.get(unit.lower())
            if hint:
                raise ValueError(
                    f"bad size {value!r}: unit {unit!r} is not one of B, KiB, MiB, GiB, TiB"
                    f" (did you mean {number}{hint}?)"
                )
    raise ValueError(
        f"bad size {value!r}: use a number of bytes, 0x hex, or a unit of B, KiB, MiB, GiB, TiB"
    )


def parse_duration(value: object) -> float:
    """Seconds from a number or a string with a unit (`500ms`, `5s`, `2m`)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")  # noqa: TRY004
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m and m.group(2) in DURATION_UNITS:
            return float(m.group(1)) * DURATION_UNITS[m.group(2)]
        if m and m.group(2) == "":
            return float(m.group(1))
    raise ValueError(f"bad duration {value!r}: use a number with us, ms, s, m or h (e.g. 500ms, 5s)")


def format_size(n: int) -> str:
    """The shortest exact spelling of a size (`4KiB`, `3000`)."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]}{unit}"
    return str(n)
