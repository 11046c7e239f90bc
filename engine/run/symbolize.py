"""Symbolize the kernel watch's splats on the host, with the kernel's own tools.

A splat's stack lines (`func+0x1f/0x40`) become `func+0x1f/0x40 drivers/x/y.c:123` through
the kernel's scripts/decode_stacktrace.sh (nm, readelf and addr2line on vmlinux). Our own
guest kernel keeps its vmlinux, built with line tables (kernel.fragment), beside its
bzImage; on a host, the script looks for the running kernel's debug vmlinux by release
(Debian's linux-image-*-dbg: /usr/lib/debug/boot/vmlinux-<release>).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from vfio_scenario.results import CaseResult

Symbolizer = Callable[[str], str]
TIMEOUT = 120.0  # seconds for one splat (addr2line per stack line, on a busy machine)


def _script() -> Path | None:
    from vfio_scenario.testbed.assets import _installed_source_trees, _newest_tree

    trees = _installed_source_trees()  # never downloads: no source, no decoding
    if not trees:
        return None
    script = _newest_tree(trees) / "scripts" / "decode_stacktrace.sh"
    return script if script.exists() else None


def symbolizer(vmlinux: Path | None = None, release: str = "") -> Symbolizer | None:
    """A function decoding a splat's text with `vmlinux` (or the debug vmlinux of
    `release` where decode_stacktrace.sh finds one); None when there is nothing to
    decode with (no vmlinux, no kernel source tree, no bash or binutils)."""
    script = _script()
    if script is None or not all(shutil.which(t) for t in ("bash", "addr2line", "nm", "readelf")):
        return None
    if vmlinux is not None:
        if not vmlinux.exists():
            return None
        # relative file names: strip the source tree the kernel was built from
        argv = ["bash", str(script), str(vmlinux), str(script.parent.parent)]
    elif release and _debug_vmlinux(release):
        argv = ["bash", str(script), "-r", release]
    else:
        return None

    def decode(text: str) -> str:
        try:
            proc = subprocess.run(argv, input=text + "\n", capture_output=True, text=True,
                                  timeout=TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return text
        out = proc.stdout.rstrip("\n")
        return out if proc.returncode == 0 and out.strip() else text

    return decode


def _debug_vmlinux(release: str) -> bool:
    """Whether decode_stacktrace.sh -r RELEASE will find a vmlinux (its own search list)."""
    return any(Path(p).exists() for p in (
        f"/boot/vmlinux-{release}", f"/boot/vmlinux-{release}.debug",
        f"/usr/lib/debug/boot/vmlinux-{release}", f"/usr/lib/debug/boot/vmlinux-{release}.debug",
        f"/lib/modules/{release}/vmlinux", f"/lib/modules/{release}/build/vmlinux"))


def symbolize_result(result: CaseResult, decode: Symbolizer) -> None:
    """Each splat of `result` decoded in place, in its record and in the case's log."""
    for splat in result.kernel_splats:
        if splat.get("symbolized") or splat.get("kind") == "taint":
            continue
        text = str(splat.get("text", ""))
        decoded = decode(text)
        if decoded != text:
            result.log = result.log.replace(text, decoded, 1)
            splat["text"] = decoded
            splat["symbolized"] = True
