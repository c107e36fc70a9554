"""One DAG: dvc.yaml, the CLI and the Prefect flow all come from flows.dag.STEPS."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from synthaug.flows import catalog
from synthaug.flows.cli import app
from synthaug.flows.code_deps import REPO_ROOT, code_files
from synthaug.flows.dag import (
    ALL_PARAMS,
    PARAMS_FILE,
    PRIVACY_STEPS,
    STEPS,
    TRAIN_MODEL_KEYS,
    cache_key,
    dvc_yaml,
    step,
)
from synthaug.flows.params import Params, load_params


def test_committed_dvc_yaml_matches_the_declared_steps():
    committed = (REPO_ROOT / "dvc.yaml").read_text()
    assert committed == dvc_yaml(), "dvc.yaml is stale: run `synthaug dag --write`"


def test_stages_follow_the_flow_order_and_run_their_step_through_the_cli():
    stages = yaml.safe_load(dvc_yaml())["stages"]
    assert list(stages) == [s.name for s in STEPS if not s.publishes]
    commands = {c.name for c in app.registered_commands}
    for s in STEPS:
        assert s.name in commands  # `synthaug publish` too: the act that follows `dvc repro`
        if not s.publishes:
            assert stages[s.name]["cmd"].split()[:2] == ["synthaug", s.name]


def test_publishing_is_no_stage_of_dvc_yaml():
    """`dvc repro` and `dvc exp run` build the publishable dataset (assemble) and never write the registry: the steps
    that publish are no stages, and no stage runs `synthaug publish` or `synthaug release`."""
    stages = yaml.safe_load(dvc_yaml())["stages"]
    publishing = [s.name for s in STEPS + PRIVACY_STEPS if s.publishes]
    assert publishing == ["publish", "release"]
    assert not set(publishing) & set(stages) and list(stages)[-1] == "assemble"
    assert not any(word in stage["cmd"] for stage in stages.values() for word in ("publish", "release"))
    assert "data/work/dataset" in stages["assemble"]["outs"]


def test_each_stage_names_params_of_params_yaml_and_covers_its_code():
    """DVC refuses a stage whose params key is not in params.yaml (which holds the project's choices only), and a
    stage's code deps (rooms: folders without sub-packages, else files) cover every file its step runs."""
    committed = yaml.safe_load((REPO_ROOT / PARAMS_FILE).read_text())
    stages = yaml.safe_load(dvc_yaml())["stages"]
    for s in STEPS:
        if s.publishes:
            continue
        for key in stages[s.name].get("params", []):
            if key == {PARAMS_FILE: None}:  # the whole file: the step ships the resolved params
                continue
            node = committed
            for part in key.split("."):
                assert part in node, f"stage {s.name}: params key {key} is not in params.yaml"
                node = node[part]
        deps = stages[s.name]["deps"]
        for code in s.code:
            assert (REPO_ROOT / code).exists(), f"stage {s.name}: code dependency {code} does not exist"
            assert any(code == d or code.startswith(f"{d}/") for d in deps), f"stage {s.name}: {code} not a dep"
    assert stages["train"]["params"] == ["model", "publish.name", "publish.registry"]
    assert "tasks/templates" in stages["report"]["deps"]  # what render.py reads is code too
    assert "models" in stages["generate"]["deps"] and "tasks/plan.py" in stages["plan"]["deps"]


def test_train_depends_on_the_keys_it_reads_and_the_chosen_family_only():
    """Every model key but the families' sub-sections, and `model.${model.family}`: in the cache key a knob of
    another family changes nothing (dvc.yaml names the model section: params.yaml has a family's keys when set)."""
    from synthaug.models.families import family_names
    from synthaug.tasks.core.params.model import ModelParams

    generic = {f"model.{k}" for k in ModelParams.model_fields if k not in family_names()}
    train = step("train")
    assert set(TRAIN_MODEL_KEYS) == generic and "model.${model.family}" in train.params
    base, work = load_params(None, ["model.family=vae"]), Path("work")
    key = cache_key(train, base, work)
    assert cache_key(train, load_params(None, ["model.family=vae", "model.gan.steps=7"]), work) == key
    assert cache_key(train, load_params(None, ["model.family=vae", "model.vae.steps=7"]), work) != key
    assert cache_key(train, load_params(None, ["model.family=gan"]), work) != key
    assert cache_key(step("fingerprint"), load_params(None, ["data.image_size=16"]), work) == \
        cache_key(step("fingerprint"), Params(), work)  # the source's hash does not depend on how it is read
    assert step("assemble").params == (ALL_PARAMS,)  # it ships params.yaml whole
    assert cache_key(step("assemble"), load_params(None, ["tune.trials=3"]), work) != \
        cache_key(step("assemble"), Params(), work)


def test_each_plotted_file_is_drawn_once():
    """The tables and charts are plain outs of the evaluate stage; `dvc plots show` draws only the top-level
    definitions: each table's bar charts and each PNG once (no stage-level `plots`, which drew them twice)."""
    dumped = yaml.safe_load(dvc_yaml())
    assert not any("plots" in stage for stage in dumped["stages"].values())
    images = [p for p in dumped["plots"] if isinstance(p, str)]
    assert len(images) == len(set(images)) == 3 and all(p in dumped["stages"]["evaluate"]["outs"] for p in images)


def test_every_input_is_an_earlier_output():
    produced: set[str] = set()
    for s in STEPS:
        for dep in s.deps:
            assert any(dep == p or dep.startswith(p + "/") for p in produced), \
                f"{s.name} reads {dep} before any step writes it"
        produced.update(s.outputs)


def _edited(root: Path, rel: str) -> None:
    with open(root / rel, "a") as fh:
        fh.write("# edited\n")


def test_a_step_reruns_when_code_it_imports_changes_and_only_then(tmp_path):
    """The code keys come from real imports: editing plan.py re-runs plan, not ingest (which does not import it);
    editing a generator family (imported by name in models/families.py) re-runs generate, not plan."""
    root = tmp_path / "repo"
    for package in ("tasks", "models"):
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    params, workdir = Params(), tmp_path / "work"
    names = ("ingest", "plan", "generate", "judge")

    def keys() -> dict[str, str]:
        return {n: cache_key(step(n), params, workdir, root=root) for n in names}

    before = keys()
    assert before == {n: cache_key(step(n), params, workdir) for n in names}  # the copy hashes as the repository
    _edited(root, "tasks/plan.py")
    after_plan = keys()
    assert after_plan["plan"] != before["plan"]
    assert {n: after_plan[n] for n in ("ingest", "generate", "judge")} == \
        {n: before[n] for n in ("ingest", "generate", "judge")}
    _edited(root, "models/vae.py")
    after_vae = keys()
    assert after_vae["generate"] != after_plan["generate"]
    assert after_vae["plan"] == after_plan["plan"] and after_vae["ingest"] == after_plan["ingest"]
    _edited(root, "tasks/core/errors.py")  # imported by every step
    assert all(v != after_vae[n] for n, v in keys().items())


def test_code_deps_are_the_imports_followed_through_modules():
    source = "def run():\n    from synthaug.tasks.plan import make_plan\n"
    files = code_files(source)
    assert "tasks/plan.py" in files and "tasks/core/labels.py" in files  # plan.py -> tasks.core.labels
    assert "tasks/ingest.py" not in files and not any(f.startswith("models/") for f in files)
    assert {"models/vae.py", "models/gan.py", "models/diffusion.py"} <= set(step("generate").code)
    assert "tasks/plan.py" not in step("ingest").code


def test_steps_and_flows_take_workdir_paths_from_the_catalog():
    """Every dep and out is a catalog artifact, and no flow spells a step folder itself."""
    named = {a.rel for a in vars(catalog).values() if isinstance(a, catalog.Artifact)}
    named |= {a.rel for a in catalog.CHARTS}
    for s in STEPS + PRIVACY_STEPS:
        assert set(s.deps + s.outputs) <= named, f"{s.name}: {sorted(set(s.deps + s.outputs) - named)}"
    folders = "|".join({rel.split("/")[0] for rel in named})
    spelled = re.compile(rf'/ "({folders})"')
    for module in sorted((REPO_ROOT / "flows").glob("*.py")):
        found = spelled.findall(module.read_text())
        assert not found, f"{module.name} spells workdir folders {found}: take them from flows/catalog.py"


def test_catalog_readers_read_what_they_name(tmp_path):
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "plan.csv").write_text("class,real,target,to_generate\n01,3,5,2\n")
    assert catalog.PLAN_CSV.read(tmp_path)["class"].tolist() == ["01"]  # labels stay strings
    with pytest.raises(TypeError, match=r"model/train_log\.jsonl"):
        catalog.TRAIN_LOG.read(tmp_path)
