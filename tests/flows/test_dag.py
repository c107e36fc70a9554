"""One DAG: dvc.yaml, the CLI and the Prefect flow all come from flows.dag.STEPS."""

import yaml

from flows.cli import app
from flows.dag import REPO_ROOT, STEPS, dvc_yaml
from flows.params import Params


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
