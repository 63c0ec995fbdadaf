"""The command line's project features: the up-to-date check and ``${NAME}`` interpolation.

Groups (each case in a fresh interpreter, medians of ``BENCH_REPEATS`` runs; the 200 files are
written inside the timed case, the same for every row):

* ``up-to-date check, 200 files of 4 KiB``: one check of one step whose ``sources`` match 200
  files, repeated. Floor: ``glob`` plus ``hashlib.sha256`` of each file, the least a content
  check does. trioflow: ``current_key`` (glob, stream-hash every file, digest the command,
  env and directory; and the ``generates`` check). Peer: ``make -q`` on a Makefile whose
  target depends on the same 200 files (a timestamp check, in a process of its own, as make
  users run it).
* ``interpolate a 6-field step``: resolving one step (``run`` of 4 arguments, an ``env``
  value and ``cwd``, 3 variables and a placeholder) against the environment. Floor: 6
  ``str.replace`` chains with the values known; peer: ``string.Template.substitute``
  (no defaults, no placeholders, no checks).

Usage: ``python bench/cli_projects.py`` (or ``nox -s bench``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import string
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from _harness import Bench

# Imported here, outside the timed cases: the import is measured by bench/imports.py.
from trioflow.cli._run import current_key
from trioflow.cli._spec import parse_spec

bench = Bench(__file__)

FILES = 200
SIZE = 4096


def _project(root: Path) -> None:
    for i in range(FILES):
        path = root / "src" / f"pkg{i % 10}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(SIZE))
    (root / "out").write_text("x")
    sources = " ".join(sorted(str(p.relative_to(root)) for p in root.glob("src/**/*.py")))
    (root / "Makefile").write_text(f"out: {sources}\n\ttouch out\n")
    os.utime(root / "out")  # newer than every source: up to date


_WORKFLOW = """
[steps.build]
run = ["python", "-m", "build", "--outdir", "dist"]
sources = ["src/**/*.py"]
generates = ["out"]
"""


@bench.case
def floor_hash(n: int) -> int:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        _project(root)
        for _ in range(n):
            digest = hashlib.sha256()
            for name in sorted(glob.glob("src/**/*.py", root_dir=root, recursive=True)):
                digest.update(hashlib.sha256((root / name).read_bytes()).digest())
    return n


@bench.case
def trioflow_check(n: int) -> int:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        _project(root)
        spec = parse_spec(_WORKFLOW, path=root / "wf.toml")
        step = spec.steps["build"]
        for _ in range(n):
            _key, generated = current_key(spec, step)
            assert generated
    return n


@bench.case
def make_question(n: int) -> int:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        _project(root)
        for _ in range(n):
            subprocess.run(["make", "-q", "-C", str(root)], check=True)
    return n


_STEP = """
[env]
VENV = ".venv-ci"
PATH = "${VENV}/bin:${PATH}"

[steps.test]
run = ["pytest", "-q", "--basetemp", "${TMP:-/tmp}/{step}"]
env = { REPORT = "${VENV}/report.xml" }
cwd = "${VENV}/.."
"""


@bench.case
def floor_replace(n: int) -> int:
    values = {"VENV": ".venv-ci", "TMP": "/tmp", "PATH": os.environ["PATH"], "step": "test"}
    fields = ["${VENV}/bin:${PATH}", "pytest", "-q", "--basetemp", "${TMP}/{step}"]
    fields += ["${VENV}/report.xml", "${VENV}/.."]
    for _ in range(n):
        for text in fields:
            for key, value in values.items():
                text = text.replace("${" + key + "}", value).replace("{" + key + "}", value)
    return n


@bench.case
def string_template(n: int) -> int:
    values = {"VENV": ".venv-ci", "TMP": "/tmp", "PATH": os.environ["PATH"], "step": "test"}
    fields = ["${VENV}/bin:${PATH}", "pytest", "-q", "--basetemp", "${TMP}/${step}"]
    fields += ["${VENV}/report.xml", "${VENV}/.."]
    for _ in range(n):
        for text in fields:
            string.Template(text).substitute(values)
    return n


@bench.case
def trioflow_resolve(n: int) -> int:
    spec = parse_spec(_STEP, path="wf.toml")
    step = spec.steps["test"]
    for _ in range(n):
        spec.resolve(step, placeholders=lambda name: name)
    return n


if __name__ == "__main__":
    bench.main(
        lambda run: [
            run("floor_hash", n=50, floor=True, group="up-to-date check, 200 files of 4 KiB"),
            run("trioflow_check", n=50, group="up-to-date check, 200 files of 4 KiB"),
            run("make_question", n=50, group="up-to-date check, 200 files of 4 KiB"),
            run("floor_replace", n=20_000, floor=True, group="interpolate a 6-field step"),
            run("string_template", n=20_000, group="interpolate a 6-field step"),
            run("trioflow_resolve", n=20_000, group="interpolate a 6-field step"),
        ],
        title="The command line: up-to-date checks and interpolation",
    )
