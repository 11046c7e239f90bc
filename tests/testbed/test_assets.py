"""Testbed asset logic that needs no VM: config check, module order, apt sources, cpio."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest
from vfio_scenario.testbed import aptalt, assets, initramfs, qemu


def test_missing_options_names_unmet_and_unwanted_lines() -> None:
    fragment = "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n# comment\n"
    config = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=y\n"
    assert assets.missing_options(config, fragment) == ["CONFIG_B=m", "CONFIG_C (must be off)"]
    assert assets.missing_options("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n",
                                  fragment) == []


def test_repo_fragment_keeps_the_options_the_testbed_relies_on() -> None:
    wanted, off = assets.fragment_options(assets.FRAGMENT.read_text())
    for option in ("CONFIG_VFIO_PCI", "CONFIG_IOMMUFD", "CONFIG_VFIO_DEVICE_CDEV",
                   "CONFIG_VFIO_CONTAINER", "CONFIG_INTEL_IOMMU", "CONFIG_9P_FS",
                   "CONFIG_VIRTIO_CONSOLE", "CONFIG_MAGIC_SYSRQ", "CONFIG_HUGETLBFS"):
        assert wanted.get(option) == "y", option
    assert "CONFIG_IOMMUFD_VFIO_CONTAINER" in off  # excludes the real VFIO_CONTAINER


def test_kconfig_command_prints_the_fragment_the_default_kernel_is_built_with(
        capsys: pytest.CaptureFixture[str]) -> None:
    from vfio_scenario.cli import main

    assert main(["testbed", "kconfig"]) == 0
    assert capsys.readouterr().out == assets.FRAGMENT.read_text()
    assert main(["testbed", "kconfig", "--kernel", "debug"]) == 0
    assert capsys.readouterr().out == \
        assets.FRAGMENT.read_text() + "\n" + assets.DEBUG_FRAGMENT.read_text()


def test_resolve_modules_orders_dependencies_first_and_skips_builtins() -> None:
    modules_dep = ("kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/drivers/vfio/pci/"
                   "vfio-pci-core.ko.xz kernel/drivers/vfio/vfio.ko.xz\n"
                   "kernel/drivers/vfio/pci/vfio-pci-core.ko.xz: kernel/drivers/vfio/vfio.ko.xz\n"
                   "kernel/drivers/vfio/vfio.ko.xz:\n"
                   "kernel/net/9p/9pnet.ko.xz:\n")
    order = assets.resolve_modules(modules_dep, "kernel/net/9p/9pnet.ko\n",
                                   ("vfio_pci", "9pnet", "virtio_pci"))
    assert order == ["kernel/drivers/vfio/vfio.ko.xz",
                     "kernel/drivers/vfio/pci/vfio-pci-core.ko.xz",
                     "kernel/drivers/vfio/pci/vfio-pci.ko.xz"]


def test_apt_sources_are_read_from_deb822_and_one_line_formats() -> None:
    deb822 = ("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
              "Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n"
              "Types: deb-src\nURIs: http://other.example\nSuites: bookworm\n")
    assert aptalt._deb822_sources(deb822) == [
        aptalt.AptSource("http://mirror.example/debian", "bookworm", "/usr/share/keyrings/k.gpg"),
        aptalt.AptSource("http://mirror.example/debian", "bookworm-updates",
                         "/usr/share/keyrings/k.gpg")]
    one_line = "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n# deb x y\n"
    assert aptalt._one_line_sources(one_line) == [
        aptalt.AptSource("http://m.example/debian", "bookworm", "/k.gpg")]


def test_bzimage_release_reads_the_setup_header(tmp_path: Path) -> None:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    image[0x20E:0x210] = (0x300).to_bytes(2, "little")
    image[0x500:0x520] = b"7.2.13-test (root@x) #1 SMP\0".ljust(0x20, b"\0")
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(image))
    assert assets.bzimage_release(path) == "7.2.13-test"


def test_initramfs_is_a_cpio_with_init_busybox_applets_and_console(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    module = tmp_path / "vfio_pci.ko"
    module.write_bytes(b"\x7fELF fake module")
    setup = initramfs.GuestSetup(modules=(module,), bind_ids=qemu.bind_ids(("edu", "edu")),
                                 python="/usr/bin/python3", agent="/x/agent.py", path="/usr/bin")
    archive = initramfs.build_initramfs(setup)
    data = gzip.decompress(archive.read_bytes())
    names = set(subprocess.run(["cpio", "-it"], input=data, capture_output=True,
                               check=True).stdout.decode().split())
    assert {"init", "bin/busybox", "bin/sh", "bin/mount", "modules/vfio_pci.ko",
            "dev/console"} <= names
    listing = subprocess.run(["cpio", "-itv"], input=data, capture_output=True,
                             check=True).stdout.decode().splitlines()
    assert any(line.startswith("crw") and line.endswith("dev/console") for line in listing)
    assert any(line.endswith("bin/sh -> busybox") for line in listing)
    assert not any(line.endswith("bin/busybox -> busybox") for line in listing)  # would loop
    script = initramfs.init_script(setup)
    assert "0x1234:0x11e8" in script and "insmod \"$1\" enable_sriov=1" in script
    assert initramfs.build_initramfs(setup) == archive  # cached by content


def test_device_layout_pins_every_address(tmp_path: Path) -> None:
    files = qemu.VmFiles(tmp_path)
    args = qemu.device_args(("edu", "igb", "nvme"), files)
    assert "edu,addr=0x3.0" in args
    assert "pcie-root-port,id=rp1,chassis=2,addr=0x4.0" in args
    assert any(a.startswith("nvme,drive=nvme2,") and a.endswith("addr=0x5.0") for a in args)
    with pytest.raises(ValueError, match="unknown testbed device"):
        qemu.check_devices(("edu", "e1000"))
