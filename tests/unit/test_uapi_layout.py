"""Every struct, field offset and ioctl number of the cffi layer equals kernel 7.2's uAPI.

A small C program is compiled against include/uapi of the Debian linux-source-7.2 tree
(vfio_scenario.testbed.assets.linux_source_dir()) and prints sizeof/offsetof of every
struct the layer declares and the value of every VFIO_/IOMMU_ constant; the test
compares them with what the built extension uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from vfio_scenario.uapi import ioctl
from vfio_scenario.uapi._vfio import ffi, lib

# The proposed DMABUF revoke uAPI is in no released kernel; checked against the RFC below.
PROPOSED_STRUCTS = {"vfio_pci_dmabuf_revoke", "vfio_device_feature_dma_buf_revoke"}
PROPOSED_CONSTANTS = {"VFIO_DEVICE_PCI_DMABUF_REVOKE", "VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE"}
OWN_CACHE_TREE = (Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                  / "vfio-scenario" / "uapi-src" / "linux-source-7.2")


def _source_dir() -> Path:
    try:
        from vfio_scenario.testbed.assets import linux_source_dir  # type: ignore[import-not-found]
    except ImportError:
        if (OWN_CACHE_TREE / "include/uapi/linux/vfio.h").exists():
            return OWN_CACHE_TREE
        pytest.skip("no linux-source-7.2 tree: vfio_scenario.testbed.assets is not there yet "
                    f"and {OWN_CACHE_TREE} is absent")
    path: Path = linux_source_dir()
    return path


def _constants() -> list[str]:
    return sorted(n for n in dir(lib)
                  if n.startswith(("VFIO_", "IOMMU_")) and isinstance(getattr(lib, n), int)
                  and n not in PROPOSED_CONSTANTS)


def _structs() -> list[str]:
    return [s for s in ffi.list_types()[1] if s not in PROPOSED_STRUCTS]


@pytest.fixture(scope="module")
def kernel_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """name → value printed by a program built against the 7.2 uAPI headers."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src = _source_dir()
    work = tmp_path_factory.mktemp("uapi")
    # asm/ headers that Kbuild would generate from asm-generic.
    (work / "asm").symlink_to(src / "include/uapi/asm-generic")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/vfio.h>",
             "#include <linux/iommufd.h>", "int main(void) {"]
    for struct in _structs():
        lines.append(f'printf("sizeof:{struct} %zu\\n", sizeof(struct {struct}));')
        for field, _ in ffi.typeof(f"struct {struct}").fields:
            lines.append(f'printf("offsetof:{struct}.{field} %zu\\n", '
                         f"offsetof(struct {struct}, {field}));")
    for name in _constants():
        lines.append(f'printf("const:{name} %llu\\n", (unsigned long long)({name}));')
    lines += ["return 0;", "}"]
    (work / "layout.c").write_text("\n".join(lines) + "\n")
    subprocess.run(["gcc", "-o", str(work / "layout"), str(work / "layout.c"),
                    f"-I{src}/arch/x86/include/uapi", f"-I{src}/include/uapi", f"-I{work}",
                    # What headers_install would strip or define.
                    "-D__user=", "-D__EXPORTED_HEADERS__"],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True)
    return {key: int(value) for key, value in (ln.split() for ln in out.stdout.splitlines())}


@pytest.mark.parametrize("struct", _structs())
def test_struct_size_and_offsets_match_kernel_7_2(kernel_layout: dict[str, int],
                                                   struct: str) -> None:
    assert ffi.sizeof(f"struct {struct}") == kernel_layout[f"sizeof:{struct}"]
    for field, cfield in ffi.typeof(f"struct {struct}").fields:
        assert cfield.offset == kernel_layout[f"offsetof:{struct}.{field}"], field


@pytest.mark.parametrize("name", _constants())
def test_constant_matches_kernel_7_2(kernel_layout: dict[str, int], name: str) -> None:
    assert getattr(lib, name) & 0xFFFFFFFFFFFFFFFF == kernel_layout[f"const:{name}"]


def test_every_ioctl_the_layer_issues_is_checked() -> None:
    assert set(ioctl.IOCTLS) <= set(_constants())
    assert len(ioctl.IOCTLS) == 36


def test_proposed_revoke_uapi_matches_the_rfc() -> None:
    # RFC v2: _IO(VFIO_TYPE, VFIO_BASE + 22) with {__u32 argsz; __s32 dmabuf_fd;};
    # the respin: device feature 13 with {__s32 dmabuf_fd;}.
    assert lib.VFIO_DEVICE_PCI_DMABUF_REVOKE == (ord(";") << 8) | (100 + 22)
    assert ffi.sizeof("struct vfio_pci_dmabuf_revoke") == 8
    assert ffi.offsetof("struct vfio_pci_dmabuf_revoke", "dmabuf_fd") == 4
    assert lib.VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE == 13
    assert ffi.sizeof("struct vfio_device_feature_dma_buf_revoke") == 4


def test_ioctl_numbers_are_plain_io_requests() -> None:
    # VFIO and iommufd encode no size or direction: every number is _IO(';', nr).
    for name in ioctl.IOCTLS:
        assert ioctl.number(name) >> 8 == ord(";"), name
