"""A warm guest engine: a process that has imported the engine, made the payload's
models, registered the operations and imported the scenario drivers once, and forks
a run from there.

A fresh `python -m vfio_scenario.run.guest` pays, before its first case, the Python
start, the engine's imports, the models (run/guest_models.py), the operations'
registration and reading the kernel's config; under TCG that is most of what a light
scenario file costs end to end (benchmarks/guest_profile.py). `preload()` does all of
that in this process; each run is then a fork of it (`fork_run`), which inherits it
all, and each case a fork of the run, as always: a case that corrupts its process's
state affects neither the run nor the next case, and a run neither the next run.

The models are made per content (guest_models.build's key): a payload of the same
checkout reuses them; one of other models (another checkout) is refused by
guest_models.install in the forked run, which then runs the engine in a fresh Python.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence

# the guest engine's modules that do not need the models (imported before them)
WARM_MODULES = (
    "vfio_scenario.drivers.base", "vfio_scenario.run.devstate", "vfio_scenario.run.executor",
    "vfio_scenario.run.guest", "vfio_scenario.run.interpreter",
    "vfio_scenario.run.kernel_watch", "vfio_scenario.run.plan", "vfio_scenario.run.probe",
    "vfio_scenario.run.session", "vfio_scenario.uapi.capabilities",
)


def preload(payload_path: str | None = None) -> None:
    """Import the guest engine; with a payload, also make its models, install them and
    register every operation (the next payloads of this checkout find them made)."""
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)
    from vfio_scenario.uapi.kconfig import kernel_config

    kernel_config()  # read and unpacked once (cached for the process and its forks)
    if payload_path is None:
        return
    from vfio_scenario.drivers.base import use_drivers
    from vfio_scenario.run import guest_models, payload

    with open(payload_path, "rb") as f:
        header = payload.read_header(f)
    guest_models.install(header.models, header.models_code)
    from vfio_scenario.run.ops import operations  # binds the models just installed

    operations()
    use_drivers(header.drivers)  # the scenario drivers' modules imported


def fork_run(argv: Sequence[str], stdout: int = 1, stdin: int | None = None,
             main: Callable[[list[str]], int] | None = None) -> int:
    """Fork a run of the guest engine (`guest.main(argv)`, or `main`) from this warm
    process with its stdout on `stdout` (and stdin on `stdin`); returns its PID. When
    the payload's models are not this process's, the child runs the engine in a fresh
    Python instead (exec). The warm objects are frozen for the fork (gc.freeze: the
    run's garbage collector never walks them, so their pages stay shared)."""
    import gc

    gc.freeze()
    pid = os.fork()
    if pid != 0:
        gc.unfreeze()
        return pid
    code = 70
    try:
        os.dup2(stdout, 1)
        if stdin is not None:
            os.dup2(stdin, 0)
        sys.stdout = os.fdopen(1, "w", closefd=False)
        sys.stdin = os.fdopen(0, "r", closefd=False)
        if main is None:
            from vfio_scenario.run import guest

            main = guest.main
        try:
            code = main(list(argv))
        except RuntimeError as exc:
            if "holds other models" not in str(exc):
                raise
            sys.stdout.flush()
            os.execv(sys.executable, [sys.executable, "-m", "vfio_scenario.run.guest", *argv])
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(code)
