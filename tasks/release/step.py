"""Assemble the dataset a version publishes (README "Published datasets") from the steps' outputs.

``assemble`` (the ``augment`` flow): the real images the source gave for training and evaluation
(``train``/``val``/``test``; images a source held back stay out) and the accepted synthetic images, all under
``images/<label>/``, with one manifest, the metrics, the report, the resolved params and a card naming the lineage.

``assemble_anonymized`` (the ``anonymize`` flow): the accepted synthetic images only, and only after the privacy
gate passed for exactly this filter result. No real image, no real path: the manifest lists synthetic rows without
the scores measured against real images, the report embeds no real (or rejected) image, and the released
``params.yaml`` and card withhold the source location.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import yaml

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.manifest import COLUMNS, read_manifest, write_manifest
from synthaug.tasks.core.io.results import synthetic_rows
from synthaug.tasks.core.params.privacy import PrivacyParams
from synthaug.tasks.core.privacy.dp import card_section as dp_card_section
from synthaug.tasks.core.privacy.record import DCR_PLOT, PRIVACY_FILE, card_section, read_privacy
from synthaug.tasks.core.privacy.tstr import ReleaseUtilityError, check_ratio, release_utility
from synthaug.tasks.core.privacy.tstr import card_section as tstr_card_section
from synthaug.tasks.core.publishing.card import write_card
from synthaug.tasks.core.publishing.public import public_params_yaml
from synthaug.tasks.core.publishing.registry import code_version
from synthaug.tasks.core.render import run_info, write_run
from synthaug.tasks.release.export import export_images

# Scores an anonymized release keeps: the others are measured against real images (nearest training image, real
# k-NN balls) and say something about records that are not released.
RELEASED_SCORES = ("score_confidence", "score_duplicate")
WITHHELD = "withheld (anonymized release)"
# Params that hold a path or URL: the source, a checkpoint to fine-tune from, a feature extractor, the registry.
WITHHELD_PARAMS = ("data.source", "data.repo", "model.init_from", "filter.extractor", "publish.registry",
                   "publish.remote")


def assemble_anonymized(ingest_dir: Path, filter_dir: Path, evaluate_dir: Path, privacy_dir: Path, params_yaml: str,
                        params: PrivacyParams, out_dir: Path, *, name: str | None = None,
                        license: str | None = None) -> Path:
    """Build the synthetic-only release in ``out_dir`` from scratch (its ``report.html`` is the report step's,
    written next by the ``release`` step in ``flows/dag.py`` with ``privacy_dir=out_dir`` and this run record).

    Refuses (``UserError``) unless ``privacy_dir/privacy.json`` passed for the filter manifest now in
    ``filter_dir``, and (a second lock) when an accepted synthetic file is byte-identical to a real one; refuses
    (``ReleaseUtilityError``) when TSTR / TRTR (``tasks.core.privacy.tstr``) is below ``privacy.min_tstr_ratio``. The
    released ``privacy.json`` and ``metrics.json`` carry TSTR vs TRTR (``utility``, ``release_utility``). ``license``:
    the card's license id (None: unknown).
    """
    privacy = read_privacy(privacy_dir, filter_dir)
    real, lineage = read_manifest(ingest_dir / "manifest.parquet")
    synthetic = synthetic_rows(filter_dir)
    generators = synthetic["generator"]
    synthetic = synthetic[synthetic["accepted"].astype(bool)]
    copies = sorted(set(synthetic["image_id"]) & set(real["image_id"]))
    if copies:
        raise UserError(f"{filter_dir / 'manifest.parquet'}: {len(copies)} accepted synthetic images are copies of "
                        f"real images (e.g. image_id {copies[0][:12]}); nothing is released")
    metrics = json.loads((evaluate_dir / "metrics.json").read_text())
    utility = release_utility(metrics["utility"], confidence=params.confidence)
    too_low = check_ratio(utility, params.min_tstr_ratio)
    if too_low:
        raise ReleaseUtilityError(f"{evaluate_dir / 'metrics.json'}: {too_low}; nothing was published")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    rows = export_images(filter_dir, synthetic[[*COLUMNS, *RELEASED_SCORES]].reset_index(drop=True),
                          params.release_format, out_dir, intensity=lineage.get("intensity"))
    source = {k: lineage[k] for k in ("content_hash", "resolved_rev") if lineage.get(k) is not None}
    source["location"] = WITHHELD
    metadata = {"release": "synthetic only (anonymized)", "format": params.release_format, **source,
                "intensity": lineage.get("intensity"), "privacy_passed": True}
    write_manifest(rows, out_dir / "manifest.parquet", metadata=metadata)
    metrics["release_utility"] = utility
    privacy = {**privacy, "utility": utility}
    # Local paths (the judge's folder, a feature extractor's file) can name a site or a study: withheld. The
    # released privacy.json is the one the card below and the report show.
    metrics["feature_space"] = {**metrics.get("feature_space", {}), "judge_dir": WITHHELD}
    if metrics["feature_space"].get("extractor") != "judge penultimate features":
        metrics["feature_space"]["extractor"] = WITHHELD
    if privacy.get("feature_space") != "judge":
        privacy = {**privacy, "feature_space": WITHHELD}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / PRIVACY_FILE).write_text(json.dumps(privacy, indent=2))
    shutil.copyfile(privacy_dir / DCR_PLOT, out_dir / DCR_PLOT)
    run = dataclasses.replace(run_info(lineage, generators, dataset=name, code_version=code_version()),
                              source=WITHHELD, source_repo=WITHHELD, source_rev=lineage.get("resolved_rev"))
    write_run(out_dir, run)
    released_params = withhold_source(public_params_yaml(params_yaml))
    (out_dir / "params.yaml").write_text(released_params)
    checkpoints = sorted(set(synthetic["checkpoint"].dropna()))
    write_card(out_dir, source=source, params_yaml=released_params, code_version=code_version(),
               checkpoint=", ".join(checkpoints) or None, metrics=metrics, run=run, synthetic_only=True,
               license=license,
               summary="Synthetic images only: an anonymized release of class-conditional synthetic images made by "
                       "the synthaug pipeline, published after its privacy gate passed. Every image is listed in "
                       "`manifest.parquet` with its label, generator, checkpoint and seed.",
               sections=[("Utility of the release (TSTR vs TRTR)", tstr_card_section(utility)),
                         ("Privacy", card_section(privacy)),
                         ("Differential privacy", dp_card_section(privacy["dp"]))])
    return out_dir


def withhold_source(params_yaml: str) -> str:
    """The resolved params with every location replaced (``WITHHELD_PARAMS``): a path or URL can name a hospital, a
    study or a patient."""
    params = yaml.safe_load(params_yaml)
    for dotted in WITHHELD_PARAMS:
        *parents, key = dotted.split(".")
        node = params
        for part in parents:
            node = node.get(part) or {}
        if node.get(key) is not None:
            node[key] = WITHHELD
    return yaml.safe_dump(params, sort_keys=False)
