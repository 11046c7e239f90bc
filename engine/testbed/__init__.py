"""The embedded QEMU testbed: guest kernels, initramfs, VM, guest agent.

Public API: Testbed, CommandResult, GuestCrashed (VmStopped), GuestHung, BootFailed,
TestbedError;
assets.linux_source_dir() for the Linux source tree.
"""

from vfio_scenario.testbed.testbed import CommandResult, CommandStream, Testbed
from vfio_scenario.testbed.vm import BootFailed, GuestCrashed, GuestHung, TestbedError, VmStopped

__all__ = ["BootFailed", "CommandResult", "CommandStream", "GuestCrashed", "GuestHung",
           "Testbed", "TestbedError", "VmStopped"]
