"""The one exception hierarchy of the engine.

The CLI turns these into messages and exit codes in one place (cli.py); nothing
else prints a traceback to the user.
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass

# The kernel's spelling where Python's errno table picks another alias of the same number.
_KERNEL_SPELLING = {_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN",
                    _errno.EDEADLK: "EDEADLK"}
# Every errno name Python knows, aliases included, to its number.
# The faults the probe turns into an outcome name, beside the errno names.
SIGNALS = ("SIGBUS", "SIGSEGV")
ERRNO_NUMBERS = {n: getattr(_errno, n) for n in dir(_errno)
                 if n.startswith("E") and isinstance(getattr(_errno, n), int)}


# errno number -> the kernel's name for it (one lookup: loops of thousands of expected
# refusals ask for it)
_NAMES = {**_errno.errorcode, **_KERNEL_SPELLING}


def errno_name(err: int) -> str:
    """The name the kernel uses for errno `err` (EOPNOTSUPP, not ENOTSUP)."""
    return _NAMES.get(err) or f"E{err}"


def canonical_errno_name(name: str) -> str:
    """One spelling per number, so `expect: ENOTSUP` and EOPNOTSUPP compare equal."""
    number = ERRNO_NUMBERS.get(name)
    return errno_name(number) if number is not None else name


class ExitCode:
    """Exit statuses of every command (README.md lists them)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    ENVIRONMENT = 3
    NOTHING_SELECTED = 5


@dataclass(frozen=True)
class Location:
    """A position in a scenario file; line and column are 1-based."""

    path: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}:{self.col or 1}"
        return self.path


class VfioScenarioError(Exception):
    """Base of every error the engine raises on purpose."""

    exit_code = ExitCode.FAILED


class ScenarioError(VfioScenarioError):
    """One problem in a scenario file, at a location."""

    exit_code = ExitCode.USAGE

    def __init__(self, location: Location, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.message = message


class ScenarioErrors(VfioScenarioError):
    """Every problem found in one or more files (validation reports them all)."""

    exit_code = ExitCode.USAGE

    def __init__(self, errors: list[ScenarioError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class UsageError(VfioScenarioError):
    """Bad command-line use."""

    exit_code = ExitCode.USAGE


class EnvironmentProblem(VfioScenarioError):
    """No device and no testbed could be had, or the host lacks a tool."""

    exit_code = ExitCode.ENVIRONMENT


class NothingSelected(VfioScenarioError):
    """The paths and filters selected no case."""

    exit_code = ExitCode.NOTHING_SELECTED


class VfioError(VfioScenarioError):
    """A failed ioctl or system call of the uapi layer.

    `errno_name` (e.g. "EINVAL") is what a step's `expect:` compares against.
    """

    # the message, made when it is first asked for (str()): a loop's expected refusals,
    # thousands of them, are compared by `errno_name` and never printed
    _message: str | None = None

    def __init__(self, err: int, op: str, handle: str = "", detail: str = "") -> None:
        super().__init__(err, op, handle, detail)
        self.errno = err
        self.errno_name = errno_name(err)
        self.op = op
        self.handle = handle
        self.detail = detail

    def __str__(self) -> str:
        if self._message is None:
            where = f" on {self.handle}" if self.handle else ""
            extra = f": {self.detail}" if self.detail else ""
            self._message = (f"{self.op}{where} failed with {self.errno_name} "
                             f"({os.strerror(self.errno)}){extra}")
        return self._message
