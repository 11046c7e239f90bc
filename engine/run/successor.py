"""Entry point of a handover's successor: `python -m vfio_scenario.run.successor FD`.

FD is the unix socket the predecessor (the case's process, run/handover.py) sends the
case's handles over. The successor maps the memfd buffers again, tells the
predecessor it is ready, records the `handover` step, and runs the rest of the case
(interpreter.continue_case): its steps, teardown and releases. It writes the step
events and the case's result on the case's event pipe, as the predecessor would have.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sys
import time

from vfio_scenario.results import Outcome, StepResult


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: python -m vfio_scenario.run.successor SOCKET_FD "
                         "(started by the `handover` operation)\n")
        return 2
    faulthandler.enable()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sock = socket.socket(fileno=int(args[0]))
    from vfio_scenario.run import handover as ho

    try:
        data, fds = ho.receive(sock)
        payload, moved = ho.restore(data, fds)
        from vfio_scenario.drivers.base import use_drivers

        use_drivers(payload["drivers"])
    except Exception as exc:  # noqa: BLE001 - told to the predecessor, which fails the step
        sock.sendall(f"error {type(exc).__name__}: {exc}\n".encode())
        return 1
    sock.sendall(f"ready {os.getpid()}\n".encode())
    sock.close()
    return _continue(payload, moved)


def _continue(payload: dict[str, object], moved: object) -> int:
    from vfio_scenario.results import CaseResult
    from vfio_scenario.run.executor import event_writer, write_all
    from vfio_scenario.run.handover import Moved
    from vfio_scenario.run.interpreter import HandedOver, Runtime, continue_case
    from vfio_scenario.run.ops import operations
    from vfio_scenario.run.ops.host import end_case

    rt = payload["rt"]
    result = payload["result"]
    step = payload["step"]
    event_fd = payload["event_fd"]
    assert isinstance(rt, Runtime) and isinstance(result, CaseResult)
    assert isinstance(event_fd, int)
    rt.process = f"successor (pid {os.getpid()})"
    assert isinstance(moved, Moved)
    rt.moved = moved
    rt.result, rt.listener, rt.end = result, event_writer(event_fd), end_case
    t_start = payload["t_start"]
    assert isinstance(t_start, float)
    result.steps.append(_handover_step(step, payload, moved, time.monotonic() - t_start))
    # the case's duration goes on from where the predecessor was (a shared clock)
    t0 = time.perf_counter() - (time.monotonic() - rt.started)
    next_index = payload["next"]
    assert isinstance(next_index, int)
    try:
        done = continue_case(rt, result, next_index, operations(), t0)
    except HandedOver as handed:  # handed over again: the next successor reports
        if handed.wait is not None:
            handed.wait()
        return 0
    write_all(event_fd, (json.dumps({"event": "result", "result": done.to_dict()}) + "\n")
              .encode())
    return 0


def _handover_step(step: object, payload: dict[str, object], moved: object,
                   duration: float) -> StepResult:
    from vfio_scenario.run.handover import Moved

    assert isinstance(moved, Moved)
    parts = [f"{payload['predecessor']} handed over to successor (pid {os.getpid()})"]
    if moved.buffers:
        parts.append("memfd buffers mapped again: " + ", ".join(
            f"{name} {old:#x} -> {new:#x}" for name, (old, new, _size) in moved.buffers.items()))
    if payload.get("stays"):
        parts.append("the predecessor stays until the successor ends")
    location = getattr(step, "location", None)
    return StepResult(index=getattr(step, "index", 0), op="handover",
                      name=getattr(step, "label", "handover"),
                      location=f"{location.path}:{location.line}" if location else "",
                      outcome=Outcome.PASS, duration=duration, message="; ".join(parts),
                      process=f"{payload['predecessor']} -> successor (pid {os.getpid()})")


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
