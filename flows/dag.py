"""The pipeline's steps, declared once. The Prefect flow runs them, the CLI exposes them, and
``dvc.yaml`` is generated from them (a test keeps the committed file identical).

A step reads params sections, files of earlier steps (``deps``, relative to the workdir, named in the workdir catalog
``flows/catalog.py``) and code (``code``: the files its adapter reaches through imports, computed by
``flows/code_deps.py``); it writes ``outs`` (catalog paths too). Its cache key is the hash of all three.

``STEPS`` is the ``augment`` DAG. Publishing is an act, never a side effect of ``dvc repro`` or ``dvc exp run``: the
steps that write a data registry (``publishes``: ``publish``, and the ``release`` of ``PRIVACY_STEPS``) are no stages
of ``dvc.yaml`` and are never taken from Prefect's cache. ``dvc repro`` builds everything up to the publishable
dataset folder (the ``assemble`` stage); ``synthaug publish`` (or ``synthaug run``, or a scheduled run) publishes it.
The ``anonymize`` flow runs ``ANONYMIZE``: the same steps up to the filter, then the privacy gate, the evaluation and
the synthetic-only release.

Params: each step lists the keys it reads (``Step.params``): a dotted key (``filter.device``), a whole section when
the step reads all of it (``plan``), ``model.${model.family}`` for the chosen family's sub-section (so in a Prefect run
``-S model.family=gan`` re-runs train and ``-S model.vae.steps=9`` does not while the family is diffusion), or
``ALL_PARAMS`` for a step that ships the whole resolved params file. ``dvc.yaml`` names the same keys, a templated one
by its section (``dvc_params``): params.yaml holds only the project's choices, and DVC needs each named key in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from synthaug.flows.catalog import (
    CHARTS,
    CHECKPOINT,
    DATASET,
    EVALUATE,
    FILTER,
    FINGERPRINT,
    GENERATE,
    GENERATOR,
    INGEST,
    INGEST_MANIFEST,
    JUDGE,
    METRICS,
    MODEL,
    PER_CLASS_TABLE,
    PLAN,
    PLAN_CSV,
    PRIVACY,
    RELEASE,
    REPORT,
    SOURCE_JSON,
    SOURCES,
    SUMMARY,
    TRAIN_SUMMARY,
    UTILITY_TABLE,
    WARM_START,
    Artifact,
)
from synthaug.flows.code_deps import REPO_ROOT, code_rooms, step_code
from synthaug.flows.params import Params
from synthaug.tasks.core.io.files import files_under, tree_sha256

DEFAULT_WORKDIR = Path("data/work")
PARAMS_FILE = "params.yaml"
ALL_PARAMS = "*"  # Step.params entry: every key (dvc.yaml: the whole params file)
_TEMPLATE = re.compile(r"\$\{([\w.]+)\}")  # ${model.family} in a params key, as DVC's dvc.yaml templating reads it

Record = dict[str, Any]  # what a step returns: small, JSON-able facts (paths, hashes, counts)


@dataclass(frozen=True)
class Step:
    name: str
    help: str
    run: Callable[[Params, Path], Record]
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...] = ()  # a few headline numbers `dvc metrics show` / `dvc exp show` print
    plots: tuple[str, ...] = ()  # CSV tables (drawn as PLOTS says) and PNG charts `dvc plots show` renders
    retries: int = 0  # steps that touch remote storage (DVC fetch, push) retry with backoff
    always_changed: bool = False  # reads what no dep can name (the source): runs every time, never cached
    publishes: bool = False  # writes a data registry: an act (no dvc.yaml stage), run every time, never cached

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.outs + self.metrics + self.plots

    @property
    def code(self) -> tuple[str, ...]:
        """The tasks/ and models/ files the step runs, from its adapter's real imports (``flows/code_deps.py``)."""
        return step_code(self.run)


def _fingerprint(p: Params, workdir: Path) -> Record:
    from synthaug.tasks.ingest import fingerprint_source

    lineage = fingerprint_source(p.data, SOURCE_JSON.path(workdir), cache_dir=SOURCES.path(workdir))
    return {"content_hash": lineage["content_hash"], "resolved_rev": lineage["resolved_rev"]}


def _ingest(p: Params, workdir: Path) -> Record:
    from synthaug.tasks.ingest import ingest

    result = ingest(p.data, INGEST.path(workdir), cache_dir=SOURCES.path(workdir))
    return {"manifest": str(result.manifest_path)}


def _plan(p: Params, workdir: Path) -> Record:
    from synthaug.tasks.plan import make_plan

    plan = make_plan(INGEST_MANIFEST.path(workdir), p.plan, PLAN.path(workdir))
    return {"plan": str(PLAN_CSV.path(workdir)), "to_generate": int(plan["to_generate"].sum())}


def _say(message: str) -> None:
    """A line in the Prefect run's log when the step runs as a flow's task; on stderr otherwise."""
    from prefect import get_run_logger
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        print(message, file=sys.stderr, flush=True)
    else:
        get_run_logger().info(message)


def _train(p: Params, workdir: Path) -> Record:
    from synthaug.models.training import checkpoint_hash
    from synthaug.tasks.core.publishing.generators import resolve_warm_start, write_origin
    from synthaug.tasks.train.step import train

    if "WORLD_SIZE" not in os.environ:  # under torchrun the launching process has decided already
        warm = resolve_warm_start(INGEST_MANIFEST.path(workdir), p.model, p.publish,
                                  WARM_START.path(workdir))
        _say(f"train: {warm.reason}")
        write_origin(MODEL.path(workdir), warm)
        never = {"warm_start": "never"}  # the torchrun processes train exactly what was decided here
        p = p.model_copy(update={"model": warm.apply(p.model).model_copy(update=never)})
    if p.model.processes > 1 and "WORLD_SIZE" not in os.environ:  # not yet inside torchrun: launch it
        from synthaug.flows.launch import torchrun_step

        torchrun_step("train", p, workdir, p.model.processes)
        checkpoint = CHECKPOINT.path(workdir)
        summary = TRAIN_SUMMARY.read(workdir)  # rank 0 wrote it
        return {"checkpoint": str(checkpoint), "checkpoint_hash": checkpoint_hash(checkpoint),
                **_train_facts(summary)}
    result = train(INGEST_MANIFEST.path(workdir), p.model, MODEL.path(workdir))
    # A torchrun process of rank > 0 has no summary: rank 0 alone writes train.json.
    return {"checkpoint": str(result.checkpoint_dir), "checkpoint_hash": result.checkpoint_hash,
            **(_train_facts(result.summary) if result.summary else {})}


def _train_facts(summary: dict[str, Any]) -> Record:
    """Peak memory and, for a latent family, the autoencoder checkpoint and its val reconstruction (train.json)."""
    facts = {"peak_mib": summary["peak_mib"]}
    if "autoencoder" in summary:
        ae = summary["autoencoder"]
        facts |= {"autoencoder_hash": ae["sha256"], "autoencoder_psnr_db": ae["reconstruction"]["psnr_db"]}
    return facts


def _warm_from(workdir: Path) -> str | None:
    from synthaug.tasks.core.publishing.generators import ORIGIN_FILE

    origin = MODEL.path(workdir) / ORIGIN_FILE
    return json.loads(origin.read_text()).get("from") if origin.is_file() else None


def _progress(key: str) -> Callable[[int, int], None] | None:
    """Images done so far, as shards finish: a Prefect progress artifact when the step runs as a flow's task (the
    step itself reports on stderr: a bar on a terminal, log lines otherwise)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return None
    artifact = create_progress_artifact(0.0, key=key, description="share of the planned images generated")
    return lambda done, total: update_progress_artifact(artifact, 100.0 * done / max(total, 1))


def _generate(p: Params, workdir: Path) -> Record:
    from synthaug.flows.runners import shard_runner
    from synthaug.tasks.generate import generate_from_plan

    with shard_runner(p.runner, "generate-shards") as run_shards:
        manifest = generate_from_plan(PLAN_CSV.path(workdir), CHECKPOINT.path(workdir), p.generate,
                                      GENERATE.path(workdir), shard_size=p.runner.shard_size, run_shards=run_shards,
                                      on_progress=_progress("generate-progress"))
    return {"manifest": str(manifest)}


def _judge(p: Params, workdir: Path) -> Record:
    from synthaug.tasks.judge import train_judge_step

    out = train_judge_step(INGEST_MANIFEST.path(workdir), p.filter.judge, JUDGE.path(workdir),
                           device=p.filter.device)
    return {"judge": str(out)}


def _filter(p: Params, workdir: Path) -> Record:
    from synthaug.flows.runners import shard_runner
    from synthaug.tasks.filter.step import filter_step

    with shard_runner(p.runner, "filter-shards") as run_shards:
        result = filter_step(INGEST.path(workdir), GENERATE.path(workdir), JUDGE.path(workdir),
                             PLAN_CSV.path(workdir), CHECKPOINT.path(workdir), p.filter, p.generate,
                             FILTER.path(workdir), shard_size=p.runner.shard_size, run_shards=run_shards)
    return {"manifest": str(result.manifest_path), "accepted": result.accepted, "needed": result.needed,
            "shortfall": result.shortfall}


def _evaluate(p: Params, workdir: Path) -> Record:
    from synthaug.tasks.evaluate.step import evaluate_step

    path = evaluate_step(INGEST.path(workdir), FILTER.path(workdir), JUDGE.path(workdir), p.evaluate,
                         EVALUATE.path(workdir), processes=p.runner.cpu_processes)
    return {"metrics": str(path), "utility_gate": json.loads(path.read_text())["utility"]["gate"]["verdict"]}


def _report(p: Params, workdir: Path) -> Record:
    from synthaug.tasks.report import report_step

    return {"report": str(report_step(INGEST.path(workdir), FILTER.path(workdir), EVALUATE.path(workdir),
                                      REPORT.path(workdir)))}


def _license(p: Params) -> str | None:
    """The cards' license: ``publish.license``, else the bundled example's when it is the source (None: unknown)."""
    from synthaug.tasks.core.sources.example import LICENSE, SOURCE

    return p.publish.license or (LICENSE if p.data.source == SOURCE and p.data.repo is None else None)


def _assemble(p: Params, workdir: Path) -> Record:
    """The publishable dataset folder and its generator folder; nothing leaves the workdir (``_publish`` does that)."""
    from synthaug.flows.params import dump_params
    from synthaug.models.training import has_checkpoint
    from synthaug.tasks.core.publishing.generators import assemble_generator
    from synthaug.tasks.publish.assemble import assemble

    dataset = assemble(INGEST.path(workdir), FILTER.path(workdir), EVALUATE.path(workdir), REPORT.path(workdir),
                       dump_params(p), DATASET.path(workdir), name=p.publish.name, license=_license(p),
                       gate_enforced=p.publish.utility_gate is not False)
    generator = GENERATOR.path(workdir)
    if has_checkpoint(CHECKPOINT.path(workdir)):
        assemble_generator(MODEL.path(workdir), INGEST_MANIFEST.path(workdir), dump_params(p), generator,
                           license=_license(p))
    else:  # a workdir whose steps came from elsewhere (no trained model here): the dataset alone is published
        import shutil

        shutil.rmtree(generator, ignore_errors=True)
        _say("assemble: no generator checkpoint in this workdir; the dataset will be published without a generator")
    return {"dataset": str(dataset), "generator": str(generator) if generator.is_dir() else None}


def _publish(p: Params, workdir: Path) -> Record:
    """The act of publishing the assembled dataset (and its generator) to the registry; the assembled folder (its
    report, card and run.json) then carries the same version stamp as the registry's copy."""
    from synthaug.models.training import has_checkpoint
    from synthaug.tasks.core.evaluation.gate import enforce_gate
    from synthaug.tasks.publish.step import check_dataset, publish

    dataset = DATASET.path(workdir)
    check_dataset(dataset, hint=f"run `synthaug assemble --workdir {workdir}` (or `dvc repro`) first")
    gate = enforce_gate(dataset, p.publish.utility_gate)  # the metrics shipped with the dataset; refused: raises
    generator = GENERATOR.path(workdir)
    result = publish(dataset, p.publish, workdir=workdir,
                     generator=generator if has_checkpoint(generator / "checkpoint") else None)
    if result.generator_new:
        _say(f"publish: generator {result.generator_tag} (started from {_warm_from(workdir) or 'scratch'})")
    return {"dataset": str(dataset), "registry": result.registry, "tag": result.tag, "new": result.new,
            "generator_tag": result.generator_tag, "generator_new": result.generator_new,
            "utility_gate": (f"passed ({p.publish.utility_gate} rule)" if p.publish.utility_gate is not False
                             else "off (publish.utility_gate=false): published; the harm rule "
                                  + ("passed" if gate["passed"] else "refused")),
            "fetch": result.fetch_command,
            # publish stamped the assembled folder's report as it stamped the registry's: the one to open (the
            # report step's own copy, an input of assemble, stays as it was so a re-run reuses assemble)
            "report": str(dataset / "report.html")}


def _privacy(p: Params, workdir: Path) -> Record:
    from synthaug.tasks.privacy import privacy_gate

    result = privacy_gate(INGEST.path(workdir), FILTER.path(workdir), JUDGE.path(workdir), p.privacy, p.filter,
                          PRIVACY.path(workdir), checkpoint_dir=CHECKPOINT.path(workdir))
    if not result.passed:  # the failed checks, the pictures that show them and what to change; nothing released
        from synthaug.tasks.report import privacy_report

        result.raise_if_failed(report=privacy_report(INGEST.path(workdir), FILTER.path(workdir),
                                                     PRIVACY.path(workdir)))
    attack = result.report["attack"]
    return {"privacy": str(result.path), "passed": True, "released": result.report["release"]["images"],
            **{f"attack_auc_{s}": round(attack[s]["auc"], 4) for s in ("pixel", "feature")},
            **{f"density_attack_auc_{s}": round(result.report["density_attack"][s]["auc"], 4)
               for s in ("pixel", "feature")},
            "dp_epsilon": result.report["dp"].get("epsilon") if result.report["dp"]["claimed"] else None}


def _release(p: Params, workdir: Path) -> Record:
    from synthaug.flows.params import dump_params
    from synthaug.tasks.core.privacy.record import PRIVACY_FILE
    from synthaug.tasks.core.render import read_run
    from synthaug.tasks.publish.step import publish
    from synthaug.tasks.release.step import assemble_anonymized
    from synthaug.tasks.report import report_step

    target = p.publish.model_copy(update={"name": p.privacy.release_name(p.publish.name)})
    dataset = assemble_anonymized(INGEST.path(workdir), FILTER.path(workdir), EVALUATE.path(workdir),
                                  PRIVACY.path(workdir), dump_params(p), p.privacy, RELEASE.path(workdir),
                                  name=target.name, license=_license(p))
    # The release's report shows only what is released: its privacy.json, no real or rejected image, and the run
    # record assemble_anonymized wrote (source withheld).
    report_step(INGEST.path(workdir), FILTER.path(workdir), EVALUATE.path(workdir), dataset, privacy_dir=dataset,
                run=read_run(dataset))
    result = publish(dataset, target, workdir=workdir)
    ratio = json.loads((dataset / PRIVACY_FILE).read_text())["utility"]["balanced_accuracy"]["ratio"]["mean"]
    return {"dataset": str(dataset), "registry": result.registry, "tag": result.tag, "new": result.new,
            "tstr_trtr_balanced_accuracy": ratio, "fetch": result.fetch_command}


def _rel(*artifacts: Artifact) -> tuple[str, ...]:
    """Paths relative to the workdir, as ``Step.deps``/``outs`` and ``dvc.yaml`` name them."""
    return tuple(a.rel for a in artifacts)


# What train reads of the model section: every key but the families' sub-sections, and the chosen family's.
TRAIN_MODEL_KEYS = tuple(f"model.{key}" for key in ("family", "device", "seed", "init_from", "pretrained", "warm_start",
                                                    "warm_start_fraction", "grid_every", "device_dataset_mb",
                                                    "processes", "dp"))
FAMILY_SECTION = "model.${model.family}"

STEPS: tuple[Step, ...] = (
    # The source lives outside the workdir (a folder, a table, a DVC repository at a moving revision): this step
    # hashes it on every run, and ingest depends on the hash, so a changed source re-runs ingest and what follows.
    Step("fingerprint", "Hash the source dataset (stat-cached, as DVC does) so that a changed source re-runs ingest.",
         _fingerprint, params=("data.source", "data.repo", "data.rev"), deps=(), outs=_rel(FINGERPRINT),
         retries=2, always_changed=True),
    Step("ingest", "Read the source dataset into normalized images, manifest.parquet and quarantine.parquet.",
         _ingest, params=("data",), deps=_rel(SOURCE_JSON), outs=_rel(INGEST),
         retries=2),
    Step("plan", "Decide how many synthetic images each class gets (plan.csv).",
         _plan, params=("plan",), deps=_rel(INGEST_MANIFEST), outs=_rel(PLAN)),
    Step("train", "Train or fine-tune the model.family generator on the real train split (warm start: from the "
                  "last published generator).",
         _train, params=(*TRAIN_MODEL_KEYS, FAMILY_SECTION, "publish.name", "publish.registry"),
         deps=_rel(INGEST_MANIFEST),
         outs=_rel(MODEL)),
    Step("generate", "Sample the planned number of images per class, one file per seed.",
         _generate, params=("generate",), deps=_rel(PLAN_CSV, CHECKPOINT), outs=_rel(GENERATE)),
    Step("judge", "Train the judge classifier on the real train split, calibrated on val.",
         _judge, params=("filter.judge", "filter.device"), deps=_rel(INGEST_MANIFEST), outs=_rel(JUDGE)),
    Step("filter", "Score every synthetic image, reject with reasons, top up short classes.",
         _filter, params=("filter", "generate"), deps=_rel(INGEST, GENERATE, JUDGE, PLAN_CSV, CHECKPOINT),
         outs=_rel(FILTER)),
    Step("evaluate", "Set metrics (FID, KID, precision/recall, density/coverage) and downstream utility.",
         _evaluate, params=("evaluate",), deps=_rel(INGEST, FILTER, JUDGE), outs=_rel(METRICS),
         metrics=_rel(SUMMARY), plots=_rel(UTILITY_TABLE, PER_CLASS_TABLE, *CHARTS)),
    Step("report", "Write the self-contained report.html.",
         _report, params=(), deps=_rel(INGEST, FILTER, METRICS, *CHARTS), outs=_rel(REPORT)),
    # The dataset ships the resolved params: every key is an input of this step.
    Step("assemble", "Assemble the publishable dataset folder (images, manifest, metrics, report, card, params) and "
                     "its generator folder; nothing is published.",
         _assemble, params=(ALL_PARAMS,), deps=_rel(INGEST, FILTER, METRICS, REPORT, MODEL),
         outs=_rel(DATASET, GENERATOR)),
    # Publishing is an act: no stage of dvc.yaml (`dvc repro` / `dvc exp run` never write the registry), and never
    # taken from Prefect's cache (the registry is asked every time).
    Step("publish", "Publish the assembled dataset and its generator to the DVC data registry as <name>/v<N> and "
                    "<name>-generator/v<N> (nothing when the images and manifest equal the latest version).",
         _publish, params=("publish",), deps=_rel(DATASET, GENERATOR), outs=(), retries=2, publishes=True),
)


PRIVACY_STEPS: tuple[Step, ...] = (
    Step("privacy", "Privacy gate on the accepted synthetic images: memorization, membership attack, DCR.",
         _privacy, params=("privacy", "filter.extractor", "filter.device", "filter.memorization_quantile"),
         deps=_rel(INGEST, FILTER, JUDGE, CHECKPOINT), outs=_rel(PRIVACY)),
    Step("release", "Assemble the synthetic-only release (gate passed) and publish it as <privacy name>/v<N>.",
         _release, params=(ALL_PARAMS,), deps=_rel(INGEST_MANIFEST, FILTER, METRICS, *CHARTS, PRIVACY),
         outs=_rel(RELEASE), retries=2, publishes=True),
)


def steps_through(last: str) -> tuple[str, ...]:
    """The names of the ``augment`` steps up to and including ``last``, in order (e.g. the steps every flow runs
    before its own: ``steps_through("filter")``)."""
    names = tuple(s.name for s in STEPS)
    return names[: names.index(last) + 1]


ANONYMIZE: tuple[str, ...] = (*steps_through("filter"), "privacy", "evaluate", "release")


def step(name: str) -> Step:
    for s in STEPS + PRIVACY_STEPS:
        if s.name == name:
            return s
    raise ValueError(f"unknown step {name!r}; steps: {', '.join(s.name for s in STEPS + PRIVACY_STEPS)}")


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def resolve_key(key: str, dumped: dict[str, Any]) -> str:
    """A ``Step.params`` key with its ``${...}`` templates filled in from the params (as DVC fills dvc.yaml's)."""
    return _TEMPLATE.sub(lambda m: str(_lookup(dumped, m.group(1))), key)


def params_read(s: Step, params: Params) -> dict[str, Any]:
    """The values of the params ``s`` reads, by resolved key (``ALL_PARAMS``: the whole params document)."""
    dumped = params.model_dump(mode="json")
    if ALL_PARAMS in s.params:
        return dumped
    return {resolve_key(k, dumped): _lookup(dumped, resolve_key(k, dumped)) for k in s.params}


def cache_key(s: Step, params: Params, workdir: Path, extra: str = "", *, root: Path = REPO_ROOT) -> str:
    """Content hash of what the step reads: its params keys, its input files and its code (under ``root``)."""
    digest = hashlib.sha256(s.name.encode())
    digest.update(json.dumps(params_read(s, params), sort_keys=True).encode())
    for path in [workdir / dep for dep in s.deps] + [root / code for code in s.code]:
        digest.update(f"{path.name}\0{tree_sha256(files_under(path), path.parent)}\n".encode())
    digest.update(extra.encode())
    return digest.hexdigest()


def _bars(table: Artifact, category: str, value: str, title: str) -> dict[str, Any]:
    """A horizontal bar chart of ``table``: one bar per ``category`` row, ``value`` as its length."""
    return {"template": "bar_horizontal", "x": value, "y": {table.rel: category}, "title": title}


# How `dvc plots show` / `dvc plots diff` draw the CSV tables: id -> DVC's top-level plot definition (x and y name
# columns; ``y`` maps the table to its column). The utility table has one row per condition, per_class.csv one per
# class: horizontal bars, one chart per measure. The PNG charts among the steps' plots are listed as image plots.
PLOTS: dict[str, dict[str, Any]] = {
    "balanced_accuracy_by_condition": _bars(UTILITY_TABLE, "condition", "balanced_accuracy_mean",
                                            "Balanced accuracy on the real test split (mean over seeds)"),
    "minority_recall_by_condition": _bars(UTILITY_TABLE, "condition", "minority_recall_mean",
                                          "Minority-class recall on the real test split (mean over seeds)"),
    "recall_by_class": _bars(PER_CLASS_TABLE, "class", "recall_real_synthetic", "Per-class recall, real + synthetic"),
    "synthetic_accepted_by_class": _bars(PER_CLASS_TABLE, "class", "synthetic_accepted",
                                         "Accepted synthetic images per class"),
}


def _plot_definitions(workdir: Path) -> list[Any]:
    """dvc.yaml's top-level ``plots``: PLOTS with workdir paths, then each PNG chart as an image plot. These are the
    only plot definitions: the stages list the same files as plain outs, so `dvc plots show` draws each once."""
    tables = [{name: {**spec, "y": {(workdir / t).as_posix(): col for t, col in spec["y"].items()}}}
              for name, spec in PLOTS.items()]
    images = [(workdir / p).as_posix() for s in STEPS for p in s.plots if p.endswith(".png")]
    return tables + images


def dvc_params(s: Step) -> list[Any]:
    """The params a stage names in ``dvc.yaml``: ``Step.params``, but a templated key (``model.${model.family}``)
    names its parent section, which takes that section's other keys with it. params.yaml holds the project's choices
    only (a family's sub-section is there when set) and DVC refuses a stage naming a key the file lacks; the Prefect
    cache key keeps the template (``params_read``)."""
    if ALL_PARAMS in s.params:
        return [{PARAMS_FILE: None}]
    keys = [k.split(".${")[0] if "${" in k else k for k in s.params]
    return [k for k in dict.fromkeys(keys) if not any(k.startswith(f"{other}.") for other in keys)]


def dvc_yaml(workdir: Path = DEFAULT_WORKDIR) -> str:
    """``dvc.yaml`` for the same DAG: one stage per step, each running that step through the CLI; the steps that
    publish are no stages (publishing is an act: ``synthaug publish``)."""
    stages = {}
    for s in STEPS:
        if s.publishes:
            continue
        stage: dict[str, Any] = {"cmd": f"synthaug {s.name} --workdir {workdir.as_posix()}"}
        stage["deps"] = list(code_rooms(s.code)) + [(workdir / d).as_posix() for d in s.deps]
        if s.params:
            stage["params"] = dvc_params(s)
        if s.always_changed:
            stage["always_changed"] = True
        # The plotted tables and charts are plain outs (the top-level `plots` draw them once each). Outs, metrics
        # and plots go to the DVC cache: the workdir is git-ignored, and `dvc exp show` / `dvc plots diff` read other
        # experiments' files from the cache.
        stage["outs"] = [(workdir / o).as_posix() for o in s.outs + s.plots]
        if s.metrics:
            stage["metrics"] = [(workdir / m).as_posix() for m in s.metrics]
        stages[s.name] = stage
    header = "# Generated from flows/dag.py by `synthaug dag --write`; a test keeps the two identical.\n"
    return header + yaml.safe_dump({"stages": stages, "plots": _plot_definitions(workdir)}, sort_keys=False)
