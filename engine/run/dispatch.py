"""`vfio-scenario run` on the host: select, decide where to run, run, report.

Where: on this host's devices when `--device` names some or the host has VFIO-bound
devices (and `--testbed` is not `always`), else inside the QEMU testbed. Either way
results arrive as events, each finished case goes to the report sink at once
(journal + reports rewritten), and the console shows progress.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

from vfio_scenario import __version__
from vfio_scenario.errors import EnvironmentProblem, NothingSelected, ScenarioErrors, UsageError
from vfio_scenario.language.cases import Case
from vfio_scenario.language.compile import compile_documents, compile_or_raise
from vfio_scenario.language.loader import Document
from vfio_scenario.report.junit import JunitOptions
from vfio_scenario.results import CaseResult, RunResult
from vfio_scenario.run.guest import in_guest
from vfio_scenario.run.interpreter import RunOptions


def _where(args: argparse.Namespace) -> str:
    """"local" or "testbed", from --testbed, --device and what this host has."""
    if in_guest():
        return "local"
    if args.testbed == "always":
        if args.device:
            raise UsageError("--device names host devices; it cannot be used with --testbed always")
        return "testbed"
    if args.device:
        return "local"
    from vfio_scenario.run.probe import vfio_bound_devices

    if vfio_bound_devices() and os.path.exists("/dev/vfio"):
        return "local"
    if args.testbed == "never":
        raise EnvironmentProblem("no VFIO device on this host (none bound to vfio-pci) and "
                                 "--testbed never; name one with --device or allow the testbed")
    return "testbed"


def select(cases: list[Case], args: argparse.Namespace) -> list[Case]:
    from vfio_scenario import select as sel

    chosen = cases
    driver = getattr(args, "driver", None)
    if driver:
        chosen = [c for c in chosen if c.driver == driver]
    if args.keyword:
        expr = sel.parse_keyword(args.keyword)
        chosen = [c for c in chosen if expr.matches(c.id, c.tags)]
    if args.tag:
        chosen = [c for c in chosen if set(args.tag) & set(c.tags)]
    if args.shard:
        index, count = sel.parse_shard(args.shard)
        ids = [c.id for c in chosen]
        if getattr(args, "shard_by", "id") == "duration":
            chosen = sel.shard_by_duration(ids, index, count, _durations(args), items=chosen)
        else:
            chosen = sel.shard(ids, index, count, items=chosen)
    return chosen


def _durations(args: argparse.Namespace) -> dict[str, float]:
    """The case durations of --durations FILE (read once), {} without it."""
    from vfio_scenario import select as sel

    if not getattr(args, "durations", None):
        return {}
    cached = getattr(args, "_durations_read", None)
    if cached is None:
        cached = sel.load_durations(args.durations)
        args._durations_read = cached
    return dict(cached)


def _expected(args: argparse.Namespace, journal: str) -> dict[str, float]:
    """What each case is expected to take, for --jobs' queue: --durations FILE, else
    the journal of the previous run when it is readable, else nothing (estimates)."""
    from vfio_scenario.errors import VfioScenarioError
    from vfio_scenario.select import load_durations

    if getattr(args, "jobs", 1) <= 1:
        return {}
    if getattr(args, "durations", None):
        return _durations(args)
    if not os.path.exists(journal):
        return {}
    try:
        return load_durations(journal)
    except VfioScenarioError:
        return {}  # a damaged journal only loses the expectations


def check_options(args: argparse.Namespace) -> None:
    """Combinations of options that cannot work: UsageError (exit 2) before anything runs."""
    if getattr(args, "shard_by", "id") == "duration":
        if not args.shard:
            raise UsageError("--shard-by duration splits a --shard I/N run; give --shard")
        if not getattr(args, "durations", None):
            raise UsageError("--shard-by duration needs --durations FILE (a journal or JSON "
                             "report of an earlier run)")
    jobs = getattr(args, "jobs", 1)
    if jobs > 1 and args.device:
        raise UsageError(f"--jobs {jobs} runs testbed VMs; with --device the cases run on "
                         "this host's devices, one at a time (drop --jobs)")
    if getattr(args, "coverage", None) and getattr(args, "baseline_kernel", None):
        raise UsageError("--coverage cannot be used with --baseline-kernel")
    if jobs > 1 and getattr(args, "baseline_kernel", None):
        raise UsageError(f"--jobs {jobs} cannot be combined with --baseline-kernel")
    _durations(args)  # a bad FILE is an error now, not after the testbed booted


def known_issues_for(cases: list[Case], path: str | None) -> Any:
    """The known issues of --known-issues FILE and of the cases' scenarios."""
    from vfio_scenario.known_issues import KnownIssues

    return KnownIssues.for_run(cases, path)


def run_facts(args: argparse.Namespace, where: str) -> dict[str, str]:
    """The run properties the command line decides: engine version, where, and the
    shard (`I/N`, so a merge of the shards can tell which one never reported)."""
    facts = {"engine_version": __version__, "where": where}
    if args.shard:
        from vfio_scenario.select import parse_shard

        facts["shard"] = "{}/{}".format(*parse_shard(args.shard))
    return facts


def run_command(args: argparse.Namespace) -> int:
    from vfio_scenario.report.files import check_outputs
    from vfio_scenario.report.sink import ReportSink, default_journal

    check_options(args)
    if getattr(args, "baseline_kernel", None):
        from vfio_scenario.run.compare import run_compare

        return run_compare(args)
    compiled = compile_or_raise(args.paths, need_cases=True)
    cases = select(compiled.cases, args)
    if not cases:
        raise NothingSelected("the filters selected no case")
    known = known_issues_for(cases, getattr(args, "known_issues", None))
    check_outputs({"--junit-xml": args.junit_xml, "--json": args.json, "--html": args.html})
    where = _where(args)
    coverage = _coverage_setup(args, where)
    journal = getattr(args, "journal", None) or default_journal(args.junit_xml)
    args._expected = _expected(args, journal)  # before the sink starts the journal afresh
    sink = ReportSink(junit_xml=args.junit_xml, json_path=args.json, html_path=args.html,
                      journal=journal,
                      resume=args.resume,
                      total=len(cases), fmt=args.format, planned=[c.id for c in cases],
                      junit_options=JunitOptions.of(args))
    if args.resume:
        done = sink.finished_ids()
        cases = [c for c in cases if c.id not in done]
        if not cases:
            sink.warn("the journal already holds every selected case; nothing left to run")
            sink.close()
            return sink.exit_code()
    run = sink.run
    run.properties.update(run_facts(args, where))
    for warning in known.unmatched_warnings():
        sink.warn(warning)
    options = RunOptions(timeout_multiplier=args.timeout_multiplier,
                         kernel_watch=getattr(args, "kernel_watch", True))
    on_event = RunEvents(sink, known, coverage)
    kernel = on_event.kernel
    interrupted = on_event.interrupted

    try:
        done = sink.finished_ids() if args.resume else set()
        if where == "local":
            kernel["release"] = os.uname().release
            _run_local(cases, compiled.documents, args, options, on_event, done)
        else:
            _run_testbed(cases, compiled.documents, args, options, on_event, run, done, kernel,
                         coverage)
    except BaseException:
        # the reports are written either way; a summary of nothing would only precede
        # the error that says why nothing ran
        sink.close(summary=bool(run.cases))
        raise
    if interrupted:
        sink.warn(f"run interrupted by {interrupted[0]}; the cases not run are missing")
    _close(sink, run, coverage)
    if interrupted:  # as a shell reports a process its signal ended: 128 + the signal
        return 128 + int(getattr(signal, interrupted[0], signal.SIGINT))
    return sink.exit_code()


def _close(sink: Any, run: RunResult, coverage: Any) -> None:
    """Close the reports; with --coverage its files first (their summary goes into the JSON
    report), and their error (exit 3) raised once the other reports are written."""
    problem: Exception | None = None
    if coverage is not None:
        try:  # the HTML's write error comes back
            problem = coverage.write(run, sink.warn)
        except EnvironmentProblem as exc:
            problem = exc
    sink.close()
    if coverage is not None:
        coverage.print_summary()
    if problem is not None:
        raise problem


class RunEvents:
    """Where a run's events go: each result (its splats decoded, known issues applied,
    the testbed's properties added) to the report sink, the rest to the console."""

    def __init__(self, sink: Any, known: Any, coverage: Any = None) -> None:
        self.sink = sink
        self.known = known
        self.coverage = coverage  # run/coverage.py's collector with --coverage
        self.run: RunResult = sink.run
        # where a splat's stack can be decoded: our testbed kernel's vmlinux, or the host's
        # debug vmlinux (set by _run_testbed / _run_local; made when a first splat comes)
        self.kernel: dict[str, Any] = {}
        self.interrupted: list[str] = []  # the signal that ended the run early, if one did

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "result":
            self.result(CaseResult.from_dict(event["result"]))
        elif kind == "hello":
            self.run.properties.update({k: str(v)
                                        for k, v in event.get("properties", {}).items()})
            self.sink.header()
        elif kind == "warning":
            self.sink.warn(event.get("message", ""))
            if self.coverage is not None:
                self.coverage.on_warning(event.get("message", ""))
        elif kind == "kmemleak":
            self.kmemleak(int(event.get("objects", 0)), str(event.get("report", "")))
        elif kind == "kernel_before":
            self.kernel_before([str(p) for p in event.get("problems", [])])
        elif kind == "coverage" and self.coverage is not None:
            self.coverage.add_case_event(event)
        elif kind == "plan":
            # compiled for the real devices: the `driver` axis holds their drivers
            self.sink.replan(event["ids"])
            if not event["ids"]:
                self.sink.warn("no selected case runs on these devices (the `driver` axis "
                               "holds the scenario drivers of the devices here)")
        elif kind == "interrupted":
            self.interrupted.append(str(event.get("signal", "SIGINT")))

    def kmemleak(self, objects: int, report: str) -> None:
        """kmemleak's report of the objects a run leaked: a warning now, and the run's
        `kmemleak` property in every report (one VM's after another's with --jobs)."""
        self.sink.warn(f"kmemleak: {objects} object(s) leaked during the run (not tied to "
                       f"one case):\n{report}")
        self._append_property("kmemleak", report)

    def kernel_before(self, problems: list[str]) -> None:
        """What a VM's kernel reported before the run (a splat at boot turns lockdep off
        and uses KASAN's one report): a warning now, and the run's `kernel_before_run`
        property in every report (one VM's after another's with --jobs)."""
        for problem in problems:
            self.sink.warn(problem)
        self._append_property("kernel_before_run", "\n".join(problems))

    def _append_property(self, name: str, text: str) -> None:
        """`text` as the run's property `name`, after what an earlier VM's run gave it."""
        earlier = self.run.properties.get(name)
        self.run.properties[name] = f"{earlier}\n{text}" if earlier else text

    def result(self, result: CaseResult) -> None:
        if result.kernel_splats:
            _symbolize(result, self.kernel)
        for key in ("accelerator", "testbed_kernel"):
            if key in self.run.properties:
                result.properties.setdefault(key, self.run.properties[key])
        self.known.apply(result, self.run.properties)
        self.sink.add(result)


def _symbolize(result: CaseResult, kernel: dict[str, Any]) -> None:
    from vfio_scenario.run.symbolize import symbolize_result, symbolizer

    if "decode" not in kernel:
        kernel["decode"] = symbolizer(kernel.get("vmlinux"), kernel.get("release", ""))
    if kernel["decode"] is not None:
        symbolize_result(result, kernel["decode"])


def _reselect(args: argparse.Namespace, done: set[str]) -> Any:
    """The run's selection applied again to the cases compiled for the real devices."""
    def reselect(cases: list[Case]) -> list[Case]:
        return [c for c in select(cases, args) if c.id not in done]
    return reselect


def _run_local(cases: list[Case], documents: list[Document], args: argparse.Namespace,
               options: RunOptions, on_event: Any, done: set[str]) -> None:
    from vfio_scenario.language.devices import DeviceName
    from vfio_scenario.run import devstate
    from vfio_scenario.run.driverfacts import device_names
    from vfio_scenario.run.plan import plan_each
    from vfio_scenario.run.probe import probe_host
    from vfio_scenario.run.session import run_planned
    from vfio_scenario.run.testbed_run import needs_driver_facts
    from vfio_scenario.uapi.sysfs import normalize_bdf

    # devices named with --device that no VFIO driver holds are bound to vfio-pci for
    # the run; everything named is put back as it was, also on SIGINT/SIGTERM
    problems: list[str] = []
    try:
        with devstate.held([normalize_bdf(b) for b in args.device], problems,
                           lambda message: on_event({"event": "warning", "message": message})):
            caps = probe_host(args.device or None)
            if caps.devices:
                # templates see this host's BDFs (`devices[1]`) and the limits their
                # drivers' init sets (`driver.max_memcpy_size`), as in the guest
                names = device_names(caps.devices) if needs_driver_facts(cases) else \
                    [DeviceName(d.bdf) for d in caps.devices]
                compiled = compile_documents(documents, names)
                if compiled.errors:
                    raise ScenarioErrors(compiled.errors)
                cases = _reselect(args, done)(compiled.cases)
                on_event({"event": "plan", "ids": [c.id for c in cases]})
            on_event({"event": "hello", "properties": {"kernel": caps.kernel_release}})
            run_planned(plan_each(cases, caps, args.iommu_mode or None), caps, options,
                        on_event, fail_fast=args.fail_fast)
    except devstate.Interrupted as exc:
        on_event({"event": "interrupted", "signal": str(exc)})
    if problems:
        on_event({"event": "warning",
                  "message": "device state not restored: " + "; ".join(problems)})


def _coverage_setup(args: argparse.Namespace, where: str) -> Any:
    """The run's coverage collector (run/coverage.py) for --coverage DIR, else None."""
    if getattr(args, "coverage_per_case", False) and not getattr(args, "coverage", None):
        raise UsageError("--coverage-per-case needs --coverage DIR")
    if not getattr(args, "coverage", None):
        return None
    from vfio_scenario.run.coverage import CoverageCollector

    if where != "testbed":
        raise UsageError("--coverage collects the testbed kernel's gcov counters; it cannot "
                         "be used with --device or on a host with VFIO devices (add "
                         "--testbed always)")
    if getattr(args, "jobs", 1) > 1:
        raise UsageError("--coverage reads the counters of one VM; run with --jobs 1, or "
                         "shards merged by `report merge --coverage DIR`")
    return CoverageCollector.for_run(args)


def _run_testbed(cases: list[Case], documents: list[Document], args: argparse.Namespace,
                 options: RunOptions, on_event: Any, run: RunResult, done: set[str],
                 kernel: dict[str, Any], coverage: Any = None) -> None:
    """Run in the VM of `testbed up` when one runs, else in a testbed of our own (always
    with --coverage: the counters are reset and read, and the kernel must be the one
    asked for); with --jobs N in N VMs of our own (run/parallel.py)."""
    from vfio_scenario.run.testbed_run import run_in_testbed
    from vfio_scenario.testbed import Testbed
    from vfio_scenario.testbed.persistent import attach

    jobs = getattr(args, "jobs", 1)
    if jobs > 1:
        _run_testbeds(cases, documents, args, options, on_event, run, done, kernel)
        return
    owned: list[Any] = []

    def fresh() -> Any:
        testbed = Testbed(kernel=args.kernel, accel=args.accel).start()
        owned.append(testbed)
        return testbed

    # waits while another command uses the `up` VM; a --baseline-kernel run never takes
    # it (it boots a kernel of its own choosing)
    own = getattr(args, "own_testbed", False) or coverage is not None
    attached = None if own else attach()
    testbed = attached or fresh()
    kernel["vmlinux"] = testbed.vmlinux
    try:
        if coverage is not None:
            coverage.begin(testbed)
        _testbed_properties(run, testbed, "testbed up" if not owned else "own VM")
        run_in_testbed(testbed, cases, documents, on_event, devices=[],
                       iommu_modes=args.iommu_mode, timeout_multiplier=options.timeout_multiplier,
                       fail_fast=args.fail_fast, replace=None if owned else fresh,
                       reselect=_reselect(args, done), kernel_watch=options.kernel_watch,
                       coverage_per_case=coverage is not None and coverage.per_case)
        if coverage is not None:
            coverage.end(testbed)
    finally:
        for t in owned:
            t.stop()
        if attached is not None:
            attached.stop()  # disconnects and lets the next command have the VM


def _testbed_properties(run: RunResult, testbed: Any, which: str) -> None:
    run.properties.update({"accelerator": testbed.accelerator,
                           "testbed_kernel": testbed.kernel_release,
                           "qemu": testbed.qemu_version, "testbed": which})


def _run_testbeds(cases: list[Case], documents: list[Document], args: argparse.Namespace,
                  options: RunOptions, on_event: Any, run: RunResult, done: set[str],
                  kernel: dict[str, Any]) -> None:
    """--jobs N: the `testbed up` VMs 1..N when VMs are up (a UsageError saying how to
    start them when fewer are), else N VMs of our own, booted in parallel, memory shared
    out by what the host has available."""
    from vfio_scenario.run.parallel import (
        boot_testbeds,
        mem_available_mib,
        run_in_testbeds,
        vm_memory_mib,
    )
    from vfio_scenario.testbed import Testbed
    from vfio_scenario.testbed.persistent import attach_jobs

    jobs = args.jobs
    own = getattr(args, "own_testbed", False)
    testbeds: list[Any] = [] if own else attach_jobs(jobs)
    attached = bool(testbeds)
    owned: list[Any] = []

    def fresh() -> Any:  # in place of an `up` VM that crashed (not ours to reboot)
        testbed = Testbed(kernel=args.kernel, accel=args.accel,
                          memory=f"{vm_memory_mib(jobs, mem_available_mib())}M").start()
        owned.append(testbed)
        return testbed

    if attached:
        release: Any = lambda: None
    else:
        memory = f"{vm_memory_mib(jobs, mem_available_mib())}M"
        testbeds, release = boot_testbeds(lambda: Testbed(kernel=args.kernel, accel=args.accel,
                                                          memory=memory), jobs)
    kernel["vmlinux"] = testbeds[0].vmlinux
    try:
        # as with one: the same reports
        _testbed_properties(run, testbeds[0], "testbed up" if attached else "own VM")
        run_in_testbeds(testbeds, cases, documents, on_event, devices=[],
                        iommu_modes=args.iommu_mode,
                        timeout_multiplier=options.timeout_multiplier,
                        fail_fast=args.fail_fast, durations=getattr(args, "_expected", {}),
                        reselect=_reselect(args, done), kernel_watch=options.kernel_watch,
                        **({"replace": fresh} if attached else {}))
    finally:
        for t in [*testbeds, *owned]:
            t.stop()  # an attached VM: disconnects and lets the next command have it
        release()
