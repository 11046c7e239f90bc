"""Documents → validated, expanded cases.

For each scenario of a file: check the scenario keys, expand the matrix (with the
implicit `iommu_mode` and `driver` axes), render every templated value per case, validate each
step against its operation's model, and check handles statically (defined earlier,
of the right kind). Every problem of every file is collected with its location;
nothing touches the host.
"""

from __future__ import annotations

import difflib
import gc
import itertools
import math
import os
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from vfio_scenario.errors import Location, NothingSelected, ScenarioError, ScenarioErrors
from vfio_scenario.language.cases import Case, Compiled, Iteration, Step
from vfio_scenario.language.devices import DeviceName, DriverFacts, device_names, driver_axis
from vfio_scenario.language.loader import Document, find_scenario_files, load_file
from vfio_scenario.language.models import (
    COMMON_KEYS,
    IOMMU_MODES,
    LOOP_KEYS,
    MAX_ITERATIONS,
    OPERATIONS,
    SCENARIO_KEYS,
    ForLoop,
    Op,
    ScenarioHeader,
    StepCommon,
    handle_fields,
)
from vfio_scenario.language.templates import (
    TemplateProblem,
    armed,
    render,
    render_tree,
    substitute,
    template_names,
    template_paths,
)
from vfio_scenario.language.units import show

RESERVED_AXES = ("iommu_mode", "driver")  # implicit axes: the engine fills them
LEFT_OUT = object()  # a `for` step whose `when` is false
MAX_CASES = 10_000  # cases of one scenario's matrix (the library has a few hundred in all)
_COMMON_MEMO: dict[str, StepCommon] = {}  # StepCommon is frozen, so sharing is safe
# (operation model, repr of its raw arguments) → the validated arguments (frozen) or their
# errors: the cases of a matrix, and a run's second compile for the testbed's devices,
# validate each step's arguments once
_VALIDATED: dict[tuple[type[Op], str], Op | list[tuple[tuple[Any, ...], str]]] = {}
DEVICE_NAMES = ("device", "devices")  # template variables naming the run's BDFs
PLACEHOLDER_DEVICES = ["0000:00:00.0", "0000:00:00.1", "0000:00:00.2", "0000:00:00.3"]


def display_path(path: str) -> str:
    """The path as shown in ids: relative to the working directory when below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel.replace(os.sep, "/")


def case_id(path: str, name: str, params: dict[str, Any]) -> str:
    if not params:
        return f"{path}::{name}"
    inner = ",".join(f"{k}={_fmt(params[k])}" for k in sorted(params))
    return f"{path}::{name}[{inner}]"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


class _FileCompiler:
    def __init__(self, doc: Document, devices: list[DeviceName], placeholders: bool) -> None:
        self.doc = doc
        self.path = display_path(doc.path)
        self.devices = devices
        self.placeholders = placeholders
        self._drivers: dict[str, DriverFacts] | None = None
        self.errors: dict[tuple[str, str], ScenarioError] = {}
        self.cases: list[Case] = []
        self._steps_done: dict[Any, tuple[dict[str, str], Step | None]] = {}
        self._made: dict[int, tuple[str, str] | None] = {}
        self._locations: dict[tuple[Any, ...], Location] = {}
        self._tpaths: dict[int, list[tuple[tuple[Any, ...], str]]] = {}
        self._listed: set[tuple[Any, ...]] = set()  # step lists whose locations are known
        self._loop_headers: dict[int, dict[str, Any]] = {}  # a `for` step without its body
        self._iterations = 0  # iterations of the `for` loops of the case being compiled

    @property
    def drivers(self) -> dict[str, DriverFacts]:
        """Every driver a case may name, by name: the devices' own (limits their init
        set), then the registered classes' declared limits (drivers no device here has).
        Read only by scenarios that require a driver: the others never import one."""
        if self._drivers is None:
            found = {d.driver.name: d.driver for d in self.devices if d.driver is not None}
            for name, facts in registered_driver_facts().items():
                found.setdefault(name, facts)
            self._drivers = found
        return self._drivers

    @property
    def driver_axis(self) -> list[str]:
        """The implicit `driver` axis: the drivers the devices have; without devices (or
        when none has a driver), every registered driver."""
        return driver_axis(self.devices) or sorted(self.drivers)

    def error(self, path: tuple[Any, ...], message: str, *, key: bool = False) -> None:
        loc = self.doc.location(path, key=key)
        self.errors.setdefault((str(loc), message), ScenarioError(loc, message))

    def run(self) -> None:
        data = self.doc.data
        if isinstance(data, dict):
            items: list[tuple[tuple[Any, ...], Any]] = [((), data)]
        elif isinstance(data, list):
            if not data:
                self.error((), "empty list: no scenario in this file")
            items = [((i,), s) for i, s in enumerate(data)]
        else:
            self.error((), "a scenario file holds a mapping (one scenario) or a list of them")
            return
        stem = os.path.splitext(os.path.basename(self.doc.path))[0]
        names: dict[str, tuple[Any, ...]] = {}
        for path, raw in items:
            if not isinstance(raw, dict):
                self.error(path, "a scenario is a mapping with `steps:`")
                continue
            name = raw.get("name", stem if len(items) == 1 else None)
            if name is None:
                self.error(path, "scenarios in a list need a `name`")
            elif str(name) in names:
                first = self.doc.location(names[str(name)]).line
                self.error((*path, "name") if "name" in raw else path,
                           f"two scenarios named {name!r} in one file (first at line {first})")
                # its body is still checked, but its cases would repeat the first one's ids
                self.scenario(path, raw, str(name), keep=False)
                continue
            else:
                names[str(name)] = path
            self.scenario(path, raw, str(name) if name is not None else stem)

    # -- one scenario ------------------------------------------------------------

    def scenario(self, path: tuple[Any, ...], raw: dict[str, Any], name: str,
                 keep: bool = True) -> None:
        for key in raw:
            if key not in SCENARIO_KEYS:
                self.error((*path, key), f"unknown scenario key `{key}`{suggest(key, SCENARIO_KEYS)}",
                           key=True)
        header, valid = self.header(path, {k: v for k, v in raw.items() if k in SCENARIO_KEYS})
        if header is None:
            return
        keep = keep and valid
        templated = [source for raw in (*header.steps, *header.teardown) if isinstance(raw, dict)
                     for _, source in self._template_paths(raw)]
        templated += [source for _, source in template_paths(header.vars)]
        read = {n for s in templated for n in template_names(s)}
        combos = self.matrix(path, header, fixed_mode(header, read))
        if combos is None:
            return
        for step_list in ("steps", "teardown"):
            for i, raw_step in enumerate(getattr(header, step_list)):
                if not isinstance(raw_step, dict):
                    self.error((*path, step_list, i),
                               "a step is a mapping with one operation key, e.g. `- sleep: {duration: 1s}`")
        seen: set[str] = set()
        names_devices = not read.isdisjoint(DEVICE_NAMES)
        for params in combos:
            cid = case_id(self.path, name, params)
            if cid in seen:
                self.error((*path, "matrix"), f"matrix gives case {cid} twice")
                continue
            seen.add(cid)
            case = self.case(path, header, name, cid, params, names_devices)
            if case is not None and keep:
                self.cases.append(case)

    def header(self, path: tuple[Any, ...],
               known: dict[str, Any]) -> tuple[ScenarioHeader | None, bool]:
        """The scenario's keys validated, and whether they were valid. An invalid key that
        does not feed the steps leaves a header without it: the steps are still checked
        (for errors only); (None, False) when there is nothing to check them with."""
        try:
            return ScenarioHeader.model_validate(known), True
        except ValidationError as exc:
            self.pydantic_errors(path, exc, ScenarioHeader)
            bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
        if bad & {"matrix", "vars", "steps", "teardown"}:
            return None, False
        try:
            return ScenarioHeader.model_validate({k: v for k, v in known.items()
                                                  if k not in bad}), False
        except ValidationError:
            return None, False

    def matrix(self, path: tuple[Any, ...], header: ScenarioHeader,
               fixed: str | None) -> list[dict[str, Any]] | None:
        """Every combination of the scenario's axes (explicit and implicit), with its
        `include` entries added and its `exclude` entries left out; None after an error."""
        axes = self._explicit_axes(path, header)
        exclude = header.matrix.get("exclude", [])
        if axes is None or not self._check_exclude(path, exclude, axes):
            return None
        implicit: dict[str, list[Any]] = {}
        if "driver" not in axes and header.requires.driver == "any":
            implicit["driver"] = list(self.driver_axis)
        if "iommu_mode" not in axes and self.uses_iommu(header):
            modes: list[str] = [fixed] if fixed else list(header.requires.iommu_modes or IOMMU_MODES)
            implicit["iommu_mode"] = list(modes)
        if "iommu_mode" in axes and not self._check_modes(path, axes["iommu_mode"]):
            return None
        axes = {**implicit, **axes}
        if math.prod(len(v) for v in axes.values()) > MAX_CASES:
            self.error((*path, "matrix"), f"matrix expands to more than {MAX_CASES:,} cases")
            return None
        combos = _combinations(axes, implicit, header.matrix.get("include", []))
        combos = [c for c in combos
                  if not any(all(c.get(k) == v for k, v in e.items()) for e in exclude)]
        if not combos:
            self.error((*path, "matrix") if header.matrix else path,
                       "matrix expands to no case (every combination is excluded)")
            return None
        return combos

    def _explicit_axes(self, path: tuple[Any, ...],
                       header: ScenarioHeader) -> dict[str, list[Any]] | None:
        """The axes the matrix names, each with its values; None after an error."""
        axes: dict[str, list[Any]] = {}
        ok = True
        for key, values in header.matrix.items():
            if key in ("include", "exclude"):
                for i, entry in enumerate(values):
                    if not isinstance(entry, dict) or not entry:
                        self.error((*path, "matrix", key, i),
                                   f"each `{key}` entry is a mapping of axis → value")
                        ok = False
                continue
            if not values:
                self.error((*path, "matrix", key), f"matrix axis `{key}` has no values")
                ok = False
            for i, v in enumerate(values):
                if isinstance(v, (dict, list)):
                    self.error((*path, "matrix", key, i),
                               "matrix values are scalars (numbers, strings, booleans)")
                    ok = False
            axes[key] = values
        return axes if ok else None

    def _check_exclude(self, path: tuple[Any, ...], exclude: list[dict[str, Any]],
                       axes: dict[str, list[Any]]) -> bool:
        ok = True
        for i, entry in enumerate(exclude):
            for k in entry:
                if k not in axes and k not in RESERVED_AXES:
                    self.error((*path, "matrix", "exclude", i, k),
                               f"exclude names unknown axis `{k}`{suggest(k, axes)}", key=True)
                    ok = False
        return ok

    def _check_modes(self, path: tuple[Any, ...], values: list[Any]) -> bool:
        """Whether an explicit `iommu_mode` axis holds IOMMU modes only."""
        ok = True
        for i, v in enumerate(values):
            if v not in IOMMU_MODES:
                self.error((*path, "matrix", "iommu_mode", i),
                           f"unknown IOMMU mode {v!r}{suggest(v, IOMMU_MODES)}")
                ok = False
        return ok

    @staticmethod
    def uses_iommu(header: ScenarioHeader) -> bool:
        if header.requires.iommu_modes:
            return True
        for raw in raw_steps((*header.steps, *header.teardown)):
            if any(OPERATIONS[k].opens_iommu for k in raw if k in OPERATIONS):
                return True
        return False

    def case(self, path: tuple[Any, ...], header: ScenarioHeader, name: str, cid: str,
             params: dict[str, Any], names_devices: bool) -> Case | None:
        facts = self.case_driver(header, params)
        devices = self.devices
        if self.placeholders and facts is not None:
            # no real device: the placeholders are served by the case's driver
            devices = [DeviceName(d, facts) for d in devices]
        context: dict[str, Any] = {"devices": devices, "device": devices[0]}
        context.update(params)
        if facts is not None:
            context["driver"] = facts  # the axis value's facts, not just its name
        problems: list[tuple[tuple[Any, ...], str]] = []
        for var, value in header.vars.items():
            context[var] = render_tree(value, context, (*path, "vars", var), problems)
        for var in header.vars:
            if var in params:
                self.error((*path, "vars", var),
                           f"`{var}` is both a matrix axis and a var", key=True)
        for p, msg in problems:
            self.error(p, msg)
        if problems:
            return None
        self._iterations = 0
        steps, handles = self.steps(path, "steps", header.steps, context, {}, teardown=False)
        teardown, _ = self.steps(path, "teardown", header.teardown, context, handles, teardown=True)
        if steps is None or teardown is None:
            return None
        return Case(
            id=cid, file=self.path, scenario=name, description=header.description,
            tags=list(header.tags), requires=header.requires, params=params,
            timeout=header.timeout, steps=steps, teardown=teardown,
            location=self.doc.location(path), names_devices=names_devices,
            kernel_watch_allow=tuple(header.kernel_watch.allow),
            known_issues=[{**k.model_dump(), "source": str(loc)} for k, loc in
                          zip(header.known_issues,
                              self.doc.item_locations((*path, "known_issues")), strict=False)],
        )

    def case_driver(self, header: ScenarioHeader, params: dict[str, Any]) -> DriverFacts | None:
        """The facts `driver` names in the case's templates: its `driver` axis value or
        the driver it requires; the first device served by that driver gives them, else
        the registered driver's declared limits."""
        name = params.get("driver") if "driver" in params else header.requires.driver
        if not isinstance(name, str) or name == "any":
            return None
        for dev in self.devices:
            if dev.driver is not None and dev.driver.name == name:
                return dev.driver
        return self.drivers.get(name)

    def steps(self, path: tuple[Any, ...], key: str, raws: list[Any], context: dict[str, Any],
              handles: dict[str, str], *, teardown: bool) -> tuple[list[Step] | None, dict[str, str]]:
        handles = dict(handles)
        out: list[Step] = []
        ok = True
        if (*path, key) not in self._listed:
            self._listed.add((*path, key))
            for i, loc in enumerate(self.doc.item_locations((*path, key))):
                self._locations[(*path, key, i)] = loc
        forks = Forks()
        for i, raw in enumerate(raws):
            spath = (*path, key, i)
            if not isinstance(raw, dict):
                ok = False
                continue
            if "for" in raw:
                step = self.loop(spath, raw, context, handles, len(out), teardown)
            else:
                step = self.one_step(spath, raw, context, handles, len(out), teardown, forks)
            if step is None:
                ok = False
            elif isinstance(step, Step):
                out.append(step)
        return (out if ok else None), handles

    def one_step(self, spath: tuple[Any, ...], raw: dict[str, Any], context: dict[str, Any],
                 handles: dict[str, str], index: int, teardown: bool,
                 forks: Forks) -> Step | object | None:
        """An operation step rendered and validated (LEFT_OUT when its `when` is false,
        None after errors); the handle it makes is added to `handles`, or to the forked
        child's handles when the step runs in one (`process:`)."""
        rendered = self.render_step(spath, raw, context)
        step: Step | None = None
        scope = handles  # the handles of the process that runs the step
        if rendered is not None:
            when = self.when(spath, rendered[0])
            if when is None:
                return None
            if not when:
                return LEFT_OUT  # left out of this case (or iteration), its handle too
            found = forks.scope(self, spath, rendered[0], handles, teardown=teardown)
            scope = found if found is not None else handles
            # cases that render a step alike, with the same handles, share its validation
            memo = (spath, repr(rendered[1]) if rendered[1] else "", index)
            seen = self._steps_done.get(memo)
            if found is None:
                pass  # its `process:` is wrong: said so
            elif seen is not None and seen[0] == scope:
                step = seen[1]
            else:
                step = self.step(spath, rendered[0], scope, index, teardown)
                self._steps_done[memo] = (dict(scope), step)
        made = self._makes(raw, rendered[0] if rendered is not None else None)
        if made is not None:
            # defined even when the step itself is wrong, so later steps don't cascade
            scope[made[0]] = made[1]
        if step is not None:
            forks.after(step, handles)
        return step

    def _location(self, spath: tuple[Any, ...]) -> Location:
        found = self._locations.get(spath)
        if found is None:
            found = self._locations[spath] = self.doc.location(spath)
        return found

    def loop(self, spath: tuple[Any, ...], raw: dict[str, Any], context: dict[str, Any],
             handles: dict[str, str], index: int, teardown: bool) -> Step | object | None:
        """A `for` step: its header rendered and validated, its body compiled once per
        value of its variable (the handles its body makes are added to `handles`).
        LEFT_OUT when its `when` is false, None after errors."""
        ok = True
        for k in raw:
            if k not in LOOP_KEYS:
                listing = ", ".join(f"`{x}`" for x in LOOP_KEYS)
                self.error((*spath, k), f"a `for` step takes {listing}; not `{k}`"
                           f"{suggest(k, LOOP_KEYS)}", key=True)
                ok = False
        header = self._loop_headers.get(id(raw))
        if header is None:
            header = self._loop_headers[id(raw)] = {k: v for k, v in raw.items() if k != "steps"}
        rendered = self.render_step(spath, header, context)
        if rendered is None:
            return None
        when = self.when(spath, rendered[0])
        if when is None:
            return None
        if not when:
            return LEFT_OUT
        body = self.loop_body(spath, raw)
        args = self.loop_header(spath, rendered[0].get("for"))
        common = self.common_keys(spath, {k: v for k, v in rendered[0].items()
                                          if k in ("name", "when")})
        if body is None or args is None or common is None or not ok:
            return None
        if args.var in context:
            self.error((*spath, "for", "var"), f"`for` variable `{args.var}` would hide the "
                       "template variable of that name (a matrix axis, a var, an outer loop's "
                       "variable or one of the engine's)")
            return None
        values = args.values
        if self._iterations + len(values) > MAX_ITERATIONS:
            self.error((*spath, "for"), f"`for {args.var}` runs {len(values):,} iterations, "
                       f"{self._iterations + len(values):,} with the case's loops before it: "
                       f"the loops of one case run at most {MAX_ITERATIONS:,} in all")
            return None
        self._iterations += len(values)
        iterations = []
        made = handles
        for value in values:
            before = set(self.errors)
            steps, made = self.steps(spath, "steps", body, {**context, args.var: value},
                                     made, teardown=teardown)
            if steps is None:
                self._tag_errors(before, f"(iteration {args.var} = {value})")
                return None
            iterations.append(Iteration(value, tuple(steps)))
        handles.update(made)
        return Step(index=index, op="for", args=args, common=common,  # type: ignore[arg-type]
                    location=self._location(spath), teardown=teardown,
                    body=tuple(iterations))

    def loop_body(self, spath: tuple[Any, ...], raw: dict[str, Any]) -> list[Any] | None:
        """A `for` step's `steps:`, or None after saying what is wrong with them."""
        body = raw.get("steps")
        if not isinstance(body, list) or not body:
            self.error((*spath, "steps") if "steps" in raw else spath,
                       "a `for` step needs `steps:`, a non-empty list of steps")
            return None
        ok = True
        for j, item in enumerate(body):
            if not isinstance(item, dict):
                self.error((*spath, "steps", j),
                           "a step is a mapping with one operation key, e.g. `- sleep: {duration: 1s}`")
                ok = False
            elif "handover" in item:
                self.error((*spath, "steps", j, "handover"), "`handover` cannot run inside "
                           "a `for` loop (the successor continues with the case's next step)",
                           key=True)
                ok = False
        return body if ok else None

    def loop_header(self, spath: tuple[Any, ...], raw: Any) -> ForLoop | None:
        if not isinstance(raw, dict):
            self.error((*spath, "for"), "`for` is a mapping: `{var: NAME, from: N, to: M}` "
                       f"(or `below: M`; `step` 1), got {_kind(raw)}")
            return None
        try:
            return ForLoop.model_validate(raw)
        except ValidationError as exc:
            self.pydantic_errors((*spath, "for"), exc, ForLoop)
            return None

    def _tag_errors(self, before: set[tuple[str, str]], tag: str) -> None:
        """Say which iteration the errors made since `before` belong to."""
        for key in [k for k in self.errors if k not in before]:
            err = self.errors.pop(key)
            message = f"{err.message} {tag}"
            self.errors.setdefault((key[0], message), ScenarioError(err.location, message))

    def when(self, spath: tuple[Any, ...], rendered: dict[str, Any]) -> bool | None:
        """A step's rendered `when` (default true); None after saying it is no boolean."""
        value = rendered.get("when", True)
        if isinstance(value, bool):
            return value
        self.error((*spath, "when"), "`when` is true or false (or a template giving one), "
                   f"got {_kind(value)} {show(value)}")
        return None

    def _makes(self, raw: dict[str, Any],
               rendered: dict[str, Any] | None = None) -> tuple[str, str] | None:
        """(handle name, kind) the step makes, read from its raw form (its rendered form
        when the name is a template, as in a loop's `as: "m{{ i }}"`)."""
        name = raw.get("as")
        if isinstance(name, str) and "{" in name:
            name = rendered.get("as") if rendered is not None else None
            op_cls = next((OPERATIONS[k] for k in raw if k in OPERATIONS), None)
            kind = op_cls.produces if op_cls is not None else None
            return (name, kind) if isinstance(name, str) and kind else None
        key = id(raw)
        if key not in self._made:
            name = raw.get("as")
            op_cls = next((OPERATIONS[k] for k in raw if k in OPERATIONS), None)
            kind = op_cls.produces if op_cls is not None else None
            self._made[key] = (name, kind) if isinstance(name, str) and kind else None
        return self._made[key]

    def _template_paths(self, raw: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
        """template_paths() of a raw step, once per step of the file (every case shares it)."""
        tpaths = self._tpaths.get(id(raw))
        if tpaths is None:
            tpaths = self._tpaths[id(raw)] = template_paths(raw)
        return tpaths

    def render_step(self, spath: tuple[Any, ...], raw: dict[str, Any],
                    context: dict[str, Any]) -> tuple[dict[str, Any], list[Any]] | None:
        """The step with its templates rendered, and the rendered values; None on errors."""
        tpaths = self._template_paths(raw)
        if not tpaths:
            return raw, []
        values = []
        failed = False
        for rel, source in tpaths:
            try:
                values.append(render(source, context))
            except TemplateProblem as exc:
                self.error((*spath, *rel), str(exc))
                failed = True
        if failed:
            return None
        return substitute(raw, tpaths, values), values

    def step(self, spath: tuple[Any, ...], rendered: dict[str, Any],
             handles: dict[str, str], index: int, teardown: bool) -> Step | None:
        op = self.operation_key(spath, rendered)
        if op is None:
            return None
        cls = OPERATIONS[op]
        args_raw = rendered[op]
        if args_raw is None:
            args_raw = {}
        args = self.validate_args(spath, op, cls, args_raw)
        common = self.common_keys(spath, {k: v for k, v in rendered.items() if k != op})
        if args is None:
            return None
        handles_ok = self.check_handles(spath, op, cls, args, handles)
        if common is None or not handles_ok:
            return None
        if common.as_ is not None and cls.produces is None:
            self.error((*spath, "as"), f"`{op}` makes no handle, so `as:` names nothing", key=True)
            return None
        return Step(index=index, op=op, args=args, common=common,
                    location=self._location(spath), teardown=teardown,
                    handle_paths=tuple(p for p, _ in handle_fields(cls)))

    def operation_key(self, spath: tuple[Any, ...], raw: dict[str, Any]) -> str | None:
        """The step's one operation key, or None after saying what is wrong with it."""
        ops = [k for k in raw if k not in COMMON_KEYS]
        if not ops:
            self.error(spath, "step has no operation key (one of: "
                       f"{', '.join(sorted(OPERATIONS))})")
            return None
        for k in ops:
            if k not in OPERATIONS:
                self.unknown_op(spath, k)
        known = [k for k in ops if k in OPERATIONS]
        if len(known) > 1:
            self.error((*spath, known[1]),
                       f"a step has exactly one operation; found {', '.join(known)}", key=True)
        return ops[0] if len(ops) == 1 and known else None

    def common_keys(self, spath: tuple[Any, ...], raw: dict[str, Any]) -> StepCommon | None:
        """The step's common keys validated (memoized: most steps share `{}` or
        `{'as': 'buf'}`), or None after their errors."""
        memo_key = repr(raw)
        common = _COMMON_MEMO.get(memo_key)
        if common is not None:
            return common
        try:
            common = StepCommon.model_validate(raw)
        except ValidationError as exc:
            self.pydantic_errors(spath, exc, StepCommon)
            return None
        if len(_COMMON_MEMO) < 10_000:
            _COMMON_MEMO[memo_key] = common
        return common

    def unknown_op(self, spath: tuple[Any, ...], key: Any) -> None:
        self.error((*spath, key),
                   f"unknown operation `{key}`{suggest(key, [*OPERATIONS, *COMMON_KEYS])}", key=True)

    def validate_args(self, spath: tuple[Any, ...], op: str, cls: type[Op],
                      args_raw: Any) -> Op | None:
        if not isinstance(args_raw, dict):
            self.error((*spath, op), f"the arguments of `{op}` are a mapping, got {_kind(args_raw)}")
            return None
        cache_key = (cls, repr(args_raw))
        cached = _VALIDATED.get(cache_key)
        if cached is None:
            try:
                cached = cls.model_validate(args_raw)
            except ValidationError as exc:
                cached = self.describe(exc, cls)
            if len(_VALIDATED) < 100_000:
                _VALIDATED[cache_key] = cached
        if isinstance(cached, list):
            for p, msg in cached:
                self.error((*spath, op, *p), msg, key=msg.startswith("unknown argument"))
            return None
        return cached

    def check_handles(self, spath: tuple[Any, ...], op: str, cls: type[Op], args: Op,
                      handles: dict[str, str]) -> bool:
        ok = True
        for apath, kinds in handle_fields(cls):
            value: Any = args
            for part in apath:
                value = getattr(value, part, None)
            if not isinstance(value, str):
                continue
            if value not in handles:
                self.error((*spath, op, *apath),
                           f"handle `{value}` is not defined by an earlier step{suggest(value, handles)}")
                ok = False
            elif handles[value] not in kinds:
                want = " or ".join(kinds)
                self.error((*spath, op, *apath),
                           f"handle `{value}` is a {handles[value]}, but `{apath[-1]}` needs a {want}")
                ok = False
        return ok

    # -- pydantic errors → located messages -------------------------------------

    def pydantic_errors(self, path: tuple[Any, ...], exc: ValidationError,
                        model: type[BaseModel]) -> None:
        for p, msg in self.describe(exc, model):
            self.error((*path, *p), msg, key=msg.startswith("unknown"))

    @staticmethod
    def describe(exc: ValidationError, model: type[BaseModel]) -> list[tuple[tuple[Any, ...], str]]:
        out: list[tuple[tuple[Any, ...], str]] = []
        seen_locs: dict[tuple[Any, ...], tuple[int, str]] = {}  # → (index in out, type)
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            # union branches report one error each; keep the first per location, unless a
            # later branch took the value's type and said why it is wrong (an integer out
            # of its C type in `region: bar0 | <u32>`), which beats "should be 'bar0'…"
            clean = tuple(p for p in loc if not _is_branch_label(p))
            if clean in seen_locs and err["type"] not in ("missing", "extra_forbidden"):
                index, kind = seen_locs[clean]
                if kind == "literal_error" and err["type"] == "value_error":
                    out[index] = (clean, _message(err, clean, model))
                    seen_locs[clean] = (index, "value_error")
                continue
            seen_locs[clean] = (len(out), err["type"])
            out.append((clean, _message(err, clean, model)))
        return out


class Forks:
    """The forked children of one step list (`fork`, `process:`, `join`): which handles
    each child holds (those of the case's process when it forked, and those its own
    steps made), and which children were joined."""

    def __init__(self) -> None:
        self.children: dict[str, dict[str, str]] = {}
        self.joined: dict[str, int] = {}  # name → the join step's number (1-based)
        self.fail_nth: int | None = None  # the `fail_nth` step's number

    def scope(self, comp: _FileCompiler, spath: tuple[Any, ...], raw: dict[str, Any],
              handles: dict[str, str], *, teardown: bool) -> dict[str, str] | None:
        """The handles the step may use (the child's for a step with `process:`), or
        None after saying what is wrong with its `process:`, `join` or `of: parent`."""
        name = raw.get("process")
        op = next((k for k in raw if k not in COMMON_KEYS), None)
        args = raw.get(op) if op is not None else None
        of_parent = op == "assert_locked_vm" and isinstance(args, dict) \
            and args.get("of") == "parent"
        if op == "fail_nth" and not self.one_sweep(comp, spath, teardown=teardown):
            return None
        if name is None:
            if of_parent:
                comp.error((*spath, op, "of"), "`of: parent` reads the process that forked "
                           "this one: only a step with `process:` (a forked child) has one")
                return None
            if op == "join" and isinstance(args, dict) and isinstance(args.get("process"), str):
                joined = self.joined.get(args["process"])
                if joined is not None:
                    comp.error((*spath, op, "process"), f"process `{args['process']}` was "
                               f"joined by step {joined}: it has ended")
                    return None
            return handles
        if not isinstance(name, str):
            return handles  # StepCommon says what is wrong with it
        where = (*spath, "process")
        if teardown:
            comp.error(where, "`process:` runs a step in a forked child; teardown steps run "
                       "in the case's process (join the child in the body)")
            return None
        if op in ("fork", "join", "fail_nth"):
            comp.error(where, f"`{op}` runs in the case's process, not in a forked child")
            return None
        child = self.children.get(name)
        if child is not None:
            return child
        if name in self.joined:
            comp.error(where, f"process `{name}` was joined by step {self.joined[name]}: it "
                       "has ended")
        elif name in handles:
            comp.error(where, f"handle `{name}` is a {handles[name]}, but `process` needs a "
                       "process (made by `fork`)")
        else:
            comp.error(where, f"handle `{name}` is not defined by an earlier step"
                       f"{suggest(name, [h for h, k in handles.items() if k == 'process'])}")
        return None

    def one_sweep(self, comp: _FileCompiler, spath: tuple[Any, ...], *, teardown: bool) -> bool:
        """A case has at most one `fail_nth` step, in its body."""
        if teardown or self.fail_nth is not None:
            comp.error((*spath, "fail_nth"), "a case sweeps one `fail_nth` step, of its body"
                       + (f" (step {self.fail_nth} is one)" if self.fail_nth else ""), key=True)
            return False
        self.fail_nth = spath[-1] + 1
        return True

    def after(self, step: Step, handles: dict[str, str]) -> None:
        """Record a fork (the child holds the handles made so far) or a join."""
        if step.op == "fork" and step.handle:
            self.children[step.handle] = dict(handles)
        elif step.op == "join":
            name = step.args.process  # type: ignore[attr-defined]
            self.children.pop(name, None)
            self.joined[name] = step.index + 1


def fixed_mode(header: ScenarioHeader, read: set[str]) -> str | None:
    """The IOMMU mode of a scenario whose `open_iommu` steps (every operation with an
    `iommu_mode_argument`) all name their mode literally
    and whose templates never read `iommu_mode`: its implicit axis is that mode alone (the
    first one named), not one case per mode that all run the same steps. The planner
    checks every mode a case's steps open."""
    if header.requires.iommu_modes or "iommu_mode" in read:
        return None
    first = None
    for raw in raw_steps((*header.steps, *header.teardown)):
        for key, args in raw.items():
            cls = OPERATIONS.get(key) if isinstance(key, str) else None
            if cls is None or cls.iommu_mode_argument is None:
                continue
            mode = args.get(cls.iommu_mode_argument) if isinstance(args, dict) else None
            if mode not in IOMMU_MODES:
                return None  # the case's own mode (none named), a template, or an error
            first = first or mode
    return first


def raw_steps(raws: Sequence[Any]) -> list[dict[str, Any]]:
    """The raw steps (mappings) of a step list, those inside `for` bodies included."""
    out: list[dict[str, Any]] = []
    for raw in raws:
        if isinstance(raw, dict):
            out.append(raw)
            body = raw.get("steps") if "for" in raw else None
            if isinstance(body, list):
                out.extend(raw_steps(body))
    return out


def _is_branch_label(p: Any) -> bool:
    return isinstance(p, str) and (p.startswith(("literal[", "function-", "int", "str", "float",
                                                 "bool", "list[", "tuple[", "json-or-python"))
                                   or p in ("lax-or-strict",))


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
            float: "a number", bool: "a boolean", type(None): "nothing"}.get(type(v), type(v).__name__)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(part)
        if info is None:
            by_alias = {f.alias: f for f in current.model_fields.values() if f.alias}
            info = by_alias.get(part)
        if info is None:
            return []
        from vfio_scenario.language.models import _nested_model

        current = _nested_model(info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _message(err: Any, loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    kind = err["type"]
    name = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        choices = _fields_at(model, loc[:-1])
        return f"unknown argument `{name}`{suggest(name, choices)}"
    if kind == "missing":
        return f"missing required argument `{name}`"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    got = err.get("input")
    field_name = next((p for p in reversed(loc) if isinstance(p, str)), "")
    where = f"`{field_name}`: " if field_name else ""
    if kind in ("literal_error", "enum"):
        allowed = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        return f"{where}{msg}, got {show(got)}{suggest(got, allowed)}"
    if kind.endswith(("_type", "_parsing")):
        return f"{where}{msg}, got {_kind(got)} {show(got)}"
    return f"{where}{msg}"


def _combinations(axes: dict[str, list[Any]], implicit: dict[str, list[Any]],
                  include: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The product of `axes`, with each `include` entry merged into the combinations it
    matches or, matching none, added as a combination of its own."""
    combos = [dict(zip(axes, values, strict=True))
              for values in itertools.product(*axes.values())]
    for entry in include:
        matched = False
        names_axis = any(k in axes for k in entry)
        for combo in combos:
            if names_axis and all(combo.get(k) == v for k, v in entry.items() if k in axes):
                combo.update({k: v for k, v in entry.items() if k not in axes})
                matched = True
        if not matched:
            # a combination of its own still runs on every value of the implicit
            # axes it does not name (each IOMMU mode, each driver)
            free = {k: v for k, v in implicit.items() if k not in entry}
            for free_values in itertools.product(*free.values()):
                combos.append({**dict(zip(free, free_values, strict=True)), **entry})
    return combos


def registered_driver_facts() -> dict[str, DriverFacts]:
    """Every registered scenario driver's declared limits and features, by name."""
    from vfio_scenario.drivers.base import registered_drivers

    return {name: cls.facts() for name, cls in registered_drivers().items()}


def compile_documents(docs: list[Document], devices: Sequence[str] | None = None) -> Compiled:
    """Compile `docs` for `devices` (BDFs, or DeviceNames that carry their driver's
    facts); without devices, for placeholder BDFs served by each case's driver."""
    result = Compiled()
    names = device_names(devices or PLACEHOLDER_DEVICES)
    with armed():  # the templates' limits, set up once for every render of every file
        for doc in docs:
            fc = _FileCompiler(doc, names, placeholders=not devices)
            fc.run()
            result.cases.extend(fc.cases)
            result.errors.extend(fc.errors.values())
            result.files.append(doc.path)
    result.documents = list(docs)
    return result


def compile_paths(paths: list[str], devices: Sequence[str] | None = None) -> Compiled:
    """Load every scenario file under `paths` and compile it; errors of all files collected."""
    # Loading allocates many small acyclic objects; the cycle collector's passes over
    # them cost a third of the time and would free nothing.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _compile_paths(paths, devices)
    finally:
        if gc_was_enabled:
            gc.enable()


def compile_or_raise(paths: list[str], devices: Sequence[str] | None = None, *,
                     need_cases: bool) -> Compiled:
    """Compile `paths`; scenario errors raise (exit 2), no files/cases raise (exit 5)."""
    compiled = compile_paths(paths, devices)
    if compiled.errors:
        raise ScenarioErrors(compiled.errors)
    if need_cases and not compiled.cases:
        where = ", ".join(paths)
        if not compiled.files:
            raise NothingSelected(f"no scenario files (*.yaml, *.yml) found in {where}")
        raise NothingSelected(f"no cases in {where}")
    return compiled


def _compile_paths(paths: list[str], devices: Sequence[str] | None) -> Compiled:
    files, errors = find_scenario_files(paths)
    docs = []
    for f in files:
        doc, errs = load_file(f)
        if errs:
            errors.extend(errs)
            continue
        docs.append(doc)
    result = compile_documents(docs, devices)
    result.errors[:0] = errors
    result.files = files
    result.documents = docs
    result.errors.sort(key=lambda e: (e.location.path, e.location.line, e.location.col))
    return result
