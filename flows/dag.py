"""The pipeline's steps, declared once. The Prefect flow runs them, the CLI exposes them, and
``dvc.yaml`` is generated from them (a test keeps the committed file identical).

A step reads params sections, files of earlier steps (``deps``, relative to the workdir, named in the workdir catalog
``flows/catalog.py``) and code (``code``: the files its adapter reaches through imports, computed by
``flows/code_deps.py``); it writes ``outs`` (catalog paths too). Its cache key is the hash of all three.

``STEPS`` is the ``augment`` DAG (and ``dvc.yaml``). The ``anonymize`` flow runs ``ANONYMIZE``: the same steps up to
the filter, then the privacy gate, the evaluation and the synthetic-only release (``PRIVACY_STEPS``). Those two are
not stages of ``dvc.yaml``: `dvc repro` would otherwise publish an anonymized release beside every augmented one.
"""

from __future__ import annotations

import hashlib
import json
import os
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
from synthaug.flows.code_deps import REPO_ROOT, step_code
from synthaug.flows.params import Params
from synthaug.tasks.core.io.files import files_under, tree_sha256

DEFAULT_WORKDIR = Path("data/work")

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
    return {"metrics": str(path)}


def _report(p: Params, workdir: Path) -> Record:
    from synthaug.tasks.report import report_step

    return {"report": str(report_step(INGEST.path(workdir), FILTER.path(workdir), EVALUATE.path(workdir),
                                      REPORT.path(workdir)))}


def _publish(p: Params, workdir: Path) -> Record:
    from synthaug.flows.params import dump_params
    from synthaug.models.training import has_checkpoint
    from synthaug.tasks.core.evaluation.gate import enforce_gate
    from synthaug.tasks.core.publishing.generators import assemble_generator
    from synthaug.tasks.publish.assemble import assemble
    from synthaug.tasks.publish.step import publish

    gate = enforce_gate(EVALUATE.path(workdir), p.publish.utility_gate)  # refused: raises, nothing assembled
    dataset = assemble(INGEST.path(workdir), FILTER.path(workdir), EVALUATE.path(workdir), REPORT.path(workdir),
                       dump_params(p), DATASET.path(workdir), name=p.publish.name)
    generator = None
    if has_checkpoint(CHECKPOINT.path(workdir)):
        generator = assemble_generator(MODEL.path(workdir), INGEST_MANIFEST.path(workdir), dump_params(p),
                                       GENERATOR.path(workdir))
    else:  # a workdir whose steps came from elsewhere (no trained model here): the dataset alone is published
        _say("publish: no generator checkpoint in this workdir; the dataset is published without a generator version")
    result = publish(dataset, p.publish, workdir=workdir, generator=generator)
    if result.generator_new:
        _say(f"publish: generator {result.generator_tag} (started from {_warm_from(workdir) or 'scratch'})")
    return {"dataset": str(dataset), "registry": result.registry, "tag": result.tag, "new": result.new,
            "generator_tag": result.generator_tag, "generator_new": result.generator_new,
            "utility_gate": "passed" if gate["passed"] else "refused, published anyway (publish.utility_gate=false)"}


def _privacy(p: Params, workdir: Path) -> Record:
    from synthaug.tasks.privacy import privacy_gate

    result = privacy_gate(INGEST.path(workdir), FILTER.path(workdir), JUDGE.path(workdir), p.privacy, p.filter,
                          PRIVACY.path(workdir), checkpoint_dir=CHECKPOINT.path(workdir))
    result.raise_if_failed()
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
                                  name=target.name)
    # The release's report shows only what is released: its privacy.json, no real or rejected image, and the run
    # record assemble_anonymized wrote (source withheld).
    report_step(INGEST.path(workdir), FILTER.path(workdir), EVALUATE.path(workdir), dataset, privacy_dir=dataset,
                run=read_run(dataset))
    result = publish(dataset, target, workdir=workdir)
    ratio = json.loads((dataset / PRIVACY_FILE).read_text())["utility"]["balanced_accuracy"]["ratio"]["mean"]
    return {"dataset": str(dataset), "registry": result.registry, "tag": result.tag, "new": result.new,
            "tstr_trtr_balanced_accuracy": ratio}


def _rel(*artifacts: Artifact) -> tuple[str, ...]:
    """Paths relative to the workdir, as ``Step.deps``/``outs`` and ``dvc.yaml`` name them."""
    return tuple(a.rel for a in artifacts)


STEPS: tuple[Step, ...] = (
    # The source lives outside the workdir (a folder, a table, a DVC repository at a moving revision): this step
    # hashes it on every run, and ingest depends on the hash, so a changed source re-runs ingest and what follows.
    Step("fingerprint", "Hash the source dataset (stat-cached, as DVC does) so that a changed source re-runs ingest.",
         _fingerprint, params=("data",), deps=(), outs=_rel(FINGERPRINT),
         retries=2, always_changed=True),
    Step("ingest", "Read the source dataset into normalized images, manifest.parquet and quarantine.parquet.",
         _ingest, params=("data",), deps=_rel(SOURCE_JSON), outs=_rel(INGEST),
         retries=2),
    Step("plan", "Decide how many synthetic images each class gets (plan.csv).",
         _plan, params=("plan",), deps=_rel(INGEST_MANIFEST), outs=_rel(PLAN)),
    Step("train", "Train or fine-tune the model.family generator on the real train split (warm start: from the "
                  "last published generator).",
         _train, params=("model", "publish.name", "publish.registry"), deps=_rel(INGEST_MANIFEST),
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
    Step("publish", "Assemble the dataset and its generator; publish them to the DVC data registry as <name>/v<N> "
                    "and <name>-generator/v<N>.",
         _publish, params=("publish",), deps=_rel(INGEST, FILTER, METRICS, REPORT, MODEL),
         outs=_rel(DATASET, GENERATOR), retries=2),
)


PRIVACY_STEPS: tuple[Step, ...] = (
    Step("privacy", "Privacy gate on the accepted synthetic images: memorization, membership attack, DCR.",
         _privacy, params=("privacy", "filter.extractor", "filter.device", "filter.memorization_quantile"),
         deps=_rel(INGEST, FILTER, JUDGE, CHECKPOINT), outs=_rel(PRIVACY)),
    Step("release", "Assemble the synthetic-only release (gate passed) and publish it as <privacy name>/v<N>.",
         _release, params=("privacy", "publish"), deps=_rel(INGEST_MANIFEST, FILTER, METRICS, *CHARTS, PRIVACY),
         outs=_rel(RELEASE), retries=2),
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


def cache_key(s: Step, params: Params, workdir: Path, extra: str = "", *, root: Path = REPO_ROOT) -> str:
    """Content hash of what the step reads: its params sections, its input files and its code (under ``root``)."""
    digest = hashlib.sha256(s.name.encode())
    dumped = params.model_dump(mode="json")
    sections = {name: _lookup(dumped, name) for name in s.params}
    digest.update(json.dumps(sections, sort_keys=True).encode())
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
    """dvc.yaml's top-level ``plots``: PLOTS with workdir paths, then each PNG chart as an image plot."""
    tables = [{name: {**spec, "y": {(workdir / t).as_posix(): col for t, col in spec["y"].items()}}}
              for name, spec in PLOTS.items()]
    images = [(workdir / p).as_posix() for s in STEPS for p in s.plots if p.endswith(".png")]
    return tables + images


def dvc_yaml(workdir: Path = DEFAULT_WORKDIR) -> str:
    """``dvc.yaml`` for the same DAG: one stage per step, each running that step through the CLI."""
    stages = {}
    for s in STEPS:
        stage: dict[str, Any] = {"cmd": f"synthaug {s.name} --workdir {workdir.as_posix()}"}
        deps = list(s.code) + [(workdir / d).as_posix() for d in s.deps]
        stage["deps"] = deps
        if s.params:
            stage["params"] = list(s.params)
        if s.always_changed:
            stage["always_changed"] = True
        stage["outs"] = [(workdir / o).as_posix() for o in s.outs]
        # Metrics and plots go to the DVC cache like the outs: the workdir is git-ignored, and `dvc exp show` /
        # `dvc plots diff` read other experiments' files from the cache.
        if s.metrics:
            stage["metrics"] = [(workdir / m).as_posix() for m in s.metrics]
        if s.plots:
            stage["plots"] = [(workdir / m).as_posix() for m in s.plots]
        stages[s.name] = stage
    header = "# Generated from flows/dag.py by `synthaug dag --write`; a test keeps the two identical.\n"
    return header + yaml.safe_dump({"stages": stages, "plots": _plot_definitions(workdir)}, sort_keys=False)
