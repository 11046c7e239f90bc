"""Units of the scenario language: sizes, durations and integers.

Sizes take a number of bytes (decimal or hex) with an optional binary unit
(`4KiB`, `2MiB`, `1GiB`); durations take `500ms`, `5s`, `2m` (or a bare number of
seconds); integers take decimal or hex. Each parser raises ValueError with a
message meant for the user; pydantic places it at the value's position.
pydantic turns ValueError (not TypeError) into a located validation error, which is
why type mismatches raise ValueError here too.

Every value has a bound: integers are checked for their C type (`fits`), sizes are
u64, durations are finite and at most MAX_DURATION. Number text is never longer than
a 64-bit value can be before it is converted (Python refuses int() of more than 4,300
digits with an error no user should see).
"""

from __future__ import annotations

import math
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


MAX_DURATION = 24 * 3600.0  # seconds: a day; no step or case needs longer
C_TYPES = {"u8": (0, (1 << 8) - 1), "u16": (0, (1 << 16) - 1), "u32": (0, (1 << 32) - 1),
           "u64": (0, (1 << 64) - 1), "s32": (-(1 << 31), (1 << 31) - 1)}
_MAX_DIGITS = 24  # of a number's text, underscores aside: 20 decimal digits hold a u64


def show(value: object, keep: int = 60) -> str:
    """repr() of a value for a message, cut when long (a template can make 1 MiB strings)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= keep else f"{text[:keep]}… ({len(text)} characters)"


def _number(text: str) -> int:
    digits = text.replace("_", "")
    hexa = digits[:2].lower() == "0x"
    if len(digits) - (2 if hexa else 0) > _MAX_DIGITS:
        raise ValueError(f"{show(text)} has more digits than any 64-bit value")
    return int(digits, 16 if hexa else 10)


def fits(ctype: str, value: int) -> int:
    """`value` if it is within the C type `ctype` (u8 … u64, s32), else ValueError."""
    low, high = C_TYPES[ctype]
    if not low <= value <= high:
        shown = show(value) if value.bit_length() > 128 else (
            f"{value:#x}" if value > 0xffff else str(value))
        span = f"0 to {high:#x}" if low == 0 else f"{low} to {high}"
        raise ValueError(f"{shown} does not fit in {ctype} ({span})")
    return value


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
    raise ValueError(f"expected an integer (decimal or 0x hex), got {show(value)}")


def parse_size(value: object) -> int:
    """A byte count from an int, hex, or a number with a binary unit (`2MiB`)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")  # noqa: TRY004
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {show(value)}")
        return fits("u64", value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            number, unit = m.groups()
            if unit in SIZE_UNITS or unit == "":
                return fits("u64", _number(number) * SIZE_UNITS.get(unit, 1))
            hint = _SIZE_HINTS.get(unit.lower())
            if hint:
                raise ValueError(
                    f"bad size {show(value)}: unit {unit!r} is not one of B, KiB, MiB, GiB, TiB"
                    f" (did you mean {number}{hint}?)"
                )
    raise ValueError(
        f"bad size {show(value)}: use a number of bytes, 0x hex, or a unit of B, KiB, MiB, GiB, "
        "TiB"
    )


def parse_duration(value: object) -> float:
    """Seconds from a number or a string with a unit (`500ms`, `5s`, `2m`)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")  # noqa: TRY004
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {show(value)}")
        return _at_most_a_day(float(value) if value <= MAX_DURATION else math.inf, value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m and (m.group(2) in DURATION_UNITS or m.group(2) == ""):
            number = m.group(1)
            if len(number) > _MAX_DIGITS:  # float() would take it; nobody means it
                raise ValueError(f"bad duration {show(value)}: more digits than any duration")
            seconds = float(number) * DURATION_UNITS.get(m.group(2), 1.0)
            return _at_most_a_day(seconds, value)
    raise ValueError(f"bad duration {show(value)}: use a number with us, ms, s, m or h "
                     "(e.g. 500ms, 5s)")


def _at_most_a_day(seconds: float, value: object) -> float:
    if seconds > MAX_DURATION:
        raise ValueError(f"duration {show(value)} is longer than the maximum of 24h "
                         f"({MAX_DURATION:g} s)")
    return seconds


def format_size(n: int) -> str:
    """The shortest exact spelling of a size (`4KiB`, `3000`)."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]}{unit}"
    return str(n)
