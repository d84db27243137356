"""The optional compiled build of the scoring model (README, "Compiled model").

The project is described in pyproject.toml; this file only adds C extensions,
and only when asked: with ``VITALS_MYPYC=1`` in the environment, the modules
listed in ``[tool.vitals.mypyc] modules`` are compiled with mypyc, provided
mypyc can be imported (it comes with mypy, a dev dependency) and a C compiler
can build a Python extension. Otherwise the build is pure Python and one line
on stderr says why: the interpreted model is the reference (same results,
slower), so a machine without a C compiler still installs and runs.

Editable installs (``pip install -e .``, what ``make setup`` does) are never
compiled: an extension module beside its source would shadow every later edit
of that source. ``deploy/ci/compiled_model.py`` builds the compiled modules
into ``build/compiled/`` instead, for the compiled test run and benchmarks.

    VITALS_MYPYC=1 pip install --no-build-isolation .   # mypy and setuptools>=77 installed

A failure of mypyc itself (or of compiling its C output) fails the build: that
is a bug to fix, not a reason to fall back silently.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent


def _note(message: str) -> None:
    print(f"vitals setup.py: {message}", file=sys.stderr)


def compiled_modules() -> list[str]:
    """The source files to compile (paths relative to the project root)."""
    with (HERE / "pyproject.toml").open("rb") as f:
        modules: list[str] = tomllib.load(f)["tool"]["vitals"]["mypyc"]["modules"]
    return modules


def compiler_problem() -> str | None:
    """Why no Python extension can be compiled here, or ``None`` if one can.

    Tries the compiler the build would use (``$CC``, else Python's own ``CC``)
    on a file that includes ``Python.h``.
    """
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        return f"no Python headers ({include}/Python.h)"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text("#include <Python.h>\nint vitals_probe(void) { return 0; }\n")
        command = [*shlex.split(cc), f"-I{include}", "-c", str(source), "-o", f"{tmp}/probe.o"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"no working C compiler ({cc}: {exc})"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit status {done.returncode}"
        return f"the C compiler cannot build a Python extension ({cc}: {why})"
    return None


def ext_modules() -> list[Extension]:
    """mypyc's extensions when ``VITALS_MYPYC=1`` asks for them and they can be built."""
    if os.environ.get("VITALS_MYPYC", "") != "1":
        return []
    if {"editable_wheel", "develop"} & set(sys.argv):
        _note("VITALS_MYPYC=1 ignored for an editable install: pure Python")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _note("VITALS_MYPYC=1 but mypyc is not importable (install mypy and use pip's")
        _note("--no-build-isolation): building pure Python")
        return []
    problem = compiler_problem()
    if problem is not None:
        _note(f"VITALS_MYPYC=1 but {problem}: building pure Python")
        return []
    return mypycify(compiled_modules(), opt_level="3", group_name="vitals_model")


if __name__ == "__main__":
    os.chdir(HERE)  # mypyc reads the mypy settings of pyproject.toml from here
    setup(ext_modules=ext_modules())
