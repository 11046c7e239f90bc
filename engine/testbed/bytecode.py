"""Bytecode of the engine for the guest, written by the host.

The guest sees the host's root read-only, so a module without an up-to-date .pyc is
compiled from source in memory at every guest start, some 20 ms a module under TCG. A
host with PYTHONDONTWRITEBYTECODE set (or one that never imported a module the guest
needs: the guest engine, the drivers) writes none. Before a boot the host compiles
the package's own folders; when everything is current this only stats the files.
"""

from __future__ import annotations

import compileall


def compile_engine() -> None:
    """Write missing or stale .pyc files of vfio_scenario and its drivers (best effort:
    a folder the user cannot write is left as it is)."""
    import vfio_scenario
    import vfio_scenario.drivers

    for folder in dict.fromkeys((*vfio_scenario.__path__, *vfio_scenario.drivers.__path__)):
        compileall.compile_dir(folder, quiet=2)
