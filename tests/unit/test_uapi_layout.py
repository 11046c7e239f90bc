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

# The proposed DMABUF revoke/memattr uAPI is in no released kernel; checked against the
# series' text below.
PROPOSED_STRUCTS = {"vfio_pci_dmabuf_revoke", "vfio_device_feature_dma_buf_revoke",
                    "vfio_device_feature_dma_buf_memattr"}
PROPOSED_CONSTANTS = {"VFIO_DEVICE_PCI_DMABUF_REVOKE", "VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE",
                      "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR",
                      "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_NC",
                      "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_WC"}
OWN_CACHE_TREE = (Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                  / "vfio-scenario" / "uapi-src" / "linux-source-7.2")


def _source_dir() -> Path:
    try:
        from vfio_scenario.testbed.assets import linux_source_dir
    except ImportError:
        if (OWN_CACHE_TREE / "include/uapi/linux/vfio.h").exists():
            return OWN_CACHE_TREE
        pytest.skip("no linux-source-7.2 tree: vfio_scenario.testbed.assets is not there yet "
                    f"and {OWN_CACHE_TREE} is absent")
    path: Path = linux_source_dir()
    return path


def _constants() -> list[str]:
    return sorted(n for n in dir(lib)
                  if n.startswith(("VFIO_", "IOMMU_", "MOCK_"))
                  and isinstance(getattr(lib, n), int)
                  and n not in PROPOSED_CONSTANTS)


def _structs() -> list[str]:
    return [s for s in ffi.list_types()[1] if s not in PROPOSED_STRUCTS]


def _build_layout(src: Path, work: Path, structs: list[str], constants: list[str],
                  signedness: bool = False) -> dict[str, int]:
    """name → value printed by a program built against the uAPI headers of tree `src`
    (with `signedness`, also whether each field, all scalars then, is signed)."""
    # asm/ headers that Kbuild would generate from asm-generic.
    (work / "asm").symlink_to(src / "include/uapi/asm-generic")
    # iommufd_test.h: CONFIG_IOMMUFD_TEST's uAPI, not installed; the selftests include it
    # from the tree as this program does
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/vfio.h>",
             "#include <linux/iommufd.h>", '#include "iommufd_test.h"', "int main(void) {"]
    for struct in structs:
        lines.append(f'printf("sizeof:{struct} %zu\\n", sizeof(struct {struct}));')
        for field, _ in ffi.typeof(f"struct {struct}").fields:
            lines.append(f'printf("offsetof:{struct}.{field} %zu\\n", '
                         f"offsetof(struct {struct}, {field}));")
            if signedness:
                lines.append(f'printf("signed:{struct}.{field} %d\\n", (int)('
                             f"(__typeof__(((struct {struct} *)0)->{field}))-1 < 0));")
    for name in constants:
        lines.append(f'printf("const:{name} %llu\\n", (unsigned long long)({name}));')
    lines += ["return 0;", "}"]
    (work / "layout.c").write_text("\n".join(lines) + "\n")
    subprocess.run(["gcc", "-o", str(work / "layout"), str(work / "layout.c"),
                    f"-I{src}/arch/x86/include/uapi", f"-I{src}/include/uapi", f"-I{work}",
                    f"-I{src}/drivers/iommu/iommufd",
                    # What headers_install would strip or define.
                    "-D__user=", "-D__EXPORTED_HEADERS__"],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True)
    return {key: int(value) for key, value in (ln.split() for ln in out.stdout.splitlines())}


@pytest.fixture(scope="module")
def kernel_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """name → value printed by a program built against the 7.2 uAPI headers."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    return _build_layout(_source_dir(), tmp_path_factory.mktemp("uapi"), _structs(),
                         _constants())


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
    assert len(ioctl.IOCTLS) == 47


# The proposed uAPI, as the series' include/uapi/linux/vfio.h hunks declare it (read
# from the patch text; the patches are not in this repository). Each fact: its value
# and where it is written.
RFC_V2_REVOKE = ("RFC v2 08/10 <20260312184613.3710705-9-mattev@meta.com>, "
                 "include/uapi/linux/vfio.h @@ -1307,6 +1307,36 @@")
V3_REVOKE = ("v3 8/9 <20260610154327.37758-9-matt@ozlabs.org>, "
             "include/uapi/linux/vfio.h @@ -1534,6 +1534,26 @@")
V3_MEMATTR = ("v3 9/9 <20260610154327.37758-10-matt@ozlabs.org>, "
              "include/uapi/linux/vfio.h @@ -1554,6 +1554,33 @@")
# struct → [(field, byte offset, C type)] in declaration order, and the source
RFC_STRUCTS = {
    # "struct vfio_pci_dmabuf_revoke { __u32 argsz; __u32 dmabuf_fd; };"
    "vfio_pci_dmabuf_revoke": ([("argsz", 0, "unsigned int"), ("dmabuf_fd", 4, "unsigned int")],
                               RFC_V2_REVOKE),
    # "struct vfio_device_feature_dma_buf_revoke { __s32 dmabuf_fd; };"
    "vfio_device_feature_dma_buf_revoke": ([("dmabuf_fd", 0, "int")], V3_REVOKE),
    # "struct vfio_device_feature_dma_buf_memattr { __s32 dmabuf_fd; __u32 memattr; };"
    "vfio_device_feature_dma_buf_memattr": ([("dmabuf_fd", 0, "int"),
                                             ("memattr", 4, "unsigned int")], V3_MEMATTR),
}
RFC_SIZES = {"vfio_pci_dmabuf_revoke": 8, "vfio_device_feature_dma_buf_revoke": 4,
             "vfio_device_feature_dma_buf_memattr": 8}
# "#define VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE 13" (V3_REVOKE), "... _MEMATTR 14" and
# "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_NC = 0, ... _WC = 1" (V3_MEMATTR)
RFC_CONSTANTS = {"VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE": (13, V3_REVOKE),
                 "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR": (14, V3_MEMATTR),
                 "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_NC": (0, V3_MEMATTR),
                 "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_WC": (1, V3_MEMATTR)}


@pytest.mark.parametrize("struct", sorted(RFC_STRUCTS))
def test_proposed_struct_is_laid_out_as_the_series_declares(struct: str) -> None:
    fields, source = RFC_STRUCTS[struct]
    ctype = ffi.typeof(f"struct {struct}")
    assert [(name, f.offset, f.type.cname) for name, f in ctype.fields] == fields, source
    assert ffi.sizeof(ctype) == RFC_SIZES[struct], source


@pytest.mark.parametrize("name", sorted(RFC_CONSTANTS))
def test_proposed_constant_is_the_series_number(name: str) -> None:
    value, source = RFC_CONSTANTS[name]
    assert getattr(lib, name) == value, source


def test_proposed_numbers_follow_7_2s(
        kernel_layout: dict[str, int]) -> None:
    # RFC_V2_REVOKE: "#define VFIO_DEVICE_PCI_DMABUF_REVOKE _IO(VFIO_TYPE, VFIO_BASE + 22)";
    # 7.2's VFIO_DEVICE_DETACH_IOMMUFD_PT is _IO(VFIO_TYPE, VFIO_BASE + 20).
    assert kernel_layout[
        "const:VFIO_DEVICE_DETACH_IOMMUFD_PT"] + 2 == lib.VFIO_DEVICE_PCI_DMABUF_REVOKE
    # V3_REVOKE: feature 13, after 7.2's VFIO_DEVICE_FEATURE_DMA_BUF (11) and
    # VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 (12)
    assert kernel_layout[
        "const:VFIO_DEVICE_FEATURE_DMA_BUF"] + 2 == lib.VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE


def test_proposed_uapi_matches_a_patched_tree(tmp_path: Path) -> None:
    """With VFIO_SCENARIO_RFC_TREE naming a kernel tree the v3 series is applied to, its
    headers' layout of the v3 structs and numbers equals the cffi layer's."""
    tree = os.environ.get("VFIO_SCENARIO_RFC_TREE")
    if not tree:
        pytest.skip("VFIO_SCENARIO_RFC_TREE (a kernel tree with the v3 series applied) not set")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    structs = ["vfio_device_feature_dma_buf_revoke", "vfio_device_feature_dma_buf_memattr"]
    constants = [n for n in RFC_CONSTANTS]
    layout = _build_layout(Path(tree), tmp_path, structs, constants, signedness=True)
    for struct in structs:
        assert ffi.sizeof(f"struct {struct}") == layout[f"sizeof:{struct}"], struct
        for field, cfield in ffi.typeof(f"struct {struct}").fields:
            assert cfield.offset == layout[f"offsetof:{struct}.{field}"], field
            assert (cfield.type.cname == "int") == bool(layout[f"signed:{struct}.{field}"])
    for name in constants:
        assert getattr(lib, name) == layout[f"const:{name}"], name


def test_ioctl_numbers_are_plain_io_requests() -> None:
    # VFIO and iommufd encode no size or direction: every number is _IO(';', nr).
    for name in ioctl.IOCTLS:
        assert ioctl.number(name) >> 8 == ord(";"), name


def test_the_layouts_are_made_in_the_process_that_forks_the_cases() -> None:
    """Importing the executor makes every struct's layout (ioctl.warm_layouts), so a case
    process finds them made; each is what `new` would make itself."""
    import vfio_scenario.run.executor  # noqa: F401 - its import warms the layouts

    structs = ffi.list_types()[1]
    assert structs and ioctl._layout.cache_info().currsize >= len(structs)
    made = ioctl._layout("struct vfio_device_bind_iommufd")
    ioctl._layout.cache_clear()
    assert ioctl._layout("struct vfio_device_bind_iommufd") == made
    ioctl.warm_layouts()
    assert ioctl._layout.cache_info().currsize == len(structs)
