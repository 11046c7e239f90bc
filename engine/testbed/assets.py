"""The testbed's assets: Debian's Linux source, guest kernels, busybox.

Everything lives under the cache directory and is keyed by content, so a second `fetch`
(or a second test session) finds it at once:
- linux-source/<debian version>/linux-source-7.x : the extracted source tree,
- kernels/own-<source version>-<fragment hash>/ : our kernel (bzImage, vmlinux, config, release),
- kernels/debian-<package version>/ : Debian's kernel and the VFIO modules it needs,
- a user's bzImage is used where it is.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.testbed.aptalt import PrivateApt, extract_deb
from vfio_scenario.testbed.paths import locked, sub_dir
from vfio_scenario.testbed.progress import Reporter, Ticker, quiet
from vfio_scenario.testbed.safetar import UnsafeMember, extract_all

SOURCE_PACKAGE_RX = r"linux-source-7\.[0-9]+"


@dataclass(frozen=True)
class GuestKernel:
    """A bootable guest kernel and what the initramfs must load for it."""

    kind: str                     # "default", "debug", "debian" or "path"
    image: Path                   # bzImage / vmlinuz
    release: str                  # uname -r of the guest ("" when unknown)
    modules: tuple[Path, ...] = field(default=())  # .ko files to insmod, in order


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


# --- Linux source -------------------------------------------------------------------

def _newest_source_package(apt: PrivateApt) -> str:
    names = apt.package_names(SOURCE_PACKAGE_RX)
    if not names:
        raise EnvironmentProblem("the mirror offers no linux-source-7.x package")
    return max(names, key=lambda n: tuple(int(x) for x in n.rsplit("-", 1)[1].split(".")))


def _installed_source_trees() -> list[Path]:
    base = sub_dir("linux-source")
    return sorted(p.parent for p in base.glob("*/linux-source-7.*/.vfio-scenario-complete"))


def linux_source_dir(report: Reporter = quiet) -> Path:
    """The extracted tree of Debian's newest linux-source-7.x, fetched into the cache if absent.

    Others use it for uAPI headers (include/uapi/linux/vfio.h, iommufd.h) and
    tools/testing/kunit/kunit_parser.py. Offline, the newest tree already cached is used.
    """
    trees = _installed_source_trees()
    if trees:
        return _newest_tree(trees)
    return fetch_linux_source(report)


def cached_source_tree() -> Path | None:
    """The newest source tree already in the cache (None when none is): for readers of
    the uAPI headers that must not download (unit tests)."""
    trees = _installed_source_trees()
    return _newest_tree(trees) if trees else None


def _newest_tree(trees: list[Path]) -> Path:
    def key(tree: Path) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", tree.parent.name)]
    return max(trees, key=key)


def fetch_linux_source(report: Reporter = quiet) -> Path:
    """Download and extract the newest linux-source-7.x the mirror offers (kept when present)."""
    with locked("linux-source"):
        return _fetch_linux_source(report)


def _fetch_linux_source(report: Reporter) -> Path:
    apt = PrivateApt()
    apt.update()
    package = _newest_source_package(apt)
    version = apt.candidate(package)
    version_dir = sub_dir("linux-source", version)
    tree = version_dir / package
    if (tree / ".vfio-scenario-complete").exists():
        return tree
    report(f"downloading {package} {version}")
    deb = apt.download(package, sub_dir("debs"))
    staging = version_dir / "deb"
    shutil.rmtree(staging, ignore_errors=True)
    extract_deb(deb, staging)
    tarballs = list(staging.glob("usr/src/linux-source-*.tar.*"))
    if not tarballs:
        raise EnvironmentProblem(f"{deb.name} holds no usr/src/linux-source-*.tar.*")
    report(f"extracting {tarballs[0].name}")
    shutil.rmtree(tree, ignore_errors=True)
    try:
        with tarfile.open(tarballs[0]) as tar:
            extract_all(tar, version_dir)
    except UnsafeMember as exc:
        raise EnvironmentProblem(f"{tarballs[0].name} has an unsafe member: {exc}") from None
    shutil.rmtree(staging)
    if not tree.is_dir():
        raise EnvironmentProblem(f"{tarballs[0].name} did not unpack to {tree}")
    (tree / ".vfio-scenario-complete").write_text(version + "\n")
    return tree


def source_version(tree: Path) -> str:
    """Debian version of an extracted source tree (from its completion marker)."""
    return (tree / ".vfio-scenario-complete").read_text().strip()


# --- our own kernel -----------------------------------------------------------------

FRAGMENT = Path(__file__).with_name("kernel.fragment")
#: `--kernel debug`: the default kernel plus the kernel's bug detectors
DEBUG_FRAGMENT = Path(__file__).with_name("kernel-debug.fragment")
#: `--kernel coverage`: the default kernel plus gcov (GCOV_KERNEL), profiling GCOV_FOLDERS only
COVERAGE_FRAGMENT = Path(__file__).with_name("kernel-coverage.fragment")
VARIANTS = ("default", "debug", "coverage")
_OWN_FRAGMENTS = {"debug": DEBUG_FRAGMENT, "coverage": COVERAGE_FRAGMENT}

#: The kernel folders the coverage kernel compiles with gcov: make patterns matched against
#: kbuild's $(obj) (drivers/vfio/% is every folder below drivers/vfio, pci/ included;
#: drivers/iommu alone is the IOMMU core's own files, not its subfolders)
GCOV_FOLDERS = ("drivers/vfio", "drivers/vfio/%", "drivers/iommu", "drivers/iommu/iommufd",
                "drivers/iommu/intel")
#: Single files the coverage kernel compiles with gcov, as $(obj)/<stem>
GCOV_FILES = ("drivers/pci/iov",)


def gcov_profile_value() -> str:
    """The GCOV_PROFILE make variable of the coverage build (docs/testbed.md).

    Passed on make's command line it is a recursively expanded variable that reaches every
    sub-make and overrides the Makefiles' own GCOV_PROFILE, so it is evaluated per object
    file in scripts/Makefile.lib: y for the objects of GCOV_FOLDERS and GCOV_FILES, n for
    all others. Debian's source tree is not touched."""
    folders = " ".join(GCOV_FOLDERS)
    files = " ".join(GCOV_FILES)
    return (f"$(if $(filter {folders},$(obj)),y,"
            f"$(if $(filter {files},$(obj)/$(target-stem)),y,n))")


def variant_make_vars(variant: str) -> list[str]:
    """Extra make variables of our kernel `variant` (the coverage kernel's GCOV_PROFILE)."""
    return [f"GCOV_PROFILE={gcov_profile_value()}"] if variant == "coverage" else []


def fragment_text(variant: str = "default") -> str:
    """The config fragment of our kernel `variant` (debug, coverage: the default one, then
    its own)."""
    text = FRAGMENT.read_text()
    if variant in _OWN_FRAGMENTS:
        text += "\n" + _OWN_FRAGMENTS[variant].read_text()
    return text


def fragment_options(text: str) -> tuple[dict[str, str], list[str]]:
    """(options set to a value, options switched off) of a config fragment."""
    wanted: dict[str, str] = {}
    off: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        match = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if match:  # a later line overrides an earlier one (the debug fragment's)
            off.append(match.group(1))
            wanted.pop(match.group(1), None)
        elif line and not line.startswith("#"):
            name, _, value = line.partition("=")
            wanted[name] = value
            off = [o for o in off if o != name]
    return wanted, off


def missing_options(config_text: str, fragment_text: str) -> list[str]:
    """Fragment lines the resulting .config does not honour (empty when all are)."""
    wanted, off = fragment_options(fragment_text)
    have: dict[str, str] = {}
    for line in config_text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            have[name] = value
    missing = [f"{n}={v}" for n, v in wanted.items() if have.get(n) != v]
    missing += [f"{n} (must be off)" for n in off if have.get(n) not in (None, "n")]
    return missing


def _prefix(variant: str) -> str:
    return "" if variant == "default" else f"{variant}-"


def own_kernel_dir(tree: Path, variant: str = "default") -> Path:
    """Cache folder of our kernel `variant` built from `tree` with the current fragment(s)."""
    recipe = fragment_text(variant) + "".join("\n" + v for v in variant_make_vars(variant))
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    if variant == "default":  # the hash of kernel.fragment's bytes, as before
        digest = hashlib.sha256(FRAGMENT.read_bytes()).hexdigest()[:12]
    return sub_dir("kernels", f"own-{_prefix(variant)}{source_version(tree)}-{digest}")


def build_own_kernel(report: Reporter = quiet, jobs: int = 2,
                     variant: str = "default") -> GuestKernel:
    """Our kernel from Debian's source + kernel.fragment (+ kernel-debug.fragment for
    the debug variant), built once and cached by content."""
    tree = linux_source_dir(report)
    done = own_kernel_dir(tree, variant) / "kernel.json"
    if done.exists():  # built: no wait for the lock while a build of another fragment runs
        return GuestKernel(variant, done.parent / "bzImage",
                           json.loads(done.read_text())["release"])
    # one lock per variant (they build in their own folders): a debug build in progress
    # does not hold up a first build of the default kernel
    with locked("own-kernel" if variant == "default" else f"own-kernel-{variant}"):
        return _build_own_kernel(tree, report, jobs, variant)


def _build_own_kernel(tree: Path, report: Reporter, jobs: int, variant: str) -> GuestKernel:
    out = own_kernel_dir(tree, variant)
    done = out / "kernel.json"
    if done.exists():
        meta = json.loads(done.read_text())
        return GuestKernel(variant, out / "bzImage", meta["release"])
    # one build folder per source version and variant: a changed fragment rebuilds
    # incrementally, and the two variants do not rebuild each other's objects
    build = sub_dir("kernels", f"build-{_prefix(variant)}{source_version(tree)}")
    if variant == "coverage":
        _seed_build_folder(build, tree, report)
    fragment = fragment_text(variant)
    make = ["make", "-C", str(tree), f"O={build}", "ARCH=x86_64", f"-j{jobs}",
            f"LOCALVERSION=-vfio-scenario{'' if variant == 'default' else '-' + variant}",
            *variant_make_vars(variant)]
    log = out / "build.log"
    with log.open("w") as log_file:
        _run_logged([*make, "tinyconfig"], log_file)
        (build / "fragment.config").write_text(fragment)
        _run_logged(["sh", str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(build),
                     str(build / ".config"), str(build / "fragment.config")], log_file, cwd=build)
        _run_logged([*make, "olddefconfig"], log_file)
    missing = missing_options((build / ".config").read_text(), fragment)
    if missing:
        raise EnvironmentProblem(f"the {variant} guest kernel's config lacks options of its "
                                 "fragment (dependencies or compiler support not met here?): "
                                 f"{', '.join(missing)}")
    report(f"building the guest kernel in {build} (log {log}), -j{jobs}")
    ticker = Ticker(report)
    with log.open("a") as log_file:
        proc = subprocess.Popen([*make, "bzImage"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        count = 0
        for line in proc.stdout:
            log_file.write(line)
            if line.startswith(("  CC", "  AS")):
                count += 1
                ticker.tick(f"kernel build: {count} files compiled, now {line.split()[-1]}")
        if proc.wait() != 0:
            raise EnvironmentProblem(f"the guest kernel build failed; see {log}")
    release = (build / "include/config/kernel.release").read_text().strip()
    shutil.copy2(build / "arch/x86/boot/bzImage", out / "bzImage")
    shutil.copy2(build / ".config", out / "config")
    # the kernel watch symbolizes splats with it (scripts/decode_stacktrace.sh, addr2line)
    shutil.copy2(build / "vmlinux", out / "vmlinux")
    record: dict[str, object] = {"release": release, "source": source_version(tree),
                                 "build_seconds": round(ticker.elapsed(), 1)}
    if variant == "coverage":
        record["gcov"] = _keep_gcno(build, tree, out)
    _write_json(done, record)
    report(f"{variant} guest kernel {release} built in {ticker.elapsed():.0f}s")
    return GuestKernel(variant, out / "bzImage", release)


def _seed_build_folder(build: Path, tree: Path, report: Reporter) -> None:
    """A first coverage build starts from a copy of the default kernel's build folder.

    Both share kernel.fragment; kbuild's per-option dependencies (fixdep) and command-line
    checks then recompile only the profiled objects and the few users of the gcov options,
    not the whole kernel. Skipped when the folder has been built before or there is no
    default build to copy.

    The default kernel may be rebuilding meanwhile (another fragment): the copy does not
    wait for its lock. A file written while the copy ran may be half written, so every file
    the default build touched since just before the copy is deleted from the copy; kbuild
    rebuilds what is missing or was built with other options, as after an interrupted make."""
    seed = sub_dir("kernels", f"build-{source_version(tree)}")
    if (build / "vmlinux").exists() or not (seed / "vmlinux").exists():
        return
    report(f"seeding {build} from {seed}")
    shutil.rmtree(build)
    started = time.time() - 2.0
    subprocess.run(["cp", "-a", "--reflink=auto", str(seed), str(build)], check=True)
    for path in seed.rglob("*"):
        try:
            recent = path.lstat().st_mtime >= started
        except OSError:  # removed meanwhile
            continue
        if recent and not path.is_dir():
            (build / path.relative_to(seed)).unlink(missing_ok=True)


def _keep_gcno(build: Path, tree: Path, out: Path) -> dict[str, str]:
    """Copy the build's .gcno files (the profiled objects' line tables) next to the kernel.

    The build folder is shared by later builds of the variant; the kept copies stay those
    of this bzImage. Returns what the coverage collection needs to map the guest's counters
    back to files: the build folder the guest's /sys/kernel/debug/gcov mirrors, and the
    source tree."""
    kept = out / "gcno"
    shutil.rmtree(kept, ignore_errors=True)
    count = 0
    for gcno in sorted(build.rglob("*.gcno")):
        target = kept / gcno.relative_to(build)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(gcno, target)
        count += 1
    if not count:
        raise EnvironmentProblem(f"the coverage kernel build in {build} left no .gcno file "
                                 "(GCOV_PROFILE did not reach kbuild?)")
    return {"build_dir": str(build), "source_tree": str(tree), "gcno": str(kept)}


def _run_logged(argv: list[str], log_file: IO[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd,
                          check=False)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"{' '.join(argv[:3])} … failed ({proc.returncode})")


def cached_kernels() -> list[tuple[str, Path, str]]:
    """(kind, folder, release) of every kernel in the cache."""
    found = []
    for meta in sorted(sub_dir("kernels").glob("*/kernel.json")):
        name = meta.parent.name
        kind = "debian" if name.startswith("debian-") else \
            "debug" if name.startswith("own-debug-") else \
            "coverage" if name.startswith("own-coverage-") else "default"
        found.append((kind, meta.parent, json.loads(meta.read_text())["release"]))
    return found


# --- Debian's kernel ----------------------------------------------------------------

#: What the testbed needs from Debian's kernel; the builtin ones are skipped.
DEBIAN_WANTED_MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p",
                         "vfio", "vfio_iommu_type1", "vfio_pci")


def _debian_packages(apt: PrivateApt) -> tuple[str, str, str]:
    """(binary package, modules package, version) of the newest Debian amd64 kernel."""
    image = next((d for d in apt.depends("linux-image-amd64") if d.startswith("linux-image-")), "")
    if not image:
        raise EnvironmentProblem("linux-image-amd64 names no kernel image on this mirror")
    deps = apt.depends(image)
    binary = next((d for d in deps if d.startswith("linux-binary")), image)
    modules = next((d for d in deps if d.startswith("linux-modules")), "")
    return binary, modules, apt.candidate(image)


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.\w+)?$", "", base).replace("-", "_")


def resolve_modules(modules_dep: str, builtin: str, wanted: tuple[str, ...]) -> list[str]:
    """Module paths (relative to the release dir) to load for `wanted`, dependencies first.

    `modules_dep` is modules.dep text, `builtin` modules.builtin text (Debian ships none).
    A module absent from modules.dep is taken to be built in (Debian builds virtio_pci in);
    when it is not, the guest's init reports the missing device at boot."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep.splitlines():
        path, _, rest = line.partition(":")
        deps[_module_name(path)] = (path, rest.split())
    builtins = {_module_name(line) for line in builtin.split()}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in builtins or name not in deps:
            return
        path, requires = deps[name]
        if path in order:
            return
        for dep in requires:
            visit(_module_name(dep))
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def fetch_debian_kernel(report: Reporter = quiet) -> GuestKernel:
    """Debian's newest amd64 kernel (sid) with the modules the testbed loads, cached."""
    with locked("debian-kernel"):
        return _fetch_debian_kernel(report)


def _fetch_debian_kernel(report: Reporter) -> GuestKernel:
    import lzma

    cached = sorted(sub_dir("kernels").glob("debian-*/kernel.json"))
    apt = PrivateApt()
    try:
        apt.update()
        binary, modules_pkg, version = _debian_packages(apt)
    except EnvironmentProblem:
        if cached:  # offline: the newest one we have
            return _debian_from_meta(cached[-1])
        raise
    out = sub_dir("kernels", f"debian-{version}")
    if (out / "kernel.json").exists():
        return _debian_from_meta(out / "kernel.json")
    report(f"downloading {binary} and {modules_pkg} ({version})")
    staging = out / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    for package in (binary, modules_pkg):
        extract_deb(apt.download(package, sub_dir("debs")), staging)
    images = sorted(staging.glob("usr/lib/modules/*/vmlinuz")) + sorted(staging.glob("boot/vmlinuz-*"))
    if not images:
        raise EnvironmentProblem(f"{binary} holds no vmlinuz")
    release_dir = next(p for p in staging.glob("usr/lib/modules/*") if (p / "kernel").is_dir())
    release = release_dir.name
    report(f"depmod on the extracted {release} tree")
    subprocess.run(["depmod", "-b", str(staging / "usr"), release], check=True,
                   capture_output=True)
    builtin = release_dir / "modules.builtin"
    order = resolve_modules((release_dir / "modules.dep").read_text(),
                            builtin.read_text() if builtin.exists() else "",
                            DEBIAN_WANTED_MODULES)
    mod_out = out / "modules"
    mod_out.mkdir(exist_ok=True)
    names = []
    for rel in order:
        src = release_dir / rel
        name = _module_name(rel) + ".ko"
        data = src.read_bytes()
        if rel.endswith(".xz"):
            data = lzma.decompress(data)
        elif rel.endswith(".zst"):
            data = subprocess.run(["zstd", "-dc", str(src)], check=True,
                                  capture_output=True).stdout
        (mod_out / name).write_bytes(data)
        names.append(name)
    shutil.copy2(images[0], out / "vmlinuz")
    shutil.rmtree(staging)
    _write_json(out / "kernel.json", {"release": release, "version": version, "modules": names})
    report(f"Debian kernel {release} ready ({len(names)} modules for the initramfs)")
    return _debian_from_meta(out / "kernel.json")


def _debian_from_meta(meta_path: Path) -> GuestKernel:
    meta = json.loads(meta_path.read_text())
    folder = meta_path.parent
    return GuestKernel("debian", folder / "vmlinuz", meta["release"],
                       tuple(folder / "modules" / m for m in meta["modules"]))


def user_kernel(path: str) -> GuestKernel:
    """A kernel image the user built; its release is read from the bzImage header."""
    image = Path(path).expanduser().resolve()
    if not image.is_file():
        raise EnvironmentProblem(f"--kernel {path}: no such file")
    return GuestKernel("path", image, bzimage_release(image))


def bzimage_release(image: Path) -> str:
    """uname -r of a bzImage, from its setup header's kernel_version string ("" if none)."""
    data = image.read_bytes()[:0x10000]
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        return ""
    offset = int.from_bytes(data[0x20E:0x210], "little") + 0x200
    text = data[offset:offset + 256].split(b"\0", 1)[0].decode(errors="replace")
    return text.split(" ", 1)[0]


def resolve_kernel(spec: str, report: Reporter = quiet) -> GuestKernel:
    """"default" (our build), "debug" (our build with the kernel's bug detectors),
    "debian" (Debian's newest) or a path to a bzImage."""
    if spec in VARIANTS:
        return build_own_kernel(report, variant=spec)
    if spec == "debian":
        return fetch_debian_kernel(report)
    return user_kernel(spec)
