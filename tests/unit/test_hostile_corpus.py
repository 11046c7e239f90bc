"""The hostile corpus: inputs a hostile but fair user (or a fuzzer) feeds `validate`.

Each file gets its exact located message and exit status 2 from the CLI, in a process
of its own under an address-space limit (a blow-up is a MemoryError, so the test fails),
with no traceback. How long each takes and how much memory it peaks at is measured by
benchmarks/hostile_validate.py, not asserted here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent.parent / "data" / "hostile"
MEMORY_LIMIT = 200 << 20  # address space of one validation

# file → (line, column, message) of the first error `validate` prints for it
EXPECTED = {
    '1e400-duration.yaml': (2, 23, '1e400 is not a finite number: no argument takes NaN or infinity'),
    'deep-block-sequence.yaml': (2, 201, 'document nested deeper than 100 levels'),
    'deep-flow-mapping.yaml': (1, 401, 'document nested deeper than 100 levels'),
    'deep-flow-sequence.yaml': (1, 101, 'document nested deeper than 100 levels'),
    'duration-digits.yaml': (2, 23, "`duration`: bad duration '99999999999999999999999999999999999999999999999999999999999… (403 characters): more digits than any duration"),
    'duration-over-a-day.yaml': (2, 23, "`duration`: duration '25h' is longer than the maximum of 24h (86400 s)"),
    'inf-duration.yaml': (2, 23, '.inf is not a finite number: no argument takes NaN or infinity'),
    'int-5001-digits-quoted.yaml': (2, 26, "`size`: '11111111111111111111111111111111111111111111111111111111111… (5003 characters) has more digits than any 64-bit value"),
    'int-5001-digits-repeat.yaml': (3, 13, 'integer 9999999999999999999999999999999999999999… (5001 characters) does not fit in 64 bits: no argument holds more than a u64 (0 to 0xffffffffffffffff) or an s64 (from -9223372036854775808)'),
    'int-5001-digits-size.yaml': (2, 26, 'integer 1111111111111111111111111111111111111111… (5001 characters) does not fit in 64 bits: no argument holds more than a u64 (0 to 0xffffffffffffffff) or an s64 (from -9223372036854775808)'),
    'int-80-bits-in-vars.yaml': (2, 9, 'integer 0x1ffffffffffffffffffff does not fit in 64 bits: no argument holds more than a u64 (0 to 0xffffffffffffffff) or an s64 (from -9223372036854775808)'),
    'matrix-too-many-cases.yaml': (2, 3, 'matrix expands to more than 10,000 cases'),
    'nan-timeout.yaml': (1, 10, '.nan is not a finite number: no argument takes NaN or infinity'),
    'repeat-over-bound.yaml': (3, 13, '`repeat`: Input should be less than or equal to 10000000'),
    's32-iommufd-fd.yaml': (4, 41, '`iommufd_fd`: 0x80000000 does not fit in s32 (-2147483648 to 2147483647)'),
    'size-beyond-u64.yaml': (2, 26, '`size`: 0x10000000000000000 does not fit in u64 (0 to 0xffffffffffffffff)'),
    'tag-binary.yaml': (1, 14, 'tag !!binary is not allowed: scenario files use plain YAML (strings, numbers, booleans, null, lists, mappings)'),
    'tag-local.yaml': (2, 23, 'tag !secret is not allowed: scenario files use plain YAML (strings, numbers, booleans, null, lists, mappings)'),
    'tag-python-name-key.yaml': (2, 13, 'tag !!python/name:os.system is not allowed: scenario files use plain YAML (strings, numbers, booleans, null, lists, mappings)'),
    'tag-python-object-apply.yaml': (2, 12, 'tag !!python/object/apply:os.system is not allowed: scenario files use plain YAML (strings, numbers, booleans, null, lists, mappings)'),
    'tag-python-object.yaml': (2, 12, 'tag !!python/object:builtins.dict is not allowed: scenario files use plain YAML (strings, numbers, booleans, null, lists, mappings)'),
    'tag-set.yaml': (1, 7, 'tag !!set is not allowed: scenario files use plain YAML (strings, numbers, booleans, null, lists, mappings)'),
    'template-2-pow-1e8.yaml': (2, 23, 'template exceeds a limit: an integer of about 100,000,001 bits: over the limit of 1024 bits'),
    'template-cpu-time.yaml': (2, 9, 'template exceeds a limit: it ran past 1 s of CPU'),
    'template-folded-nan.yaml': (3, 14, "template failed: NameError: name 'nan' is not defined"),
    'template-format-width.yaml': (2, 9, 'template exceeds a limit: a %-format width or precision of 1000000000: over the limit of 1 MiB (1,048,576 characters or items)'),
    'template-inf-duration.yaml': (2, 23, '`duration`: a duration must be a finite number of seconds, got inf'),
    'template-int-from-string.yaml': (2, 6, 'template exceeds a limit: an integer of about 13,288 bits: over the limit of 1024 bits'),
    'template-iova-beyond-u64.yaml': (8, 42, '`iova`: 0x10000000000000000 does not fit in u64 (0 to 0xffffffffffffffff)'),
    'template-ljust.yaml': (2, 9, 'template exceeds a limit: str.ljust with a width of 1000000000: over the limit of 1 MiB (1,048,576 characters or items)'),
    'template-memory.yaml': (2, 9, 'template exceeds a limit: it needs more memory than 64 MiB'),
    'template-nan-step-timeout.yaml': (5, 14, '`timeout`: a duration must be a finite number of seconds, got nan'),
    'template-nested-parens.yaml': (2, 9, 'template nests or recurses too deeply'),
    'template-output-size.yaml': (2, 9, 'template exceeds a limit: the rendered text holds more than 1 MiB (1,048,576 characters or items)'),
    'template-recursion.yaml': (2, 9, 'template nests or recurses too deeply'),
    'template-str-times-1e9.yaml': (2, 8, 'template exceeds a limit: str * 1000000000 would hold 1,000,000,000 characters or items: over the limit of 1 MiB (1,048,576 characters or items)'),
    'u16-num-vfs.yaml': (6, 40, '`num_vfs`: 0x10000 does not fit in u16 (0 to 0xffff)'),
    'u32-irq-start.yaml': (6, 48, '`start`: 0x100000000 does not fit in u32 (0 to 0xffffffff)'),
}


# `vfio-scenario validate ARGS…` with its address space limited first (in the child
# itself: no preexec_fn, which is unsafe beside the threads running these in parallel)
LIMITED = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({0}, {0})); "
           "from vfio_scenario.cli import main; sys.exit(main(['validate', *sys.argv[1:]]))")


def _validate(*paths: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", LIMITED.format(MEMORY_LIMIT), *map(str, paths)],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
                          check=False)


@pytest.fixture(scope="module")
def validated() -> dict[str, subprocess.CompletedProcess[str]]:
    """Every corpus file validated in a process of its own, two at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda name: (name, _validate(name, cwd=CORPUS)), sorted(EXPECTED))
        return dict(done)


def test_corpus_has_every_file_listed() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_file_is_a_located_error(
        name: str, validated: dict[str, subprocess.CompletedProcess[str]]) -> None:
    line, col, message = EXPECTED[name]
    proc = validated[name]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{name}:{line}:{col}: {message}"
    assert lines[-1].endswith("error(s) in 1 file(s)")


def test_a_scenario_folder_reached_through_a_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("steps:\n  - sleep: {duration: 1ms}\n")
    (tmp_path / "self").symlink_to(".")
    proc = _validate("self", "self/self", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == "1 file(s), 1 scenario(s), 1 case(s): ok\n"  # the same file once
    deep = "/".join(["self"] * 45)  # past the kernel's 40 symlinks per lookup
    proc = _validate(deep, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == f"{deep}: too many levels of symbolic links"


# --- every integer argument against its C type, after templates render ----------------

BASE = """\
requires: {devices: DEVICES}
steps:
  - open_iommu: {}
    as: i
  - open_device: {iommu: i}
    as: d
  - alloc_buffer: {size: 4KiB}
    as: b
  - irq_enable: {device: d, type: msix}
    as: q
  - open_cdev: {}
    as: c
  - STEP
"""

# (C type, the step with `{{ X }}` where the value goes, the argument's name)
TYPED = [
    ("u64", "map_dma: {iommu: i, buffer: b, iova: '{{ X }}'}", "iova"),
    ("u64", "unmap_dma: {iommu: i, iova: '{{ X }}', size: 4KiB}", "iova"),
    ("u64", "memcpy_start: {device: d, src: '{{ X }}', dst: 0, size: 8}", "src"),
    ("u64", "memcpy_storm: {device: d, src: 0, dst: '{{ X }}', size: 8, iterations: 1}", "dst"),
    ("u64", "fill: {buffer: b, pattern: random, seed: '{{ X }}'}", "seed"),
    ("u64", "bar_read: {device: d, offset: '{{ X }}'}", "offset"),
    ("u64", "expect_irq: {irq: q, count: '{{ X }}'}", "count"),
    ("u64", "alloc_buffer: {size: '{{ X }}'}", "size"),
    ("u64", "bar_mmap: {device: d, offset: '{{ X }}'}", "offset"),
    ("u32", "irq_enable: {device: d, type: msi, start: '{{ X }}'}", "start"),
    ("u32", "irq_trigger: {irq: q, vector: '{{ X }}'}", "vector"),
    ("u32", "region_info: {device: d, region: '{{ X }}'}", "region"),
    ("u32", "attach: {device: d, ioas: '{{ X }}'}", "ioas"),
    ("u32", "device_info: {device: d, num_regions: '{{ X }}'}", "num_regions"),
    ("u32", "device_info: {device: d, num_irqs: '{{ X }}'}", "num_irqs"),
    ("u16", "enable_sriov: {device: d, num_vfs: '{{ X }}'}", "num_vfs"),
    ("u16", "open_device: {iommu: i, pf: d, vf: '{{ X }}'}", "vf"),
    ("s32", "bind_iommufd: {cdev: c, iommufd_fd: '{{ X }}'}", "iommufd_fd"),
]
BOUNDS = {"u64": (0, 2**64 - 1), "u32": (0, 2**32 - 1), "u16": (0, 2**16 - 1),
          "s32": (-(2**31), 2**31 - 1)}


def _errors(text: str) -> list[str]:
    from vfio_scenario.language.compile import compile_documents
    from vfio_scenario.language.loader import load_text

    doc, errors = load_text(text, "t.yaml")
    assert errors == []
    return [e.message for e in compile_documents([doc]).errors]


@pytest.mark.parametrize(("ctype", "step", "arg"), TYPED, ids=[f"{s.split(':')[0]}.{a}"
                                                                for _, s, a in TYPED])
def test_each_integer_argument_is_checked_for_its_c_type(ctype: str, step: str, arg: str) -> None:
    low, high = BOUNDS[ctype]
    text = BASE.replace("DEVICES", "1")
    assert _errors(text.replace("STEP", step.replace("X", str(high)))) == []
    span = f"0 to {high:#x}" if low == 0 else f"{low} to {high}"
    shown = f"{high + 1:#x}" if high + 1 > 0xffff else str(high + 1)
    assert _errors(text.replace("STEP", step.replace("X", str(high + 1)))) == [
        f"`{arg}`: {shown} does not fit in {ctype} ({span})"]
    # below the type: this message, or the argument's own narrower minimum's
    (below,) = _errors(text.replace("STEP", step.replace("X", str(low - 1))))
    assert below.startswith(f"`{arg}`: "), below


def test_requires_devices_is_a_u32() -> None:
    text = BASE.replace("STEP", "assert_not_tainted: {}")
    assert _errors(text.replace("DEVICES", str(2**32))) == [
        "`devices`: 0x100000000 does not fit in u32 (0 to 0xffffffff)"]


@pytest.mark.parametrize("duration", ["86401", "86400.5s", "1441m", "24.01h", "{{ 86400 + 1 }}"])
def test_durations_are_at_most_a_day(duration: str) -> None:
    text = BASE.replace("DEVICES", "1").replace("STEP", f"sleep: {{duration: '{duration}'}}")
    (message,) = _errors(text)
    assert message.startswith("`duration`: duration ")
    assert message.endswith(" is longer than the maximum of 24h (86400 s)")
    assert _errors(text.replace(duration, "24h")) == []


def test_the_cpu_limit_holds_when_its_first_signal_lands_in_a_gc_callback() -> None:
    """Python ignores an exception raised in a gc callback: past the limit the signal
    fires again until one lands in the template."""
    import gc
    import signal
    import time

    from vfio_scenario.language.templates import TemplateProblem, render

    # a list kept per outer turn makes the collector run every few hundred turns
    loop = ("{% set kept = [] %}{% for i in range(n) %}{% if kept.append([i]) %}{% endif %}"
            "{% for j in range(200) %}{% endfor %}{% endfor %}")
    assert render(loop, {"n": 1}) == ""  # compiled now: what follows is the render alone
    start = time.process_time()
    landed: list[str] = []

    def busy_gc(phase: str, info: dict[str, int]) -> None:
        # the first collection while the limit's timer runs holds the CPU until the
        # timer's signal lands in it. (Not until some CPU time: on a loaded machine
        # ITIMER_PROF, sampled at the scheduler's ticks, and process_time() part by a
        # quarter of a second and more.) 30 s bound it should no signal come.
        if phase != "start" or landed or signal.getitimer(signal.ITIMER_PROF)[0] == 0.0:
            return
        try:
            while time.process_time() - start < 30:
                pass
        except BaseException as exc:
            landed.append(type(exc).__name__)
            raise
    ignored: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: ignored.append(type(u.exc_value).__name__)
    gc.callbacks.append(busy_gc)
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        with pytest.raises(TemplateProblem) as caught:
            render(loop, {"n": 100_000})  # some 20 s of CPU if nothing stopped it
    finally:
        gc.callbacks.remove(busy_gc)
        sys.unraisablehook = hook
        if not was_enabled:
            gc.disable()
    assert str(caught.value) == "template exceeds a limit: it ran past 1 s of CPU"
    assert landed == ["_OutOfTime"]  # the first signal landed in the callback
    assert "_OutOfTime" in ignored  # and Python ignored it there
    assert time.process_time() - start < 5
