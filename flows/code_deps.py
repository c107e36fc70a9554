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
    """Every project file ``source`` reaches through imports, as sorted POSIX paths relative to ``root``."""
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
    return tuple(sorted(files - set(PACKAGE_FILES)))


@functools.cache
def step_code(run: Callable) -> tuple[str, ...]:
    """The code files a step's adapter ``run`` reaches (computed once per process)."""
    return code_files(textwrap.dedent(inspect.getsource(run)))
