"""cffi API-mode build of vfio_scenario.uapi._vfio (setup.py: cffi_modules).

The declarations are in csrc/cdef.h, the C side in csrc/helpers.h (which includes the
build host's <linux/vfio.h> and the project's own newer uAPI, csrc/compat.h).
"""

from pathlib import Path

from cffi import FFI  # type: ignore[import-untyped, unused-ignore]

CSRC = Path(__file__).resolve().parent / "csrc"

ffibuilder = FFI()
ffibuilder.cdef((CSRC / "cdef.h").read_text())
ffibuilder.set_source(
    "vfio_scenario.uapi._vfio",
    '#include "helpers.h"\n',
    include_dirs=[str(CSRC)],
    extra_compile_args=["-O2", "-Wall", "-Werror=incompatible-pointer-types"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
