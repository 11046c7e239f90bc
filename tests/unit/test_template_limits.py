"""The templates' CPU and memory limits armed once for a whole compile (templates.armed()):
each render still gets its own CPU second and its own memory margin, a render that
exceeds one is stopped, and the handler, timer and address-space limit are as they were
afterwards. (The hostile corpus, tests/unit/test_hostile_corpus.py, checks the messages
through `validate`.)"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from vfio_scenario.language import templates
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.language.templates import TemplateProblem, armed, render

# about n² iterations of jinja's loop: CPU time grows with n
SPIN = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}{{ n }}"


def _cpu_of(n: int) -> float:
    start = time.process_time()
    assert render(SPIN, {"n": n}) == str(n)
    return time.process_time() - start


def _spin_n(seconds: float) -> int:
    """An n for which SPIN renders in about `seconds` of CPU on this machine."""
    n = 100
    while (cpu := _cpu_of(n)) < 0.05:
        n *= 2
    return int(n * (seconds / cpu) ** 0.5)


def test_a_compile_arms_the_timer_and_the_handler_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {"setitimer": 0, "signal": 0}
    setitimer, handler = signal.setitimer, signal.signal

    def counted_setitimer(*args: Any) -> Any:
        calls["setitimer"] += 1
        return setitimer(*args)

    def counted_signal(*args: Any) -> Any:
        calls["signal"] += 1
        return handler(*args)

    monkeypatch.setattr(signal, "setitimer", counted_setitimer)
    monkeypatch.setattr(signal, "signal", counted_signal)
    # 60 cases, each rendering a value of its own (none comes from the results' cache)
    axis = ", ".join(map(str, range(60)))
    doc, errors = load_text(textwrap.dedent("""\
        matrix: {k: [AXIS]}
        steps:
          - sleep: {duration: "{{ k * 3 + 7001 }}us"}
        """).replace("AXIS", axis), "t.yaml")
    assert errors == []
    compiled = compile_documents([doc])
    assert compiled.errors == []
    assert len(compiled.cases) == 60
    # armed and disarmed once (per render it was 2 + 2 each: 240)
    assert calls == {"setitimer": 2, "signal": 2}
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)


def test_each_render_of_a_batch_gets_a_cpu_second_of_its_own() -> None:
    n = _spin_n(0.3)  # (a calibration, which load can make short: renders until 1.5 s)
    start = time.process_time()
    renders = 0
    with armed():
        while time.process_time() - start < 1.5 and renders < 200:
            k = renders  # n + k: not cached
            assert render(SPIN, {"n": n + k}) == str(n + k)
            renders += 1
    assert time.process_time() - start >= 1.5  # the batch ran past one second, unstopped


def test_a_render_past_a_cpu_second_in_a_batch_is_stopped_and_the_next_one_runs() -> None:
    n = _spin_n(20)  # some 20 s of CPU if nothing stopped it
    handler = signal.getsignal(signal.SIGPROF)
    limit = resource.getrlimit(resource.RLIMIT_AS)
    with armed():
        assert render("{{ 1 + 41 }}", {}) == 42
        start = time.process_time()
        with pytest.raises(TemplateProblem) as caught:
            render(SPIN, {"n": n})
        spent = time.process_time() - start
        assert render("{{ 2 + 41 }}", {}) == 43
        assert resource.getrlimit(resource.RLIMIT_AS) == limit  # lowered per render only
    assert str(caught.value) == "template exceeds a limit: it ran past 1 s of CPU"
    # stopped near its second (not 20 s); process_time() and ITIMER_PROF, sampled at the
    # scheduler's ticks, part by a quarter of a second and more on a loaded machine
    assert spent < 5
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGPROF) is handler


def test_a_batch_reads_the_process_size_again_after_it_grew() -> None:
    """The memory margin counts from the process's size at the render: a batch that
    read it before the process grew by more than the margin reads it again (after the
    next tick), else a render needing a megabyte would fail."""
    with armed():
        assert render("{{ 3 + 41 }}", {}) == 44  # the size is read here
        grown = bytearray(templates.MEMORY_MARGIN + (32 << 20))
        start = time.process_time()
        while time.process_time() - start < 3 * templates.TICK:  # a tick or more
            pass
        text = "{{ ('y' * 1000000)|length }}"  # a megabyte of its own
        assert render(text, {}) == 1000000
    del grown


GROW = ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}")

# in a child whose address space is capped at 1 GiB (not to take the machine's memory
# should the margin fail): the render's message and how far the process grew
CHILD = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from vfio_scenario.language.templates import TemplateProblem, armed, render
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with armed():
    render("{{{{ 1 + 1 }}}}", {{}})
    try:
        render({GROW!r}, {{}})
    except TemplateProblem as exc:
        print(exc)
    print(render("{{{{ 5 + 41 }}}}", {{}}))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10)
"""


def test_a_render_in_a_batch_may_grow_the_process_by_the_margin_only() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    message, after, grown_mib = proc.stdout.splitlines()
    assert message == "template exceeds a limit: it needs more memory than 64 MiB"
    assert after == "46"  # the next render of the batch runs
    # the string doubles until the next one would pass the margin (not the child's GiB)
    assert int(grown_mib) <= templates.MEMORY_MARGIN >> 20
