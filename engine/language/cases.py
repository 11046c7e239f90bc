"""The compiled form of scenarios: cases of steps, each with its validated arguments.

Kept apart from the compiler so that running cases (in the testbed's guest, from a
payload the host compiled) needs the operation models only, not the YAML loader or
the template engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import Location, ScenarioError

if TYPE_CHECKING:  # types only: this module needs no model to hold or run a case
    from vfio_scenario.language.loader import Document
    from vfio_scenario.language.models import Op, Requires, StepCommon


@dataclass(frozen=True)
class Step:
    """One validated step of one case."""

    index: int
    op: str
    args: Op
    common: StepCommon
    location: Location
    teardown: bool = False
    # where handle names sit in `args` (("a", "buffer") for `a: {buffer: …}`), so the
    # interpreter can tell whether a teardown step's handles were made without
    # asking the models
    handle_paths: tuple[tuple[str, ...], ...] = ()
    # a `for` step (op "for", args its ForLoop): each iteration's steps, unrolled by the
    # compiler; None for an operation
    body: tuple[Iteration, ...] | None = None

    @property
    def label(self) -> str:
        if self.body is not None and not self.common.name:
            return f"for {getattr(self.args, 'var', '')}"
        return self.common.name or self.op

    @property
    def handle(self) -> str | None:
        return self.common.as_


@dataclass(frozen=True)
class Iteration:
    """One iteration of a `for` step: the loop variable's value and the steps it runs."""

    value: int
    steps: tuple[Step, ...]


def flat_steps(steps: Iterable[Step]) -> Iterator[Step]:
    """Every operation step of `steps`, those of each `for` iteration included, in the
    order they run (the `for` steps themselves left out)."""
    for step in steps:
        if step.body is None:
            yield step
        else:
            for iteration in step.body:
                yield from flat_steps(iteration.steps)


@dataclass
class Case:
    """One runnable case: a scenario with one matrix assignment."""

    id: str
    file: str
    scenario: str
    description: str
    tags: list[str]
    requires: Requires
    params: dict[str, Any]
    timeout: float
    steps: list[Step]
    teardown: list[Step]
    location: Location
    # its templates read `device`/`devices` (the run's BDFs, in order): it must run on
    # those very devices, the first `requires.devices` of the run
    names_devices: bool = False
    # splat kinds its scenario's `kernel_watch: {allow: …}` declares (run/kernel_watch.py)
    kernel_watch_allow: tuple[str, ...] = ()
    # its scenario's `known_issues:` entries, as plain values with their `source`
    # (file:line:col); applied on the host (vfio_scenario.known_issues)
    known_issues: list[dict[str, Any]] = field(default_factory=list)

    @property
    def driver(self) -> str | None:
        """The scenario driver the case runs on: its `driver` axis value or the driver it
        requires by name (None without one)."""
        name = self.params.get("driver", self.requires.driver)
        return name if isinstance(name, str) and name != "any" else None

    @property
    def iommu_mode(self) -> str | None:
        mode = self.params.get("iommu_mode")
        return mode if isinstance(mode, str) else None


@dataclass
class Compiled:
    cases: list[Case] = field(default_factory=list)
    errors: list[ScenarioError] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    # the files as loaded: compiling them again for other devices reads no file
    documents: list[Document] = field(default_factory=list)
