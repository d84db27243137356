"""The compiled model for the test suite and benchmarks: ``build/compiled/``.

``make setup`` installs the project editable and pure Python, and that stays
so: a developer who edits ``service/model/*.py`` always runs what they edited.
The compiled modules (``[tool.vitals.mypyc] modules`` in pyproject.toml, built
by setup.py with ``VITALS_MYPYC=1``) live apart, in an overlay directory that
is put first on ``PYTHONPATH`` only by ``run``:

    build/compiled/
      MANIFEST.json                 what was built from what (see ``check``)
      vitals_model__mypyc.*.so      mypyc's shared code
      service/                      a real directory...
        model/                      ...down to each compiled module's package:
          scoring.*.so              the compiled modules (an extension module is
                                    imported before the .py beside it)
          scoring.py -> ../../../service/model/scoring.py
          scorecard.py -> ...       every other entry: a link to the source
        cli -> ../../service/cli
      streams -> ../streams
      schemas -> ../schemas

Everything but the compiled modules is the working tree itself, through the
links (``Path(__file__).resolve()`` leads back to the repository). Only the
extension modules can be out of date, and ``check`` (run by ``run`` before
anything) refuses them when a compiled module's source, setup.py, the list of
modules, Python or mypy changed since they were built, or when the source tree
has entries the overlay does not link.

    python deploy/ci/compiled_model.py build          # (re)build if needed
    python deploy/ci/compiled_model.py check          # fresh? (exit 1 if not)
    python deploy/ci/compiled_model.py run -- CMD...  # CMD on the compiled model

``run`` sets ``PYTHONPATH`` (the overlay first), ``PYTHONSAFEPATH=1`` (so
neither ``python -m`` nor a child process puts the working directory, and
with it the pure source tree, ahead of the overlay) and
``VITALS_EXPECT_MODEL`` (``compiled``, or ``interpreted`` when the build fell
back to pure Python: no C compiler), which tests/unit/test_compiled_model.py
checks against what is actually imported. pytest must then run with
``--import-mode=append`` (its default puts the repository first on the path).

Without a C compiler (or mypyc) ``build`` still succeeds: the overlay then
holds no extension module, MANIFEST.json says why, and everything runs
interpreted. A failure of mypyc or of compiling its output fails ``build``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "build" / "compiled"
WORK = ROOT / "build" / "mypyc"
MANIFEST = "MANIFEST.json"
_SKIP = {"__pycache__"}


class Stale(Exception):
    """The overlay is missing or was built from other sources."""


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def compiled_sources() -> list[str]:
    """Paths (relative to the repository) of the modules to compile."""
    modules: list[str] = _pyproject()["tool"]["vitals"]["mypyc"]["modules"]
    return modules


def module_name(source: str) -> str:
    """``service/model/scoring.py`` -> ``service.model.scoring``."""
    return source.removesuffix(".py").replace("/", ".")


def _packages() -> list[str]:
    include: list[str] = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in include})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_key() -> str:
    """What the extension modules depend on besides their own sources."""
    try:
        mypy = importlib.metadata.version("mypy")
    except importlib.metadata.PackageNotFoundError:
        mypy = "none"
    parts = [
        _sha256(ROOT / "setup.py"),
        json.dumps(compiled_sources()),
        sys.version,
        str(sysconfig.get_config_var("EXT_SUFFIX")),
        mypy,
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _real_dirs() -> set[Path]:
    """Overlay directories that must be real (not links): each compiled module's
    package and its parents."""
    dirs: set[Path] = set()
    for source in compiled_sources():
        parent = Path(source).parent
        while parent != Path("."):
            dirs.add(parent)
            parent = parent.parent
    return dirs


def _entries(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name not in _SKIP}


def _link_tree(overlay: Path) -> None:
    """Links to every source entry, through real directories down to the
    compiled modules' packages."""
    real = _real_dirs()

    def link(rel: Path) -> None:
        target = ROOT / rel
        where = overlay / rel
        if rel in real:
            where.mkdir(parents=True, exist_ok=True)
            for name in sorted(_entries(target)):
                link(rel / name)
        else:
            where.symlink_to(os.path.relpath(target, where.parent))

    for package in _packages():
        link(Path(package))


def _manifest(overlay: Path) -> dict[str, Any]:
    path = overlay / MANIFEST
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise Stale(f"{path} is missing or unreadable ({exc})") from exc
    return data


def check(overlay: Path = OVERLAY) -> dict[str, Any]:
    """The manifest of a fresh overlay; raises :class:`Stale` otherwise."""
    manifest = _manifest(overlay)
    if manifest.get("key") != build_key():
        raise Stale("setup.py, the list of compiled modules, Python or mypy changed")
    sources = compiled_sources()
    if set(manifest.get("sources", {})) != set(sources):
        raise Stale("the list of compiled modules changed")
    for source in sources:
        if manifest["sources"][source] != _sha256(ROOT / source):
            raise Stale(f"{source} changed since it was compiled")
    if manifest.get("implementation") == "compiled":
        for source in sources:
            rel = Path(source).with_suffix("")
            if not list((overlay / rel.parent).glob(f"{rel.name}.*.so")):
                raise Stale(f"the compiled {source} is missing")
    for rel in sorted(_real_dirs()):
        present = {
            name
            for name in _entries(overlay / rel)
            if (overlay / rel / name).is_symlink() or (overlay / rel / name).is_dir()
        }
        if present != _entries(ROOT / rel):
            raise Stale(f"{rel}/ has other entries than when the overlay was built")
    return manifest


def _setup_notes(output: str) -> list[str]:
    prefix = "vitals setup.py: "
    return [line.removeprefix(prefix) for line in output.splitlines() if line.startswith(prefix)]


def build(*, force: bool = False) -> dict[str, Any]:
    """Make ``build/compiled/`` fresh; compile only when something changed."""
    if not force:
        try:
            manifest = check()
        except Stale:
            pass
        else:
            # A fallback to pure Python is tried again: the compiler may be there now.
            if manifest["implementation"] == "compiled":
                print(f"compiled model: up to date ({_describe(manifest)})", file=sys.stderr)
                return manifest
    shutil.rmtree(WORK, ignore_errors=True)
    env = {**os.environ, "VITALS_MYPYC": "1"}
    command = [
        sys.executable,
        "setup.py",
        "--quiet",
        "build_ext",
        "--build-lib",
        str(WORK / "lib"),
        "--build-temp",
        str(WORK / "temp"),
    ]
    print("compiled model: building with mypyc (about a minute)", file=sys.stderr)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        print(output[-6000:], file=sys.stderr)
        raise SystemExit(f"compiled model: the mypyc build failed (exit {done.returncode})")
    notes = _setup_notes(output)
    built = sorted((WORK / "lib").rglob("*.so")) if (WORK / "lib").is_dir() else []

    staging = OVERLAY.with_name(OVERLAY.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _link_tree(staging)
    for so in built:
        where = staging / so.relative_to(WORK / "lib")
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(so, where)
    manifest = {
        "implementation": "compiled" if built else "interpreted",
        "reason": "; ".join(notes) or None,
        "modules": [module_name(s) for s in compiled_sources()] if built else [],
        "sources": {s: _sha256(ROOT / s) for s in compiled_sources()},
        "key": build_key(),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(OVERLAY, ignore_errors=True)
    staging.rename(OVERLAY)
    for note in notes:
        print(note, file=sys.stderr)
    print(f"compiled model: built ({_describe(manifest)})", file=sys.stderr)
    return manifest


def _describe(manifest: dict[str, Any]) -> str:
    if manifest["implementation"] == "compiled":
        return f"{len(manifest['modules'])} modules compiled with mypyc"
    return f"NOT compiled, interpreted: {manifest.get('reason') or 'no extension built'}"


def run(command: list[str]) -> NoReturn:
    """Exec ``command`` with the compiled model first on the module path."""
    try:
        manifest = check()
    except Stale as exc:
        raise SystemExit(f"compiled model: {exc}: run `make compile`") from exc
    if not command:
        raise SystemExit("compiled model: run needs a command (run -- CMD ...)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(OVERLAY), env.get("PYTHONPATH", "")) if p)
    env["PYTHONSAFEPATH"] = "1"
    env["VITALS_EXPECT_MODEL"] = manifest["implementation"]
    if manifest["implementation"] != "compiled":
        print(f"compiled model: {_describe(manifest)}", file=sys.stderr)
    sys.stdout.flush()
    os.execvpe(command[0], command, env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="compiled_model.py",
        description="Build, check or use the compiled model in build/compiled/ "
        "(README, 'Compiled model').",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    built = sub.add_parser("build", help="build the overlay if it is missing or stale")
    built.add_argument("--force", action="store_true", help="rebuild even if fresh")
    sub.add_parser("check", help="exit 1 (one line on stderr) if the overlay is stale")
    ran = sub.add_parser("run", help="run a command on the compiled model: run -- CMD ...")
    ran.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.action == "build":
        build(force=args.force)
    elif args.action == "check":
        try:
            manifest = check()
        except Stale as exc:
            raise SystemExit(f"compiled model: {exc}: run `make compile`") from exc
        print(json.dumps(manifest))
    else:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        run(command)


if __name__ == "__main__":
    main()
