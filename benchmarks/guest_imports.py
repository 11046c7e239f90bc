#!/usr/bin/env python3
"""What the guest engine's start costs in the testbed: its imports and reading a payload.

Boots the testbed once and, inside it (a fresh Python process per round, median of
`--rounds`), times:

  start        the guest engine's start before it probes the host: its imports, a
               payload of scenarios/kselftest/ compiled on the host (its header and
               its cases, the models they hold included), its operations' registration;
  pydantic     `import pydantic.main` alone (BaseModel: what the models need);
  models       `import vfio_scenario.language.models` (the operation models);
  python       `python -c pass`, what each of them includes (start-up and the
               testbed's command channel).

Times are taken on the host, around each command: the guest's own clock is not
trusted under TCG.

The guest runs on TCG where KVM is not usable, its Python some 20x slower than the
host's, so these seconds are what a user waits for before the first step of a run.

    .venv/bin/python benchmarks/guest_imports.py [--kernel default] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PROGRAMS = {
    # what the guest engine does before it probes the host: its imports, the payload's
    # header and cases (the models they hold included), its operations' registration
    "start": "import sys\nimport vfio_scenario.run.guest\nfrom vfio_scenario.run import payload\n"
             "with open(sys.argv[1], 'rb') as f:\n"
             "    header = payload.read_header(f)\n"
             "    if getattr(header, 'models', None) is not None:  # guest_models\n"
             "        from vfio_scenario.run import guest_models\n"
             "        code = getattr(header, 'models_code', None)  # payload 3: compiled\n"
             "        payload.read_cases(f, guest_models.install(header.models, *(\n"
             "            [code] if code is not None else [])))\n"
             "    else:\n"
             "        payload.read_cases(f)\n"
             "from vfio_scenario.run.ops import operations\noperations()",
    "pydantic": "import pydantic.main",
    "models": "import vfio_scenario.language.models",
}
WRITE_PAYLOAD = """
import sys
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.run import payload
compiled = compile_paths([sys.argv[2]])
path = payload.write(sys.argv[1], payload.Header(devices=[], drivers={}), compiled.cases)
print(path, len(compiled.cases))
"""


def write_payload(directory: str, env: dict[str, str]) -> tuple[str, int]:
    """A payload of scenarios/kselftest/ written by the engine `env` imports (compiled
    for placeholder devices: only read, never run); (path, cases)."""
    out = subprocess.run([sys.executable, "-c", WRITE_PAYLOAD, directory,
                          str(ROOT / "scenarios" / "kselftest")],
                         env={**os.environ, **env}, check=True, capture_output=True, text=True)
    path, cases = out.stdout.split()
    return path, int(cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, metavar="DIR", action="append", default=[],
                        help="time `start` and `models` of this engine instead of "
                             "the checkout's (repeatable): "
                             "DIR holds its `vfio_scenario` package (e.g. main's engine/ with "
                             "drivers/ in it, compiled), under this checkout so the guest sees it")
    args = parser.parse_args()
    from vfio_scenario.testbed import Testbed

    # with --compare, the engine's programs run for the compared engines only (this
    # checkout may change meanwhile)
    engines: dict[str, dict[str, str]] = {"": {}}
    for other in args.compare:
        engines[f" ({other.name})"] = {"PYTHONPATH": str(other.resolve())}
    times: dict[str, list[float]] = {}
    cases = 0
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-") as tmp:
        runs: list[tuple[str, str, str, dict[str, str]]] = []
        for label, env in engines.items():
            folder = Path(tmp) / str(len(runs))
            folder.mkdir()
            path, cases = write_payload(str(folder), env)
            programs = {"python": "pass", **PROGRAMS} if not args.compare else \
                {k: PROGRAMS[k] for k in ("start", "models")} if label else \
                {"python": "pass", "pydantic": PROGRAMS["pydantic"]}
            runs += [(name + label, source, path, env) for name, source in programs.items()]
        with Testbed(kernel=args.kernel) as testbed:
            for name, source, path, env in runs:
                for _ in range(args.rounds):
                    result = testbed.run([sys.executable, "-c", source, path], timeout=600,
                                         cwd=str(ROOT), env=env)
                    if result.returncode != 0:
                        sys.stderr.write(result.stderr)
                        raise SystemExit(result.returncode)
                    times.setdefault(name, []).append(result.duration)
            accel = testbed.accelerator
    print(f"guest ({accel}), median of {args.rounds} fresh processes, seconds from the host "
          "(the guest's own clock drifts under TCG):")
    for name, seconds in times.items():
        extra = f" ({cases} cases)" if name.startswith("start") else ""
        print(f"  {name:20s} {statistics.median(seconds):6.2f}{extra}")


if __name__ == "__main__":
    main()
