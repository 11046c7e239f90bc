"""Fixtures of the guest tests: they run INSIDE the testbed VM, against the edu device.

The host has no /dev/vfio, so there these modules are not collected at all; the
testbed runs them in the VM (tests/testbed/).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vfio_scenario.drivers.base import DmaRegion, Driver
from vfio_scenario.run import faultlog
from vfio_scenario.uapi import sysfs
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.capabilities import HostCapabilities, host_capabilities
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.iommu import Iommu, open_iommu
from vfio_scenario.uapi.iommufd import Iommufd
from vfio_scenario.uapi.kmsg import KernelLog
from vfio_scenario.uapi.modes import ALL_MODES, IommuMode

IN_GUEST = os.environ.get("VFIO_SCENARIO_GUEST") == "1" or Path("/dev/vfio").exists()
if not IN_GUEST:
    collect_ignore_glob = ["test_*.py"]

EDU_IDS = (0x1234, 0x11E8)
EDU_ID_REGISTER = 0x010000ED


def _run_quietly(argv: list[str]) -> None:
    # A minimal guest image may lack the tool; the tests then see what the kernel has.
    with contextlib.suppress(OSError):
        subprocess.run(argv, check=False, capture_output=True)


def _mount_debugfs() -> None:
    if os.path.ismount("/sys/kernel/debug"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount(b"debugfs", b"/sys/kernel/debug", b"debugfs", 0, None)


def _prepare_guest(bdf: str) -> None:
    """Load VFIO and iommufd, mount debugfs, bind the function to vfio-pci (best effort)."""
    # Built-in or already loaded modules make modprobe a no-op.
    for module in ("vfio-pci", "vfio_iommu_type1", "iommufd"):
        _run_quietly(["modprobe", module])
    _mount_debugfs()
    if sysfs.bound_driver(bdf) == "vfio-pci":
        return
    folder = sysfs.device_dir(bdf)
    (folder / "driver_override").write_text("vfio-pci\n")
    if sysfs.bound_driver(bdf):
        (folder / "driver" / "unbind").write_text(bdf)
    Path("/sys/bus/pci/drivers_probe").write_text(bdf)


@pytest.fixture(scope="session")
def edu_bdf() -> str:
    found = sysfs.find_devices(*EDU_IDS)
    if not found:
        pytest.fail("no edu device (1234:11e8) in this VM")
    _prepare_guest(found[0])
    assert sysfs.bound_driver(found[0]) == "vfio-pci"
    return found[0]


@pytest.fixture(scope="session")
def caps(edu_bdf: str) -> HostCapabilities:
    return host_capabilities([edu_bdf])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mode" in metafunc.fixturenames:
        metafunc.parametrize("mode", ALL_MODES, ids=[m.value for m in ALL_MODES])


@pytest.fixture
def iommu(mode: IommuMode, caps: HostCapabilities) -> Iterator[Iommu]:
    available = caps.iommu_modes[mode]
    if not available:
        pytest.skip(f"{mode.value} not offered by this kernel: {available.reason}")
    opened = open_iommu(mode)
    yield opened
    opened.close()


@pytest.fixture
def mock_iommufd(caps: HostCapabilities) -> Iterator[Iommufd]:
    """An iommufd without a default IOAS, for the mock IOMMU of CONFIG_IOMMUFD_TEST (the
    test skips, with the probe's reason, on a kernel without it)."""
    if not caps.features["iommufd_test"]:
        pytest.skip(caps.features["iommufd_test"].reason)
    fd = Iommufd(default_ioas=False)
    yield fd
    fd.close()


def opened_device(iommu: Iommu, bdf: str) -> Iterator[VfioDevice]:
    """A fixture's device: `bdf` opened through `iommu`, closed after the test."""
    opened = VfioDevice.open(iommu, bdf)
    yield opened
    opened.close()


@pytest.fixture
def device(iommu: Iommu, edu_bdf: str) -> Iterator[VfioDevice]:
    yield from opened_device(iommu, edu_bdf)


# intel-iommu prints a fault's details under a ratelimit of 10 messages per 5 s shared
# with the "handling fault status" line: two per fault. The one test that checks the
# kernel's own DMAR line (and our parser on it) opens its window 5 s after the last
# faulting test, so that its line is printed; every other faulting test reads QEMU's
# record of the fault (`qemu_faults`), which has no rate limit, and waits for nothing.
DMAR_RATELIMIT_INTERVAL = 5.1
_last_fault = [0.0]


@pytest.fixture
def kmsg() -> Iterator[KernelLog]:
    log = KernelLog()
    yield log
    log.close()


@pytest.fixture
def dmar_fault_window(kmsg: KernelLog) -> Iterator[KernelLog]:
    """The kernel log, opened once the DMAR message ratelimit has room again."""
    wait = _last_fault[0] + DMAR_RATELIMIT_INTERVAL - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    yield kmsg
    _last_fault[0] = time.monotonic()


@pytest.fixture
def qemu_faults() -> Iterator[faultlog.QemuFaultLog]:
    """QEMU's record of the IOMMU faults from now on (its vtd_dmar_fault trace, shared
    with the guest): every fault the emulated IOMMU raises, whatever printk drops."""
    log = faultlog.qemu_fault_log()
    assert log is not None, f"no QEMU fault log at {faultlog.QEMU_FAULTS_MOUNT}: not the testbed?"
    yield log
    _last_fault[0] = time.monotonic()  # the kernel printed (or rate-limited) them too


def assert_iommu_fault(log: faultlog.QemuFaultLog, bdf: str, address: int,
                       access: str) -> faultlog.Fault:
    """The fault of `bdf` at `address` (`read`/`write`) QEMU recorded; it is written as
    the device makes the access, so the wait is a margin."""
    wanted = faultlog.FaultFilter(bdf, address, access)
    found = faultlog.wait_for(log, wanted, 5.0)
    assert found is not None, f"no {wanted.describe()} recorded; faults: " \
        f"{faultlog.summary(log.read())}"
    return found


# --- a scenario driver on its testbed device ----------------------------------------------
# A test module of a driver defines `driver_bdf` (its device, module scope) and
# `driver_class`; these give it the device opened in each of DRIVER_MODES, the driver's
# DMA region and a 2 MiB buffer mapped there, and the driver initialised on them.

DRIVER_MODES = [IommuMode.VFIO_TYPE1V2, IommuMode.IOMMUFD]


@pytest.fixture(params=DRIVER_MODES, ids=[m.value for m in DRIVER_MODES])
def driver_iommu(request: pytest.FixtureRequest) -> Iterator[Iommu]:
    opened = open_iommu(request.param)
    yield opened
    opened.close()


@pytest.fixture
def driver_device(driver_iommu: Iommu, driver_bdf: str) -> Iterator[VfioDevice]:
    yield from opened_device(driver_iommu, driver_bdf)


@pytest.fixture
def region(driver_iommu: Iommu, driver_class: type[Driver]) -> Iterator[DmaRegion]:
    with DmaBuffer(driver_class.region_size) as buf:
        mapping = driver_iommu.map_buffer(buf)
        yield DmaRegion(buf.mem, mapping.iova, buf.size)
        mapping.unmap()


@pytest.fixture
def buf(driver_iommu: Iommu) -> Iterator[tuple[DmaBuffer, int]]:
    with DmaBuffer(2 << 20) as buffer:
        mapping = driver_iommu.map_buffer(buffer)
        yield buffer, mapping.iova
        mapping.unmap()


@pytest.fixture
def driver(driver_class: type[Driver], driver_device: VfioDevice,
           region: DmaRegion) -> Iterator[Driver]:
    initialised = driver_class(driver_device, region)
    initialised.init()
    yield initialised
    initialised.remove()
