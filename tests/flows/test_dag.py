"""One DAG: dvc.yaml, the CLI and the Prefect flow all come from flows.dag.STEPS."""

import ast
import inspect
import textwrap
from pathlib import Path

import pytest
import yaml

from flows.cli import app
from flows.dag import PRIVACY_STEPS, REPO_ROOT, STEPS, dvc_yaml
from flows.params import Params

PROJECT = ("tasks", "models")


def test_committed_dvc_yaml_matches_the_declared_steps():
    committed = (REPO_ROOT / "dvc.yaml").read_text()
    assert committed == dvc_yaml(), "dvc.yaml is stale: run `synthaug dag --write`"


def test_stages_follow_the_flow_order_and_run_their_step_through_the_cli():
    stages = yaml.safe_load(dvc_yaml())["stages"]
    assert list(stages) == [s.name for s in STEPS]
    commands = {c.name for c in app.registered_commands}
    for s in STEPS:
        assert stages[s.name]["cmd"].split()[:2] == ["synthaug", s.name]
        assert s.name in commands


def test_each_stage_lists_existing_params_and_code():
    dumped = Params().model_dump()
    stages = yaml.safe_load(dvc_yaml())["stages"]
    for s in STEPS:
        for key in stages[s.name].get("params", []):
            node = dumped
            for part in key.split("."):
                assert part in node, f"stage {s.name}: params key {key} is not in Params"
                node = node[part]
        for code in s.code:
            assert (REPO_ROOT / code).exists(), f"stage {s.name}: code dependency {code} does not exist"
            assert code in stages[s.name]["deps"]


def test_every_input_is_an_earlier_output():
    produced: set[str] = set()
    for s in STEPS:
        for dep in s.deps:
            assert any(dep == p or dep.startswith(p + "/") for p in produced), \
                f"{s.name} reads {dep} before any step writes it"
        produced.update(s.outputs)


def _project_imports(source: str) -> set[str]:
    """The ``tasks``/``models`` modules a piece of code imports (the code a step's result depends on)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
            found |= {f"{node.module}.{a.name}" if node.module in PROJECT else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PROJECT}
    return found


def _module_file(module: str) -> Path:
    path = REPO_ROOT / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@pytest.mark.parametrize("s", STEPS + PRIVACY_STEPS, ids=lambda s: s.name)
def test_code_deps_cover_every_module_the_step_runs(s) -> None:
    """A module a step imports (directly or through other modules) but does not list would leave a stale cache
    entry after that module changes."""
    todo, seen = _project_imports(textwrap.dedent(inspect.getsource(s.run))), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo |= _project_imports(_module_file(module).read_text())
    files = {_module_file(m).relative_to(REPO_ROOT).as_posix() for m in seen}
    files -= {"tasks/__init__.py", "models/__init__.py"}
    missing = sorted(f for f in files if not any(f == c or f.startswith(c + "/") for c in s.code))
    assert not missing, f"step {s.name}: add {missing} to its code deps in flows/dag.py"
