"""`vfio-scenario testbed fetch|kconfig|up|shell|run|status|down`."""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

from vfio_scenario.errors import UsageError
from vfio_scenario.testbed.accel import ACCELERATORS
from vfio_scenario.testbed.qemu import DEFAULT_DEVICES, MODEL_IDS


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this layer's subcommands to the main parser."""
    p = sub.add_parser("testbed", help="the embedded QEMU testbed (fetch, up, run, shell, down)",
                       description="Manage the QEMU testbed: a q35 VM with an emulated Intel "
                       "IOMMU and edu devices bound to vfio-pci, the host's root shared "
                       "read-only. Assets are cached under ${XDG_CACHE_HOME:-~/.cache}/"
                       "vfio-scenario.")
    tsub = p.add_subparsers(dest="testbed_command", required=True, metavar="COMMAND")

    def vm_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--kernel", default="default", metavar="default|debug|debian|PATH",
                       help="guest kernel: our build (default), our build with the kernel's "
                            "bug detectors (debug), Debian's newest, or a bzImage")
        q.add_argument("--accel", choices=ACCELERATORS, default="auto",
                       help="auto: KVM when a probe boot proves it works, else TCG")
        q.add_argument("--device", dest="devices", action="append", choices=sorted(MODEL_IDS),
                       help=f"device model at the next pinned slot (repeatable; default: "
                       f"{' '.join(DEFAULT_DEVICES)})")

    q = tsub.add_parser("fetch", help="download and build the testbed's assets")
    q.add_argument("--kernel", default="default", metavar="default|debug|coverage|debian|PATH")
    q.set_defaults(func=_fetch)

    q = tsub.add_parser("kconfig", help="print the kernel config fragment of our guest kernel",
                        description="Print the config fragment our guest kernel is built "
                        "with (on top of `make tinyconfig`), to build a kernel of your own for "
                        "`--kernel PATH`: see docs/testbed.md.")
    q.add_argument("--kernel", choices=("default", "debug", "coverage"), default="default",
                   help="debug, coverage: the default fragment followed by the variant's own "
                   "(coverage: with the make variable that chooses the profiled folders)")
    q.set_defaults(func=_kconfig)

    q = tsub.add_parser("status", help="cached kernels, QEMU, accelerator, free space, VM")
    q.set_defaults(func=_status)

    q = tsub.add_parser("up", help="boot a VM that stays until `testbed down`",
                        description="Boots a VM that stays until `testbed down`; with --jobs N, "
                        "VMs 1..N (those not up yet, in parallel), for `run --jobs N`.")
    vm_options(q)
    from vfio_scenario.run.cli import _jobs

    q.add_argument("--jobs", type=_jobs, default=1, metavar="N|auto",
                   help="how many VMs (default 1; auto: the host's cores), memory shared out "
                        "as `run --jobs` does")
    q.set_defaults(func=_up)

    q = tsub.add_parser("run", help="run a command in the `up` VM (or a temporary one)",
                        description="Runs CMD in the guest (chrooted into the host's root, "
                        "VFIO_SCENARIO_GUEST=1) and exits with its status.")
    vm_options(q)
    q.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    q.add_argument("--alongside", action="store_true",
                   help="in the `up` VM now, beside the command that holds it (e.g. a run), "
                        "instead of waiting for its turn")
    q.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    q.set_defaults(func=_run)

    q = tsub.add_parser("shell", help="a shell in the `up` VM (or a temporary one)",
                        description="An interactive shell on a terminal in the guest (chrooted "
                        "into the host's root). With stdin not a terminal, each input line "
                        "runs as `sh -c LINE`.")
    vm_options(q)
    q.add_argument("--login", action="store_true", help="start a login shell (sh -l)")
    q.set_defaults(func=_shell)

    q = tsub.add_parser("down", help="stop the VMs `testbed up` started")
    q.add_argument("--force", action="store_true",
                   help="stop it even while a run uses it (that run's case is an error)")
    q.set_defaults(func=_down)


def _reporter() -> Any:
    from vfio_scenario.testbed.progress import stderr_reporter
    return stderr_reporter


def _kconfig(args: argparse.Namespace) -> int:
    from vfio_scenario.testbed.assets import fragment_text, variant_make_vars

    sys.stdout.write(fragment_text(args.kernel))
    for var in variant_make_vars(args.kernel):  # a comment: the fragment stays mergeable
        sys.stdout.write(f"# build with this make variable on the command line:\n# '{var}'\n")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from vfio_scenario.testbed.assets import resolve_kernel
    from vfio_scenario.testbed.initramfs import build_initramfs
    from vfio_scenario.testbed.qemu import qemu_version
    from vfio_scenario.testbed.testbed import guest_setup

    kernel = resolve_kernel(args.kernel, _reporter())
    initrd = build_initramfs(guest_setup(kernel, DEFAULT_DEVICES))
    print(f"kernel   {kernel.kind} {kernel.release}  {kernel.image}")
    print(f"initramfs {initrd}")
    print(f"qemu     {qemu_version()}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from vfio_scenario.testbed.accel import describe_verdict
    from vfio_scenario.testbed.assets import cached_kernels
    from vfio_scenario.testbed.paths import cache_dir
    from vfio_scenario.testbed.persistent import read_state, up_vms
    from vfio_scenario.testbed.qemu import fast_firmware, qemu_version

    try:
        qemu = qemu_version()
    except Exception as exc:  # noqa: BLE001 - status reports what is missing
        qemu = f"missing ({exc})"
    print(f"qemu          {qemu}")
    print(f"accelerator   {describe_verdict() if not qemu.startswith('missing') else '-'}")
    if not qemu.startswith("missing"):
        rom = fast_firmware()
        print(f"firmware      {f'qboot ({rom})' if rom else 'SeaBIOS (QEMU default; no qboot.rom)'}")
    kernels = cached_kernels()
    if not kernels:
        print("kernels       none cached (vfio-scenario testbed fetch)")
    for kind, folder, release in kernels:
        print(f"kernel        {kind:8} {release:28} {folder}")
    free = shutil.disk_usage(cache_dir()).free
    print(f"cache         {cache_dir()} ({free / 2**30:.1f} GiB free)")
    numbers = up_vms()
    if not numbers:
        print("vm            none running")
    for number in numbers:
        state = read_state(number)
        if state is not None:
            label = "" if numbers == [1] else f" {number}"
            print(f"vm{label:<11} up, PID {state['pid']}, {state['accel']}, {state['release']}, "
                  f"devices {' '.join(state['devices'])}")
    return 0


def _up(args: argparse.Namespace) -> int:
    from vfio_scenario.testbed.persistent import up

    states = up(args.kernel, args.accel, args.devices or DEFAULT_DEVICES, _reporter(),
                jobs=args.jobs)
    for n, state in enumerate(states, 1):
        label = "" if len(states) == 1 else f" VM {n}"
        print(f"testbed up{label}: PID {state['pid']}, {state['accel']}, kernel "
              f"{state['release']}, console {state['console']}")
    return 0


def _open_testbed(args: argparse.Namespace) -> tuple[Any, bool]:
    """(testbed, temporary): the `up` VM when one runs, else a fresh one we own."""
    from vfio_scenario.testbed.persistent import attach
    from vfio_scenario.testbed.testbed import Testbed

    testbed = attach()
    if testbed is not None:
        return testbed, False
    testbed = Testbed(kernel=args.kernel, accel=args.accel,
                      devices=args.devices or DEFAULT_DEVICES, report=_reporter())
    return testbed.start(), True


def _stream_to_console(testbed: Any, argv: list[str], timeout: float) -> int:
    def to_stderr(chunk: str) -> None:
        sys.stderr.write(chunk)
        sys.stderr.flush()

    stream = testbed.stream(argv, idle_timeout=timeout, on_stderr=to_stderr)
    for line in stream:
        print(line, flush=True)
    code: int = stream.returncode
    return code if code >= 0 else 128 - code


def _run(args: argparse.Namespace) -> int:
    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not argv:
        raise UsageError("testbed run: name the command after --")
    if args.alongside:
        from vfio_scenario.testbed.persistent import attach_alongside

        testbed = attach_alongside()
        if testbed is None:
            raise UsageError("testbed run --alongside: no VM is up (`vfio-scenario testbed up`)")
    else:
        testbed, _ = _open_testbed(args)
    try:
        return _stream_to_console(testbed, argv, args.timeout)
    finally:
        testbed.stop()


def _shell(args: argparse.Namespace) -> int:
    testbed, _ = _open_testbed(args)
    try:
        if sys.stdin.isatty():
            code: int = testbed.interactive(["sh", "-l"] if args.login else ["sh"])
            return code
        # not a terminal: one command per line, each as `sh -c LINE`
        status = 0
        for line in sys.stdin:
            if line.strip():
                status = _stream_to_console(testbed, ["sh", "-c", line], 3600.0)
        return status
    finally:
        testbed.stop()


def _down(args: argparse.Namespace) -> int:
    from vfio_scenario.testbed.persistent import down_all

    pids = down_all(force=args.force)
    print(f"testbed down: ended QEMU PID {', '.join(map(str, pids))}" if pids
          else "testbed down: no VM was up")
    return 0
