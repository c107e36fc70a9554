"""Generators as versioned artifacts: the folder published with each dataset version, the warm start of a new run
from the last published generator, and sampling from a published generator anywhere DVC reaches the registry.

The artifact (``models/<name>`` in the data registry, tagged ``<name>-generator/v<N>`` by ``tasks.publish``)::

    checkpoint/config.json, checkpoint/weights.pt   the model (models/training.py format; loaded weights_only)
    train_log.jsonl                                 one line per training step (losses, seconds)
    samples.png                                     the per-class sample grid at the last step
    generator.json                                  lineage: checkpoint sha256, family, classes, image shape, steps,
                                                    source (repo, rev, resolved rev, content hash), code version,
                                                    and the generator it was fine-tuned from (``origin``)
    params.yaml, card.md                            the resolved params; the same lineage for people

Warm start (``model.warm_start: auto``): a run fine-tunes from the last published generator of its dataset when that
generator's family, image shape and network config equal this run's and it knows no class the new data lacks (new
classes extend its class conditioning); else it trains from scratch, and the log says why. When the source is the
one that generator was trained on, the run starts where that generator started (its ``origin``), so re-running a
published version reproduces its checkpoint instead of fine-tuning it on the same data again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from synthaug.tasks.core.errors import UserError, refuse_credentials
from synthaug.tasks.core.io.files import write_atomic
from synthaug.tasks.core.io.manifest import read_manifest, write_manifest
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.params.generate import SAMPLING_FIELDS, GenerateParams
from synthaug.tasks.core.params.model import ModelParams
from synthaug.tasks.core.params.publish import PublishParams, check_name
from synthaug.tasks.core.publishing.public import public_lineage, public_location, public_params_yaml
from synthaug.tasks.core.publishing.registry import GENERATOR_SUFFIX, code_version, fetch_generator, latest_generator
from synthaug.tasks.core.publishing.vcs import normalize_location
from synthaug.tasks.core.render import render
from synthaug.tasks.core.sampling import Request, generate, seeds_for
from synthaug.tasks.core.untrusted import check_class_names, checked_checkpoint_meta, load_checked, read_json_object

GENERATOR_FILE = "generator.json"
ORIGIN_FILE = "origin.json"  # <train out>/origin.json: where the run's training started (written by the flow)
RETRAINED_FIELDS = ("steps", "checkpoint_every")  # may differ between a generator and its fine-tuning run


@dataclass(frozen=True)
class WarmStart:
    """Where a training run starts. ``tag``/``checkpoint``: the published generator fetched to fine-tune from (None:
    from scratch); ``reason``: one sentence for the log and the card; ``steps``: the family's steps for this run."""

    tag: str | None
    checkpoint: Path | None
    reason: str
    steps: int

    def apply(self, model: ModelParams) -> ModelParams:
        """``model`` with ``init_from`` and the fewer steps of a warm start (unchanged from scratch)."""
        if self.checkpoint is None:
            return model
        family = dataclasses.replace(model.family_config(), steps=self.steps)
        return model.model_copy(update={"init_from": str(self.checkpoint), model.family: family})

    def record(self) -> dict[str, Any]:
        return {"from": self.tag, "reason": self.reason, "steps": self.steps}


def resolve_warm_start(manifest_path: Path, model: ModelParams, publish: PublishParams, out_dir: Path) -> WarmStart:
    """Decide where training on ``manifest_path`` starts; a generator to fine-tune is fetched into ``out_dir``.

    A published generator is untrusted input: it is used only once fetched, its ``generator.json`` and checkpoint
    checked and its weights loaded on the CPU (``checked_generator``). One that cannot be fetched, checked or loaded
    is not used: the run trains from scratch and the reason says why. An unreachable registry stops the run."""
    steps = model.family_config().steps
    # The reason is published (generator.json, the generator card): locations in their public form.
    registry = public_location(publish.registry)
    if model.init_from:
        return WarmStart(None, None, f"fine-tuning from model.init_from={public_location(model.init_from)} (set by "
                                     "hand)", steps)
    if model.warm_start == "never":
        return WarmStart(None, None, "training from scratch (model.warm_start: never)", steps)
    tag = latest_generator(publish.registry, publish.name)
    if tag is None:
        return WarmStart(None, None, f"training from scratch: no generator of {publish.name} published in "
                                     f"{registry} yet", steps)
    frame, lineage = read_manifest(manifest_path)
    source = lineage.get("content_hash")
    try:
        fetched, meta = checked_generator(publish.registry, tag, out_dir)
        if source and (meta.get("source") or {}).get("content_hash") == source:
            # Same data as that generator: start where it started, so the run remakes it rather than tuning it.
            origin = (meta.get("origin") or {}).get("from")
            if origin is None:
                return WarmStart(None, None, f"training from scratch: the source is the one {tag} was trained on, "
                                             "and it was trained from scratch", steps)
            tag = str(origin)
            fetched, meta = checked_generator(publish.registry, tag, out_dir)
    except UserError as exc:
        why = str(exc)
        for local, shown in ((str(out_dir.absolute()), "<warm start>"), (str(out_dir), "<warm start>"),
                             (normalize_location(publish.registry), registry), (publish.registry, registry)):
            why = why.replace(local, shown)
        return WarmStart(None, None, f"training from scratch: the published generator {tag} cannot be used ({why})",
                         steps)
    mismatch = warm_start_mismatch(meta, frame, model)
    if mismatch:
        return WarmStart(None, None, f"training from scratch, not from {tag}: {mismatch}", steps)
    fewer = max(1, math.ceil(model.warm_start_fraction * steps))
    added = sorted(set(_train_classes(frame)) - set(meta["class_names"]), key=natural_key)
    extended = f"; class conditioning extended with {added}" if added else ""
    return WarmStart(tag, fetched / "checkpoint", f"fine-tuning from generator {tag} for {fewer} of {steps} steps "
                                                  f"(model.warm_start_fraction={model.warm_start_fraction}){extended}",
                     fewer)


def checked_generator(registry: str, tag: str, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Fetch generator version ``tag`` into ``out_dir`` and check it as untrusted input: ``generator.json`` a bounded
    JSON object; the checkpoint's ``config.json`` bounded (family, config, image shape, classes) with class names
    that pass the label rules; the weights loadable into the network it describes (tensors only, shapes, dtypes,
    finite; ``tasks.core.untrusted.load_checked``, on the CPU). Returns the folder and the lineage, whose
    ``family``, ``class_names``, ``image_shape`` and ``config`` are the checkpoint's own. UserError otherwise."""
    import torch

    fetched = _fetch(registry, tag, out_dir)
    fix = f"this version of {public_location(registry)} is damaged or was not made by synthaug"
    _, checkpoint, _ = load_checked(fetched / "checkpoint", torch.device("cpu"), fix)
    record = read_json_object(fetched / GENERATOR_FILE, fix=fix)
    if record.get("class_names") != checkpoint["class_names"]:
        raise UserError(f"{fetched / GENERATOR_FILE}: class_names differ from checkpoint/config.json's; {fix}")
    lineage = {k: record.get(k) if isinstance(record.get(k), dict) else {} for k in ("source", "origin")}
    if lineage["origin"].get("from") is not None and not isinstance(lineage["origin"]["from"], str):
        raise UserError(f"{fetched / GENERATOR_FILE}: origin.from must be a generator tag; {fix}")
    digest = record.get("checkpoint")
    return fetched, {**lineage, "checkpoint": digest if isinstance(digest, str) else None,
                     **{k: checkpoint[k] for k in ("family", "class_names", "image_shape", "config")}}


def _fetch(registry: str, tag: str, out_dir: Path) -> Path:
    gname, _, version = tag.rpartition("/")
    try:  # a tag may come from a published generator.json (its origin): a folder name only once checked
        check_name(gname.removesuffix(GENERATOR_SUFFIX))
        if not gname.endswith(GENERATOR_SUFFIX) or not version.startswith("v") or not version[1:].isdigit():
            raise ValueError(f"expected <dataset>{GENERATOR_SUFFIX}/v<N>")
    except ValueError as exc:
        raise UserError(f"generator tag {tag[:120]!r}: {exc}") from None
    target = out_dir / tag.replace("/", "_")
    shutil.rmtree(target, ignore_errors=True)  # a half-fetched folder of a killed run
    return fetch_generator(registry, tag, target)


def _train_classes(frame: pd.DataFrame) -> list[str]:
    rows = frame[(frame["split"] == "train") & (frame["source"] == "real")]
    return sorted(set(rows["label"]), key=natural_key)


def warm_start_mismatch(meta: dict[str, Any], frame: pd.DataFrame, model: ModelParams) -> str | None:
    """Why the generator ``meta`` describes cannot be fine-tuned on ``frame`` with ``model`` (None: it can)."""
    if meta["family"] != model.family:
        return f"it is a {meta['family']} generator and model.family is {model.family}"
    rows = frame[(frame["split"] == "train") & (frame["source"] == "real")]
    shape = [int(rows[c].iloc[0]) for c in ("channels", "height", "width")] if len(rows) else []
    if list(meta["image_shape"]) != shape:
        return f"its image shape is {meta['image_shape']} and the source's is {shape}"
    removed = sorted(set(meta["class_names"]) - set(_train_classes(frame)), key=natural_key)
    if removed:
        return f"classes {removed} are no longer in the source"
    ours = json.loads(json.dumps(dataclasses.asdict(model.family_config())))
    differs = sorted(k for k in set(ours) | set(meta["config"])
                     if k not in (*RETRAINED_FIELDS, *SAMPLING_FIELDS) and ours.get(k) != meta["config"].get(k))
    if differs:
        return f"model.{model.family} differs in {differs}"
    return None


def write_origin(model_dir: Path, warm: WarmStart) -> Path:
    path = model_dir / ORIGIN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(warm.record(), indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# the artifact


def assemble_generator(model_dir: Path, ingest_manifest: Path, params_yaml: str, out_dir: Path, *,
                       license: str | None = None) -> Path:
    """Build ``out_dir`` (replaced whole) from the train step's ``model_dir`` and the source lineage of the ingest;
    ``license``: the card's license id (None: unknown)."""
    from synthaug.models.training import CHECKPOINT_FILES, checkpoint_hash, read_checkpoint_meta

    ckpt = model_dir / "checkpoint"
    meta = read_checkpoint_meta(ckpt)
    _, lineage = read_manifest(ingest_manifest)
    lineage = public_lineage(lineage)  # no local path in a published file
    params_yaml = public_params_yaml(params_yaml)
    origin_file = model_dir / ORIGIN_FILE
    origin = json.loads(origin_file.read_text()) if origin_file.is_file() else {"from": None, "reason": "not recorded"}
    grids = sorted((model_dir / "samples").glob("step_*.png"))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "checkpoint").mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        shutil.copyfile(ckpt / name, out_dir / "checkpoint" / name)
    for src, dst in ((model_dir / "train_log.jsonl", "train_log.jsonl"), (grids[-1] if grids else None, "samples.png")):
        if src is not None and src.is_file():
            shutil.copyfile(src, out_dir / dst)
    record = {
        "checkpoint": checkpoint_hash(ckpt), "family": meta["family"], "class_names": meta["class_names"],
        "image_shape": meta["image_shape"], "steps": meta["step"], "config": meta["config"],
        "source": {k: lineage.get(k) for k in ("source", "repo", "rev", "resolved_rev", "content_hash")},
        "code_version": code_version(), "origin": origin,
    }
    (out_dir / GENERATOR_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (out_dir / "params.yaml").write_text(params_yaml)
    _write_card(out_dir, record, license)
    return out_dir


def _write_card(out_dir: Path, record: dict[str, Any], license: str | None) -> None:
    """``out_dir/card.md`` (template ``generator_card.md.j2``), a Hugging Face model card: a YAML header (license,
    tags, the source dataset), what the generator is for and not for, how to sample it, its lineage, limitations."""
    import yaml

    started = record["origin"].get("from") or "scratch"
    rows = [("family", record["family"]), ("checkpoint (sha256)", record["checkpoint"]),
            ("classes", ", ".join(record["class_names"])), ("image shape (C, H, W)", record["image_shape"]),
            ("training steps (this run)", record["steps"]), ("started from", started),
            ("why", record["origin"].get("reason")),
            *((k if k == "source" else f"source {k}", v) for k, v in record["source"].items()),
            ("pipeline code", record["code_version"])]
    rows = [(k, v) for k, v in rows if v is not None]  # a value not recorded (e.g. no source repo) leaves its row out
    source = record["source"]
    where = source.get("source") if not source.get("repo") else f"{source['repo']}:{source.get('source')}"
    header = {"license": license or "unknown", "library_name": "pytorch",
              "tags": ["synthaug", "class-conditional", "image-generation", "synthetic-data", record["family"]],
              "datasets": [str(where or "not recorded")]}
    text = render("generator_card.md.j2", rows=rows, family=record["family"], classes=record["class_names"],
                  shape=record["image_shape"], header=yaml.safe_dump(header, sort_keys=False).rstrip("\n"))
    write_atomic(text, out_dir / "card.md")


# ---------------------------------------------------------------------------------------------------------------------
# sampling from a published generator


def parse_spec(spec: str) -> tuple[str, str]:
    """``<registry>@<tag>`` -> (registry, tag); the last ``@`` splits (ssh URLs hold one: ``git@host:org/repo``)."""
    registry, sep, tag = spec.rpartition("@")
    if not sep or not registry or "/" not in tag:
        raise UserError(f"--generator {spec!r}: expected <registry>@<dataset>-generator/v<N>, e.g. "
                        "registry/repo@digits-balanced-generator/v1")
    try:
        refuse_credentials(registry, "--generator: the registry")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return registry, tag


def sample_published(spec: str, out_dir: Path | str, *, count: int, params: GenerateParams | None = None,
                     classes: Sequence[str] | None = None) -> Path:
    """Fetch the generator ``spec`` (``<registry>@<tag>``) into ``out_dir/generator`` and sample ``count`` images of
    each class (all its classes by default) into ``out_dir``; returns ``out_dir/manifest.parquet``. ``params``: the
    ``generate`` section (seed, device, sampling knobs); None: its defaults.

    The seeds are the ones the pipeline gives the first ``count`` images of each class
    (``tasks.core.sampling.seeds_for`` with ``params.seed``), so the same seeds give the same bytes as the run that
    published the generator. The manifest's metadata names the generator version (``generator_version``: registry,
    tag, checkpoint).
    """
    if count < 1:
        raise UserError(f"--count {count}: ask for at least one image per class")
    out_dir, params = Path(out_dir), params if params is not None else GenerateParams()
    registry, tag = parse_spec(spec)
    fetched = out_dir / "generator"
    if fetched.exists():
        shutil.rmtree(fetched)
    fetch_generator(registry, tag, fetched)
    # The registry is untrusted: its class names become folders under out_dir, its config sizes the network.
    fix = f"this version of {registry} is damaged or was not made by synthaug; sample another version"
    meta = read_json_object(fetched / GENERATOR_FILE, fix=fix)
    known = check_class_names(meta.get("class_names"), fetched / GENERATOR_FILE, fix)
    if checked_checkpoint_meta(fetched / "checkpoint", fix)["class_names"] != known:
        raise UserError(f"{fetched / GENERATOR_FILE}: class_names differ from checkpoint/config.json's; {fix}")
    wanted = list(classes) if classes else known
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise UserError(f"--classes: {unknown} are not classes of {tag} (it knows {known})")
    requests = [Request(c, seeds_for(known.index(c), 0, count, params.seed)) for c in wanted]
    frame = generate(fetched / "checkpoint", requests, params, out_dir)
    from synthaug.models.training import checkpoint_hash

    version = {"registry": registry, "tag": tag, "checkpoint": checkpoint_hash(fetched / "checkpoint")}
    return write_manifest(frame, out_dir / "manifest.parquet", metadata={"generator_version": version})
