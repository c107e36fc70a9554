"""The code a step's result depends on, computed from its real imports (its cache key and its ``dvc.yaml`` deps).

A step's adapter in ``flows/dag.py`` imports what it runs, usually inside the function; every ``tasks``/``models``
module it imports, directly or through other modules, is a code dependency of the step. Nothing is listed by
hand, so a module the step does not reach never re-runs it, and one it does always does.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFIX = "synthaug."  # the installed namespace; in the repository ``synthaug.tasks`` is the folder ``tasks/``
PROJECT = ("synthaug.tasks", "synthaug.models")  # the packages whose code a step's result depends on (flows/ wires)
PACKAGE_FILES = ("tasks/__init__.py", "models/__init__.py", "tasks/core/__init__.py")
# What a module reads at run time besides imports: the templates render.py loads (a changed template re-renders)
READS = {"tasks/core/render.py": ("tasks/templates",)}
# "synthaug.models.vae:VAE": a module imported by name on first use (models/families.py), as much a dependency as an
# import
LAZY = re.compile(r"(synthaug\.(?:tasks|models)(?:\.\w+)+):\w+")


def _in_project(module: str) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in PROJECT)


def project_imports(source: str) -> set[str]:
    """The ``synthaug.tasks``/``synthaug.models`` modules a piece of code imports, including those it names as
    ``"module:attr"`` strings to import on first use. ``from package import name`` counts ``package.name`` too
    (``code_files`` keeps it when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (lazy := LAZY.fullmatch(node.value)):
            found.add(lazy.group(1))
        if isinstance(node, ast.ImportFrom) and node.module and _in_project(node.module):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if _in_project(a.name)}
    return found


def module_file(module: str, root: Path = REPO_ROOT) -> Path | None:
    """The file of ``synthaug.<package>.<...>`` in the repository (``<package>/<...>.py`` or its ``__init__.py``);
    None when the name is not a module (a function or class imported from one)."""
    path = root / module.removeprefix(PREFIX).replace(".", "/")
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def code_files(source: str, root: Path = REPO_ROOT) -> tuple[str, ...]:
    """Every project file ``source`` reaches through imports (and what those read: ``READS``), as sorted POSIX paths
    relative to ``root``."""
    todo, seen, files = project_imports(source), set(), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module, root)
        if path is not None:
            files.add(path.relative_to(root).as_posix())
            todo |= project_imports(path.read_text())
    files |= {read for f in files for read in READS.get(f, ())}
    return tuple(sorted(files - set(PACKAGE_FILES)))


def code_rooms(files: tuple[str, ...], root: Path = REPO_ROOT) -> tuple[str, ...]:
    """``files`` as ``dvc.yaml`` names them: a file of a folder without sub-packages (``models/``,
    ``tasks/core/io/``, ``tasks/filter/``, ``tasks/templates/``) by its folder, any other file by itself. `dvc exp
    show` has a column per dependency; a room changes as a whole far more often than a file's neighbours matter
    (the Prefect cache key still hashes the files: ``Step.code``)."""

    def leaf(folder: Path) -> bool:
        return folder != root and not any(p.is_dir() and p.name != "__pycache__" for p in folder.iterdir())

    rooms = set()
    for rel in files:
        path = root / rel
        folder = path if path.is_dir() else path.parent
        rooms.add(folder.relative_to(root).as_posix() if leaf(folder) else rel)
    return tuple(sorted(rooms))


@functools.cache
def step_code(run: Callable) -> tuple[str, ...]:
    """The code files a step's adapter ``run`` reaches (computed once per process)."""
    return code_files(textwrap.dedent(inspect.getsource(run)))
