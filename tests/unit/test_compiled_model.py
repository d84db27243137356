"""Which scoring model is imported, and that the compiled one computes what
the interpreted one (the reference) does.

``make test`` runs the unit tests on the interpreted model (the source tree),
then the whole suite on the compiled one: ``deploy/ci/compiled_model.py run``
puts ``build/compiled/`` first on the path and sets ``VITALS_EXPECT_MODEL``
from what the build produced (``compiled``, or ``interpreted`` when it fell
back to pure Python for want of a C compiler, which it says). Without the
variable the interpreted model is expected. A build that silently fell back,
or a path that let the source tree win, fails here.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from itertools import zip_longest
from pathlib import Path

import pytest

from tests import model_trace

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "build" / "compiled"
EXPECTED = os.environ.get("VITALS_EXPECT_MODEL", "interpreted")
with (ROOT / "pyproject.toml").open("rb") as _f:
    SOURCES: list[str] = tomllib.load(_f)["tool"]["vitals"]["mypyc"]["modules"]
MODULES = [source.removesuffix(".py").replace("/", ".") for source in SOURCES]

needs_compiled = pytest.mark.skipif(
    EXPECTED != "compiled",
    reason="runs on the compiled model (make test; or deploy/ci/compiled_model.py run -- ...)",
)


def _is_extension(path: str) -> bool:
    return any(path.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


def test_the_expected_model_is_imported() -> None:
    assert EXPECTED in ("compiled", "interpreted"), EXPECTED
    assert MODULES, "no module to compile in pyproject.toml [tool.vitals.mypyc]"
    for name, source in zip(MODULES, SOURCES, strict=True):
        file = importlib.import_module(name).__file__
        assert file is not None
        if EXPECTED == "compiled":
            assert _is_extension(file), f"{name} is not compiled: {file}"
            assert Path(file).is_relative_to(OVERLAY), file
        else:
            assert file.endswith(".py"), f"{name} is not the interpreted source: {file}"
            assert Path(file).resolve() == ROOT / source


def test_child_processes_import_the_same_model() -> None:
    # Workers, the demo and the tools' children are started from the
    # repository with this environment: they must run the same model.
    code = "import importlib, sys; print(importlib.import_module(sys.argv[1]).__file__)"
    for name in MODULES:
        child = subprocess.run(
            [sys.executable, "-c", code, name],
            cwd=ROOT,
            env=os.environ,
            capture_output=True,
            text=True,
            check=True,
        )
        assert child.stdout.strip() == importlib.import_module(name).__file__


@needs_compiled
def test_the_compiled_modules_are_built_from_these_sources() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "deploy/ci/compiled_model.py"), "check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


@needs_compiled
def test_the_compiled_model_computes_what_the_interpreted_one_does(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONSAFEPATH", "VITALS_EXPECT_MODEL")
    }
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err:
        # From the repository without PYTHONPATH: the source tree, interpreted.
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.model_trace", "-"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert child.stdout is not None
    compared = 0
    try:
        ours = model_trace.lines()
        first_ours, first_theirs = next(ours), child.stdout.readline()
        assert _is_extension(first_ours.split(" ", 1)[1].strip()), first_ours
        assert first_theirs.strip().endswith("service/model/scoring.py"), first_theirs
        for number, (mine, theirs) in enumerate(zip_longest(ours, child.stdout), start=2):
            if mine != theirs:
                pytest.fail(
                    f"line {number} differs (after {compared} equal lines)\n"
                    f"compiled:    {(mine or '<end>')[:1500]}\n"
                    f"interpreted: {(theirs or '<end>')[:1500]}"
                )
            compared += 1
    except BaseException:
        child.kill()
        raise
    finally:
        child.stdout.close()
    assert child.wait(timeout=60) == 0, errors.read_text()[-3000:]
    assert compared > 30_000
