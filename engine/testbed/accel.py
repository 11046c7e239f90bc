"""Which accelerator the testbed uses: KVM only when a real boot proved it works.

A KVM that exists is not always a KVM that runs a stock kernel (some paravirtual
flavours fail with "KVM internal error"), so the verdict comes from a probe boot with
a short limit, and it is cached per machine with QEMU's version in the key.
"""

from __future__ import annotations

import json
import os
import socket
import time

from vfio_scenario.testbed.paths import cache_dir
from vfio_scenario.testbed.qemu import qemu_version

ACCELERATORS = ("auto", "kvm", "tcg")
KVM_PROBE_SECONDS = 12.0  # a working KVM reaches the agent in ~2 s


def kvm_device_usable() -> bool:
    """True when /dev/kvm exists and this user may open it."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def _verdict_file() -> str:
    return str(cache_dir() / "accel.json")


def verdict_key() -> str:
    """Machine + QEMU version: a new QEMU or another host probes again."""
    return f"{socket.gethostname()}|qemu-{qemu_version()}"


def cached_verdict() -> dict[str, object] | None:
    """The stored probe result for this machine and QEMU ({accel, reason, when}) or None."""
    try:
        with open(_verdict_file()) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    entry = data.get(verdict_key())
    return entry if isinstance(entry, dict) else None


def store_verdict(accel: str, reason: str) -> None:
    """Remember the probe's result for this machine and QEMU version."""
    try:
        with open(_verdict_file()) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {}
    data[verdict_key()] = {"accel": accel, "reason": reason, "when": time.time()}
    tmp = _verdict_file() + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, _verdict_file())


def describe_verdict() -> str:
    """One line for `testbed status`."""
    if not kvm_device_usable():
        return "tcg (no usable /dev/kvm)"
    entry = cached_verdict()
    if entry is None:
        return "not probed yet (the first boot probes KVM, falling back to TCG)"
    return f"{entry['accel']} ({entry['reason']})"
