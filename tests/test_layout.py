"""The house rules, checked on the code itself: one installed namespace (``synthaug``), the import contracts of
pyproject.toml, and no module importing another module's private name."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"synthaug": "synthaug", "flows": "synthaug.flows", "tasks": "synthaug.tasks", "models": "synthaug.models"}
OLD_ROOTS = ("flows", "tasks", "models")  # the repository's folders; installed, they are synthaug.<folder>
PROJECT_ROOTS = ("synthaug", "tests", "bench")


def python_files() -> list[Path]:
    roots = [*PACKAGES, "tests", "bench"]
    return sorted(f for root in roots for f in (REPO / root).rglob("*.py") if "__pycache__" not in f.parts)


def imports(path: Path):
    """(line, module, names) of every import statement in ``path``; ``module`` is absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the repository path (good enough for the roots)
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            yield node.lineno, module, [a.name for a in node.names]


def test_every_project_import_goes_through_the_synthaug_namespace():
    """``import tasks`` would load a second copy of the code (or a user's own ``tasks`` package)."""
    found = [f"{path.relative_to(REPO)}:{line}: {module}" for path in python_files()
             for line, module, _ in imports(path) if module.split(".")[0] in OLD_ROOTS]
    assert not found, "import these as synthaug.<folder>...:\n" + "\n".join(found)


def test_every_module_imports():
    """Every module of the package imports (a name moved to another module fails here, not deep in a run)."""
    import importlib
    import pkgutil

    failed = []
    for package in ("synthaug.flows", "synthaug.tasks", "synthaug.models"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            try:
                importlib.import_module(info.name)
            except Exception as exc:  # every failure, each named
                failed.append(f"{info.name}: {exc!r}")
    assert not failed, "\n".join(failed)


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in python_files():
        for line, module, names in imports(path):
            if module.split(".")[0] not in PROJECT_ROOTS:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                found.append(f"{path.relative_to(REPO)}:{line}: {module} {private}")
    assert not found, "make these public, or keep them inside their module:\n" + "\n".join(found)


def test_import_contracts_hold(tmp_path):
    """import-linter on the installed layout: a folder ``synthaug`` whose sub-packages are the repository's folders
    (import-linter walks the files of one package; the editable install maps them without such a folder)."""
    farm = tmp_path / "farm" / "synthaug"
    farm.mkdir(parents=True)
    for folder, module in PACKAGES.items():
        if module != "synthaug":
            (farm / folder).symlink_to(REPO / folder, target_is_directory=True)
    (farm / "__init__.py").symlink_to(REPO / "synthaug" / "__init__.py")
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), str(REPO / "pyproject.toml"), "--no-cache"], cwd=tmp_path,
                          env={"PYTHONPATH": str(farm.parent), "PATH": ""}, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (setuptools writes build/ beside them)."""
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("sources")
    for name in ("pyproject.toml", "README.md", "LICENSE", *PACKAGES):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copyfile
        copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(src)], check=True, capture_output=True, text=True)
    (found,) = out.glob("synthaug-*.whl")
    return found


def test_the_wheel_installs_synthaug_alone(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"synthaug"}, sorted(top)


def test_the_wheel_holds_every_module_and_template(wheel):
    """pyproject.toml lists the packages by hand (the repository folders are mapped into synthaug): a new folder
    left off that list would be missing from every install."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, module in PACKAGES.items():
        prefix = module.replace(".", "/")
        for f in (REPO / folder).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".j2"):
                expected.add(f"{prefix}/{f.relative_to(REPO / folder).as_posix()}")
    assert expected - names == set()


def test_the_tier_markers_are_registered_as_tests_markers_describes_them():
    import tomllib

    from tests.markers import FAST_TIER, MARKERS

    registered = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert dict(m.split(": ", 1) for m in registered) == MARKERS
    assert f"FAST := {FAST_TIER}\n" in (REPO / "Makefile").read_text()  # make test runs that expression


def test_the_longest_groups_named_to_start_first_exist():
    """conftest.py starts these groups first (a stale name would silently stop doing so)."""
    import re

    from tests.conftest import LONGEST_FIRST

    named = {m for f in (REPO / "tests").rglob("*.py") for m in re.findall(r'xdist_group\("([\w-]+)"\)', f.read_text())}
    for group in LONGEST_FIRST:
        assert (REPO / group).is_file() or group in named, group
    assert "--no-loadscope-reorder" in (REPO / "Makefile").read_text()
