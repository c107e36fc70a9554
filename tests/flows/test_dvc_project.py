"""The repository as DVC users meet it: a fresh `git clone` of the committed tree is a DVC project where `dvc repro`
runs the DAG up to the publishable dataset folder, `dvc exp run -S` re-runs what a param changes and never touches the
data registry, `synthaug publish` publishes, `dvc metrics show` prints a few headline numbers and `dvc plots show`
draws the tables and charts. Toy params; the data registry is the default one, inside the clone."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from synthaug.flows.code_deps import REPO_ROOT
from synthaug.flows.dag import PLOTS, STEPS
from synthaug.flows.params import load_params
from tests.markers import integration, slow
from tests.toy import TINY, digits_folder

pytestmark = [integration, slow]

DATASET = "toy-clone"


def run_command(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def dvc(project: Path, *args: str) -> str:
    # The stages' `synthaug` is this environment's (the checkout under test; the clone holds the same committed code).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    return run_command([sys.executable, "-m", "dvc", *args], project, env)


def _lock_md5(project: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]
    return {o["path"]: o["md5"] for o in lock.get("outs", [])}


def _tags(project: Path) -> list[str]:
    return run_command(["git", "tag", "--list", "*/v*"], project / "registry" / "repo").split()


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The committed tree cloned into a temp folder, toy params committed there, then `dvc repro`."""
    root = tmp_path_factory.mktemp("dvc-project")
    project = root / "clone"
    run_command(["git", "clone", "-q", str(REPO_ROOT), str(project)], root)
    for key, value in (("user.email", "test@example.com"), ("user.name", "test")):
        run_command(["git", "config", key, value], project)
    source = digits_folder(root / "source")
    overrides = [*TINY, f"data.source={source}", f"publish.name={DATASET}"]
    chosen = yaml.safe_load((project / "params.yaml").read_text())
    for override in overrides:  # the project's choices plus the toy's, as a user edits params.yaml
        key, value = override.split("=", 1)
        *sections, leaf = key.split(".")
        node = chosen
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = yaml.safe_load(value)
    (project / "params.yaml").write_text(yaml.safe_dump(chosen, sort_keys=False))
    assert load_params(project / "params.yaml") == load_params(REPO_ROOT / "params.yaml", overrides)
    run_command(["git", "commit", "-qam", "toy params"], project)
    dvc(project, "repro", "-q")
    return project


def test_dvc_repro_in_a_fresh_clone_runs_the_dag(clone):
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    built = [s for s in STEPS if not s.publishes]
    assert list(lock) == [s.name for s in built] and built[-1].name == "assemble"
    for s in built:
        for out in s.outputs:
            assert (clone / "data" / "work" / out).exists(), f"{s.name} wrote no {out}"
    assert not (clone / "registry").exists()  # publishing is an act: `dvc repro` wrote no registry
    # The clone's own git sees only the new dvc.lock: the workdir and the registry are git-ignored.
    status = run_command(["git", "status", "--porcelain", "--untracked-files=all"], clone).splitlines()
    assert status == ["?? dvc.lock"], status


def test_dvc_repro_gives_the_images_and_decisions_of_the_flow(clone, tmp_path):
    """dvc.yaml's stages, run by `dvc repro` through the CLI, are the flow's DAG: the same images and filter
    decisions from the same params (the flow publishes into a registry of its own)."""
    from synthaug.flows.augment import augment

    params = load_params(clone / "params.yaml", [f"publish.registry={tmp_path / 'registry'}",
                                                 f"publish.remote={tmp_path / 'remote'}"])
    flow_work = tmp_path / "flow"
    augment(params, str(flow_work))
    for manifest in ("generate/manifest.parquet", "filter/manifest.parquet"):
        by_dvc = pd.read_parquet(clone / "data" / "work" / manifest)
        by_flow = pd.read_parquet(flow_work / manifest)
        cols = ["path", "image_id", "accepted", "reject_reason"]
        pd.testing.assert_frame_equal(by_dvc[cols], by_flow[cols])


def test_dvc_metrics_show_prints_a_few_headline_numbers(clone):
    shown = json.loads(dvc(clone, "metrics", "show", "--json"))
    (files,) = [rev["data"] for rev in shown.values()]
    assert list(files) == ["data/work/evaluate/summary.json"], list(files)

    def leaves(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from leaves(v)
        else:
            yield node

    shown_values = list(leaves(files["data/work/evaluate/summary.json"]["data"]))  # DVC leaves the nulls out
    assert 5 <= len(shown_values) <= 20 and all(isinstance(v, int | float) for v in shown_values), shown_values
    summary = json.loads((clone / "data/work/evaluate/summary.json").read_text())
    # toy data: set metrics and the gap closed may be null (not measured), never more than 20 values in all
    assert 10 <= len(list(leaves(summary))) <= 20, summary
    assert summary["utility_gate_passed"] in (0, 1)
    full = json.loads((clone / "data/work/evaluate/metrics.json").read_text())
    best = full["utility"]["best_real_baseline"]["balanced_accuracy"]
    assert summary["best_real_baseline"]["balanced_accuracy"] == full["utility"][best]["balanced_accuracy"]["mean"]


def test_dvc_plots_show_draws_the_tables_and_the_charts(clone):
    shown = json.loads(dvc(clone, "plots", "show", "--json"))
    plots = shown.get("data", shown)
    for name, spec in PLOTS.items():
        (rendered,) = plots[name]
        assert rendered["type"] == "vega"
        ((_, column),) = spec["y"].items()
        points = rendered["datapoints"]["workspace"] if "datapoints" in rendered else \
            rendered["content"]["data"]["values"]
        assert points and all(spec["x"] in p and column in p for p in points), (name, points[:2])
    charts = [f"data/work/{p}" for s in STEPS for p in s.plots if p.endswith(".png")]
    for chart in charts:
        (rendered,) = plots[chart]
        assert rendered["type"] == "image" and (clone / rendered["url"]).is_file(), rendered
    images = [r["url"] for rendered in plots.values() for r in rendered if r["type"] == "image"]
    assert sorted(images) == sorted(set(images)) and len(images) == len(charts), images  # no image twice
    assert set(plots) == set(PLOTS) | set(charts)  # no chart of its own for a CSV that is a table's data
    # its HTML folder, dvc_plots/, is git-ignored
    assert run_command(["git", "status", "--porcelain", "--untracked-files=all"], clone).splitlines() == ["?? dvc.lock"]


def test_synthaug_publish_publishes_and_dvc_exp_run_leaves_the_registry_alone(clone):
    """`synthaug publish` publishes the folder `dvc repro` built (v1 of the dataset and the generator); `dvc exp run -S`
    then re-runs what the param changes and leaves the registry's tags as they were."""
    run_command(["git", "add", "dvc.lock"], clone)
    run_command(["git", "commit", "-qm", "dvc.lock of the toy run"], clone)
    run_command([str(Path(sys.executable).with_name("synthaug")), "publish"], clone)
    published = [f"{DATASET}-generator/v1", f"{DATASET}/v1"]
    assert _tags(clone) == published
    before = {s: _lock_md5(clone, s) for s in ("train", "generate")}
    dvc(clone, "exp", "run", "-q", "-S", "generate.seed=7")
    after = {s: _lock_md5(clone, s) for s in ("train", "generate")}
    assert after["train"] == before["train"]  # generate.seed is not a param of train
    assert after["generate"] != before["generate"]
    assert yaml.safe_load((clone / "params.yaml").read_text())["generate"]["seed"] == 7
    assert _tags(clone) == published  # other images, yet an experiment publishes nothing
    # `dvc exp show` lists the experiment with its param and its headline metrics (from the DVC cache)
    (baseline,) = [row for row in json.loads(dvc(clone, "exp", "show", "--json")) if row["rev"] != "workspace"]
    (experiment,) = [rev["data"] for exp in baseline["experiments"] for rev in exp["revs"]]
    assert experiment["params"]["params.yaml"]["data"]["generate"]["seed"] == 7
    assert experiment["metrics"]["data/work/evaluate/summary.json"]["data"]["utility_gate_passed"] in (0, 1)
    # `--only-changed`: the param the experiment set and the outputs it changed, not train's
    header = next(csv.reader(io.StringIO(dvc(clone, "exp", "show", "--csv", "--only-changed"))))
    assert "generate.seed" in header and "data/work/generate" in header and "data/work/model" not in header, header
    assert len(header) < 20, header


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys |= _leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def test_dvc_exp_show_has_a_column_per_choice_dependency_and_metric(clone):
    """Plain `dvc exp show`: a column per key of params.yaml (the project's choices; DVC shows the whole file), per
    stage dependency (code by room) and per headline metric. With the committed params.yaml (the toy adds its keys
    here) that is fewer than 80 columns."""
    header = next(csv.reader(io.StringIO(dvc(clone, "exp", "show", "--csv"))))
    params = _leaf_keys(yaml.safe_load((clone / "params.yaml").read_text()))
    stages = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"]
    deps = {d for stage in stages.values() for d in stage["deps"]}
    metrics = {c for c in header if c not in params | deps}
    assert params <= set(header) and deps <= set(header), sorted(set(params | deps) - set(header))
    meta = {"Experiment", "rev", "typ", "Created", "parent"}
    assert meta <= metrics and 5 <= len(metrics - meta) <= 20, sorted(metrics)  # nothing else: summary.json's values
    committed = _leaf_keys(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    assert len(header) - len(params) + len(committed) < 80, (len(header), len(params), len(committed))
