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
PROJECT = ("tasks", "models")  # the packages whose code a step's result depends on (flows/ only wires them)
PACKAGE_FILES = ("tasks/__init__.py", "models/__init__.py", "tasks/core/__init__.py")
# "models.vae:VAE": a module imported by name on first use (models/registry.py), as much a dependency as an import
LAZY = re.compile(r"((?:tasks|models)(?:\.\w+)+):\w+")


def project_imports(source: str) -> set[str]:
    """The ``tasks``/``models`` modules a piece of code imports, including those it names as ``"module:attr"``
    strings to import on first use."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (lazy := LAZY.fullmatch(node.value)):
            found.add(lazy.group(1))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
            found |= {f"{node.module}.{a.name}" if node.module in PROJECT else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PROJECT}
    return found


def module_file(module: str, root: Path = REPO_ROOT) -> Path:
    path = root / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def code_files(source: str, root: Path = REPO_ROOT) -> tuple[str, ...]:
    """Every project file ``source`` reaches through imports, as sorted POSIX paths relative to ``root``."""
    todo, seen = project_imports(source), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo |= project_imports(module_file(module, root).read_text())
    files = {module_file(m, root).relative_to(root).as_posix() for m in seen}
    return tuple(sorted(files - set(PACKAGE_FILES)))


@functools.cache
def step_code(run: Callable) -> tuple[str, ...]:
    """The code files a step's adapter ``run`` reaches (computed once per process)."""
    return code_files(textwrap.dedent(inspect.getsource(run)))
