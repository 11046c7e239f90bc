"""Byte patterns for filling and checking memory (computed in C: fast enough for benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass

from vfio_scenario.uapi._vfio import ffi, lib

NAMED = {
    "zero": lib.VS_PAT_ZERO,
    "ones": lib.VS_PAT_ONES,
    "incrementing": lib.VS_PAT_INCREMENTING,
    "random": lib.VS_PAT_RANDOM,
}


@dataclass(frozen=True)
class Pattern:
    """`kind` is zero | ones | incrementing | random, or an integer byte value.

    Byte i of a pattern depends only on (kind, seed, i): `fill` and `check` of the
    same (offset, size) agree, and a sub-range can be checked with `first`.
    """

    kind: str | int
    seed: int = 0

    def _code(self) -> tuple[int, int]:
        if isinstance(self.kind, int):
            if not 0 <= self.kind <= 0xFF:
                raise ValueError(f"pattern byte {self.kind} outside 0..255")
            return lib.VS_PAT_BYTE, self.kind
        if self.kind not in NAMED:
            raise ValueError(f"unknown pattern {self.kind!r}; one of {sorted(NAMED)} or a byte")
        return NAMED[self.kind], 0

    def fill(self, ptr: object, size: int, first: int = 0) -> None:
        """Write `size` bytes of the pattern at cffi pointer `ptr` (pattern index `first`)."""
        code, byte = self._code()
        lib.vs_fill(ffi.cast("uint8_t *", ptr), size, code, self.seed, byte, first)

    def check(self, ptr: object, size: int, first: int = 0) -> int | None:
        """Offset of the first byte that differs from the pattern, or None."""
        code, byte = self._code()
        bad: int = lib.vs_check(ffi.cast("uint8_t *", ptr), size, code, self.seed, byte, first)
        return None if bad < 0 else bad

    def expected(self, size: int, first: int = 0) -> bytes:
        """The pattern's bytes, for messages and for tests."""
        buf = ffi.new("uint8_t[]", max(size, 1))
        self.fill(buf, size, first)
        return bytes(ffi.buffer(buf, size))


def compare(a: object, b: object, size: int) -> int | None:
    """Offset of the first differing byte of two cffi pointers, or None."""
    bad: int = lib.vs_compare(ffi.cast("uint8_t *", a), ffi.cast("uint8_t *", b), size)
    return None if bad < 0 else bad
