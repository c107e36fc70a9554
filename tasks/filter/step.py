"""The ``filter`` step: score every synthetic image, reject with a reason, top up short classes, never silently.

Every synthetic image of ``generate/manifest.parquet`` gets these scores (float64 ``score_*`` manifest columns),
measured against the real **train** split in the judge's feature space (or ``filter.extractor``'s):

- ``score_confidence``: the judge's calibrated probability of the class the image was generated for.
- ``score_realism``: the realism score of Kynkäänniemi et al. 2019 against the real train images i *of the intended
  class*: max_i r_i / |f - f_i|, r_i being the distance from f_i to its ``realism_k``-th nearest neighbour within
  that class (k capped at the class size - 1; a class of one image uses that image's k-NN radius among all real
  images). It is >= 1 exactly when the image lies inside a real k-NN ball of its class (per-class precision's
  per-sample test). Class-conditional on purpose: the balls of sparse real images are wide, and with every class's
  balls in play a third of uniform-noise images landed inside one (digits, judge features); against its own class,
  none did. Capped at ``REALISM_CAP`` so an exact copy of a real image (inf) stays a finite number.
- ``score_nn_feature``: Euclidean feature distance to the nearest real train image.
- ``score_nn_pixel_corr``: the highest Pearson correlation of the pixels with any real train image (1 for a copy;
  blind to brightness and contrast changes).
- ``score_duplicate``: feature distance to the nearest *earlier kept* synthetic image of the same class (seed
  order; see below). NaN when there is none (the first kept image of a class), or for an unreadable image.

Each image gets the first failing ``reject_reason`` in this order (``accepted`` = no reason):

1. ``sanity``: unreadable or wrong-shaped file, non-finite values, values outside [-1, 1], or a constant image
   (``sanity_reason``; the detail is counted in ``filter_summary.json``).
2. ``label``: ``score_confidence < min_confidence``.
3. ``memorized_pixel``: ``score_nn_pixel_corr >=`` the pixel threshold; then ``memorized_feature``:
   ``score_nn_feature <=`` the feature threshold. Both thresholds come from real images the judge and the generator
   never trained on: the real **val** split's nearest distances to the train split (``memorization_thresholds``).
   A synthetic image nearer to a training image than all but ``memorization_quantile`` of real unseen images are
   is taken for a copy.
4. ``unrealistic``: ``score_realism < 1`` (outside every real k-NN ball of its class).
5. ``near_duplicate``: within ``duplicate_fraction`` x (median real train nearest-neighbour feature distance) of an
   earlier kept image of its class. Images that passed 1-4 are de-duplicated greedily in seed order
   (``models.metrics.pairwise_near_duplicates``): the lowest seed of a cluster stays, so a top-up never changes an
   earlier decision.
6. ``surplus``: accepted images beyond what the class needs (plan ``target - real``); the lowest seeds are kept.

Top-up: a class with fewer accepted images than it needs gets more, continuing its seed block after the largest
seed used (``tasks.core.sampling.seeds_for``). Each round asks for ``ceil(shortfall / rate)`` images, ``rate`` being the
class's observed acceptance rate so far (floored at ``MIN_ACCEPTANCE_RATE``), for at most ``topup_rounds`` rounds
and ``floor(topup_budget * to_generate)`` extra images per class. A class still short is printed as a warning and
recorded in ``FilterResult.shortfall`` and ``filter_summary.json``.

``out_dir`` is a self-contained dataset root: ``manifest.parquet`` (every synthetic row, accepted or not, with all
scores), ``images/<label>/<label>_s<seed>.png`` (hard links to the generate step's files, or copies where links
are impossible; top-up images are sampled straight into it) and ``filter_summary.json``. Re-running resumes: files
already there are neither linked nor sampled again (top-up images sampled with another checkpoint are dropped
first), and at the end images the manifest does not list are removed, so the folder is exactly the dataset.

Scale: scoring and top-up sampling run in shards (``tasks.core.io.shards``) wherever ``run_shards`` sends them. The real
reference (features float64, pixels as stored uint8, class radii) is saved once per run to ``out_dir/reference/``
and memory-mapped by each shard; each shard writes its scores and features to ``out_dir/shards/`` and is skipped
by a re-run once finished. The nearest searches read the reference a block at a time
(``models.metrics.nearest_distance_streamed`` / ``nearest_correlation_streamed``) on the filter's device.

Where the pieces live: the rules and thresholds ``tasks/core/scoring/rules.py``, the real reference
``tasks/filter/reference.py``, the scoring shards ``tasks/filter/scoring.py``; this module links, tops up and writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from synthaug.models.common import pick_device
from synthaug.models.training import checkpoint_hash, has_checkpoint, read_checkpoint_meta
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import file_sha256, link_or_copy, write_atomic
from synthaug.tasks.core.io.manifest import COLUMNS, read_manifest, read_manifests, write_manifest
from synthaug.tasks.core.io.plan_csv import read_plan
from synthaug.tasks.core.io.shards import SHARDS_DIR, RunShards, remove_stale, remove_temporaries, run_in_process
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.logs import get_logger
from synthaug.tasks.core.params.filter import FilterParams
from synthaug.tasks.core.params.generate import GenerateParams
from synthaug.tasks.core.params.runner import DEFAULT_SHARD_SIZE
from synthaug.tasks.core.sampling import SAMPLER_FILE, Request, generate_sharded, sampler_key, seeds_for
from synthaug.tasks.core.scoring.features import load_judge_step
from synthaug.tasks.core.scoring.rules import REJECT_REASONS, SCORE_COLUMNS, Thresholds, reject_reasons, topup_count
from synthaug.tasks.filter.reference import REFERENCE_DIR, build_reference, save_reference
from synthaug.tasks.filter.scoring import Scorer

SUMMARY_FILE = "filter_summary.json"
MANIFEST_FILE = "manifest.parquet"
STATE_FILE = ".topup-checkpoint"  # sha256 of the checkpoint the top-up images in out_dir were sampled with


@dataclass(frozen=True)
class FilterResult:
    manifest_path: Path
    summary_path: Path
    accepted: dict[str, int]
    needed: dict[str, int]
    shortfall: dict[str, int]  # classes still short after the top-up: label -> images missing
    generated: dict[str, int]
    rounds_used: int
    thresholds: Thresholds
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> reason -> count

    @property
    def met(self) -> bool:
        return not self.shortfall


# ------------------------------------------------------------------------------------------------------ files


def _link(src: Path, dst: Path, image_id: str) -> None:
    """Make ``dst`` hold ``src`` (a hard link, else a copy) unless it already holds the same image."""
    if not src.is_file():
        raise UserError(f"{src}: listed in the generate manifest but missing; rerun `synthaug generate`")
    if dst.exists():
        if os.path.samefile(src, dst) or file_sha256(dst) == image_id:
            return
        dst.unlink()
    link_or_copy(src, dst)


def _remove_unlisted(out_dir: Path, listed: set[str]) -> None:
    """Delete images under ``out_dir/images`` that the manifest does not list (left by earlier runs with other
    params or another checkpoint), so the folder is exactly the dataset the manifest describes."""
    images = out_dir / "images"
    for f in sorted(images.rglob("*")) if images.is_dir() else []:
        if f.is_file() and f.relative_to(out_dir).as_posix() not in listed:
            f.unlink()


def _prepare_topup_dir(out_dir: Path, key: str, linked: set[str]) -> None:
    """Drop top-up images sampled with another checkpoint or other sampling knobs (``sampler_key``): a resumed
    run must not mix models or samplers."""
    state = out_dir / STATE_FILE
    if state.is_file() and state.read_text().strip() != key:
        images = out_dir / "images"
        for f in sorted(images.rglob("*.png")) if images.is_dir() else []:
            if f.relative_to(out_dir).as_posix() not in linked:
                f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    state.write_text(key + "\n")


# ------------------------------------------------------------------------------------------------------- step


def filter_step(ingest_dir: Path, generate_dir: Path, judge_dir: Path, plan_csv: Path, checkpoint_dir: Path,
                params: FilterParams, generate_params: GenerateParams, out_dir: Path, *,
                shard_size: int = DEFAULT_SHARD_SIZE, run_shards: RunShards = run_in_process,
                console: Console | None = None) -> FilterResult:
    """Score, reject with reasons, top up short classes and write the filtered dataset into ``out_dir``.

    Args:
        ingest_dir: the ingest step's folder (``manifest.parquet`` with the real train and val splits).
        generate_dir: the generate step's folder (``manifest.parquet`` + images).
        judge_dir: the judge step's folder (``judge.pt`` + ``judge.json``).
        plan_csv: the plan: ``target - real`` is what each class needs, ``to_generate`` sizes the top-up budget.
        checkpoint_dir: the generator checkpoint the top-up samples from (read only when a class is short).
        params: the ``filter`` section.
        generate_params: the ``generate`` section (seed base, batch size, device of the top-up).
        out_dir: the filtered dataset root (``manifest.parquet``, ``images/``, ``filter_summary.json``), with the
            saved reference (``reference/``) and the shard tables (``shards/``) a re-run resumes from.
        shard_size: images per scoring or top-up shard.
        run_shards: where the shards run (``tasks.core.io.shards.RunShards``; in this process by default).
        console: where the table and warnings are printed (stderr by default).

    Raises:
        UserError: a missing input, synthetic labels the judge does not know, no real val split, or top-up images
            that would come from another checkpoint than the generate step's.
    """
    console = console or Console(stderr=True)
    judge, class_names = load_judge_step(judge_dir, device=pick_device(params.device))
    plan = read_plan(plan_csv)
    frame, _ = read_manifest(generate_dir / MANIFEST_FILE)
    frame = frame[frame["source"] == "synthetic"].reset_index(drop=True)
    unknown = sorted(set(frame["label"].astype(str)) - set(class_names), key=natural_key)
    if unknown:
        raise UserError(f"{generate_dir / MANIFEST_FILE}: labels {unknown} are not among the judge's classes "
                        f"{class_names}; rerun `synthaug judge` on the same ingest")
    if frame["seed"].isna().any():
        raise UserError(f"{generate_dir / MANIFEST_FILE}: synthetic rows without a seed")
    ref, thresholds = build_reference(ingest_dir / MANIFEST_FILE, judge, class_names, params)

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out_dir)
    scorer = Scorer(out_dir, out_dir / REFERENCE_DIR, save_reference(ref, out_dir / REFERENCE_DIR, judge_dir),
                     judge_dir, params.extractor, params.device, shard_size, run_shards)
    for row in frame.itertuples(index=False):
        _link(generate_dir / row.path, out_dir / row.path, row.image_id)
    linked = set(frame["path"])

    needed = {str(r["class"]): max(int(r["target"]) - int(r["real"]), 0) for _, r in plan.iterrows()}
    planned = {str(r["class"]): int(r["to_generate"]) for _, r in plan.iterrows()}
    budget = {c: math.floor(round(params.topup_budget * planned[c], 9)) for c in planned}
    scores, feats, tables = scorer(frame, "score")
    frame = pd.concat([frame, scores], axis=1)
    topup: Counter[str] = Counter()
    rounds, digest, gen_classes = 0, None, None
    log: list[dict[str, Any]] = []  # per top-up round: what each class asked for and why
    while True:
        reasons, _ = reject_reasons(frame, feats, thresholds)
        accepted = Counter(frame["label"].to_numpy()[np.array([r is None for r in reasons], dtype=bool)])
        generated = Counter(frame["label"].astype(str))
        asks = {c: topup_count(needed[c] - accepted[c], accepted[c], generated[c], budget[c] - topup[c])
                for c in needed}
        asks = {c: n for c, n in asks.items() if n > 0}
        if rounds >= params.topup_rounds or not asks:
            break
        if digest is None:
            digest, gen_classes = _topup_source(checkpoint_dir, frame)
            key = sampler_key(checkpoint_dir, generate_params)
            same_sampler(generate_dir, key)
            _prepare_topup_dir(out_dir, key, linked)
        requests = []
        for c, n in asks.items():
            if c not in gen_classes:
                raise UserError(f"{checkpoint_dir}: the generator was not trained on class {c!r}; retrain it")
            first = seeds_for(gen_classes.index(c), 0, 1, generate_params.seed)[0]
            used = frame["seed"][frame["label"] == c]
            start = max(int(used.max()) - first + 1, 0) if len(used) else 0
            requests.append(Request(c, seeds_for(gen_classes.index(c), start, n, generate_params.seed)))
            topup[c] += n
        rounds += 1
        log.append({"round": rounds, "classes": {r.label: {
            "asked": len(r.seeds), "seeds": [r.seeds[0], r.seeds[-1]], "accepted_before": accepted[r.label],
            "generated_before": generated[r.label], "needed": needed[r.label]} for r in requests}})
        console.print(f"filter: top-up round {rounds}: " + ", ".join(f"{r.label}: {len(r.seeds)}" for r in requests))
        made = generate_sharded(checkpoint_dir, [(r.label, s) for r in requests for s in r.seeds], generate_params,
                                out_dir, sampler=key, prefix=f"topup{rounds}", shard_size=shard_size,
                                run_shards=run_shards)
        new = read_manifests(made)
        new_scores, new_feats, scored = scorer(new, f"score-topup{rounds}")
        tables += made + scored
        frame = pd.concat([frame, pd.concat([new, new_scores], axis=1)], ignore_index=True)
        feats = torch.cat([feats, new_feats])

    remove_stale(out_dir / SHARDS_DIR, "*", tables)
    reasons, duplicate = reject_reasons(frame, feats, thresholds)
    frame["score_duplicate"] = duplicate
    frame["reject_reason"] = pd.Series(reasons, dtype=object)
    rate_accepted = Counter(frame["label"][frame["reject_reason"].isna()].astype(str))
    _mark_surplus(frame, needed)
    frame["accepted"] = frame["reject_reason"].isna()
    order = sorted(range(len(frame)), key=lambda i: (natural_key(str(frame["label"].iloc[i])),
                                                     int(frame["seed"].iloc[i])))
    frame = frame.iloc[order].reset_index(drop=True)

    summary = _summary(frame, plan, needed, planned, budget, topup, rate_accepted, log, params, thresholds)
    metadata = {"thresholds": summary["thresholds"], "feature_space": summary["feature_space"],
                "rounds_used": rounds, "judge_temperature": float(judge.temperature)}
    manifest_path = write_manifest(frame[[*COLUMNS, *SCORE_COLUMNS]], out_dir / MANIFEST_FILE, metadata=metadata)
    _remove_unlisted(out_dir, set(frame["path"]))
    summary_path = out_dir / SUMMARY_FILE
    write_atomic(json.dumps(summary, indent=2), summary_path)

    classes = summary["classes"]
    console.print(summary_table(summary, title=f"filter: {manifest_path}"))
    short = summary["totals"]["shortfall"] or not summary["totals"]["accepted"]  # a warning in the run's log
    get_logger("filter").log(logging.WARNING if short else logging.INFO, summary_line(summary))
    shortfall = {c: v["shortfall"] for c, v in classes.items() if v["shortfall"] > 0}
    for c, n in shortfall.items():
        v = classes[c]
        rate = "n/a" if v["acceptance_rate"] is None else f"{v['acceptance_rate']:.2f}"
        console.print(Text(f"warning: class {c!r} is {n} short of the {v['needed']} synthetic images it needs "
                           f"({v['generated']} generated, {v['generated_topup']} of them by {rounds} top-up "
                           f"round(s) of at most {params.topup_rounds}, top-up budget {v['topup_budget']}; "
                           f"acceptance rate {rate}); see {summary_path}", style="yellow"))
    return FilterResult(manifest_path=manifest_path, summary_path=summary_path,
                        accepted={c: v["accepted"] for c, v in classes.items()},
                        needed={c: v["needed"] for c, v in classes.items()}, shortfall=shortfall,
                        generated={c: v["generated"] for c, v in classes.items()}, rounds_used=rounds,
                        thresholds=thresholds, rejected={c: v["rejected"] for c, v in classes.items()})


def _topup_source(checkpoint_dir: Path, frame: pd.DataFrame) -> tuple[str, list[str]]:
    """The checkpoint's hash and class order; its images must come from the same model as the generate step's."""
    if not has_checkpoint(checkpoint_dir):
        raise UserError(f"{checkpoint_dir}: no generator checkpoint to top up from; run `synthaug train`, or set "
                        "filter.topup_rounds=0")
    digest = checkpoint_hash(checkpoint_dir)
    others = sorted(set(frame["checkpoint"].dropna()) - {digest})
    if others:
        raise UserError(f"{checkpoint_dir}: checkpoint {digest[:12]} differs from the one the generate step used "
                        f"({', '.join(o[:12] for o in others)}); rerun `synthaug generate` first")
    return digest, [str(c) for c in read_checkpoint_meta(checkpoint_dir)["class_names"]]


def same_sampler(generate_dir: Path, key: str) -> None:
    """Top-ups must sample as the generate step did (same ``generate.guidance_scale`` / ``sample_steps``)."""
    state = generate_dir / SAMPLER_FILE
    if state.is_file() and state.read_text().strip() != key:
        raise UserError(f"{generate_dir}: its images were sampled with other generate params (sampling knobs) than "
                        "this filter run's; its top-ups would mix samplers. Run `synthaug generate` with the same "
                        "params first")


def _mark_surplus(frame: pd.DataFrame, needed: dict[str, int]) -> None:
    """Accepted images beyond a class's need become ``surplus``; the lowest seeds stay."""
    for label in pd.unique(frame["label"]):
        ok = frame.index[(frame["label"] == label) & frame["reject_reason"].isna()]
        ok = ok[np.argsort(frame.loc[ok, "seed"].to_numpy(dtype=np.int64), kind="stable")]
        frame.loc[ok[needed.get(str(label), 0):], "reject_reason"] = "surplus"


def _summary(frame: pd.DataFrame, plan: pd.DataFrame, needed: dict[str, int], planned: dict[str, int],
             budget: dict[str, int], topup: Counter[str], rate_accepted: Counter[str], log: list[dict[str, Any]],
             params: FilterParams, t: Thresholds) -> dict[str, Any]:
    labels = sorted(set(needed) | set(frame["label"].astype(str)), key=natural_key)
    real = {str(r["class"]): int(r["real"]) for _, r in plan.iterrows()}
    target = {str(r["class"]): int(r["target"]) for _, r in plan.iterrows()}
    classes: dict[str, Any] = {}
    for c in labels:
        rows = frame[frame["label"] == c]
        accepted = int(rows["accepted"].sum())
        reasons = Counter(rows["reject_reason"].dropna())
        classes[c] = {
            "real": real.get(c, 0), "target": target.get(c, 0), "planned": planned.get(c, 0),
            "needed": needed.get(c, 0), "generated": len(rows), "generated_topup": topup[c],
            "topup_budget": budget.get(c, 0), "accepted": accepted, "rejected": {r: reasons[r] for r in REJECT_REASONS},
            "sanity": dict(Counter(rows["sanity"].dropna())),
            "acceptance_rate": round(rate_accepted[c] / len(rows), 6) if len(rows) else None,
            "shortfall": max(needed.get(c, 0) - accepted, 0),
        }
        classes[c]["met"] = classes[c]["shortfall"] == 0
    total = {k: sum(v[k] for v in classes.values()) for k in ("needed", "generated", "generated_topup", "accepted",
                                                               "shortfall")}
    return {
        "met": all(v["met"] for v in classes.values()),
        "shortfall": {c: v["shortfall"] for c, v in classes.items() if v["shortfall"]},
        "rounds_used": len(log),
        "rounds": log,
        "totals": total,
        "classes": classes,
        "thresholds": {
            "min_confidence": t.min_confidence,
            "memorization_feature_distance": t.memorization.feature_distance,
            "memorization_pixel_correlation": t.memorization.pixel_correlation,
            "memorization_quantile": t.memorization.quantile,
            "memorization_holdout_images": t.memorization.n_holdout,
            "realism_k": t.realism_k,
            "realism_balls": "class-conditional",
            "duplicate_distance": t.duplicate_distance,
            "median_real_nn_distance": t.median_real_nn_distance,
        },
        "feature_space": params.extractor or "judge",
        "params": params.model_dump(mode="json"),
    }


_SHORT = {"memorized_pixel": "mem px", "memorized_feature": "mem ft", "unrealistic": "unreal",
          "near_duplicate": "dup"}


def summary_table(summary: dict[str, Any], title: str | None = None) -> Table:
    """``filter_summary.json`` as a rich table: one row per class and a totals row; reject reasons that occur
    get a column each (``mem px``/``mem ft``: memorized in pixel/feature space, ``dup``: near-duplicate)."""
    table = Table(title=Text(title) if title else None, show_footer=True)
    classes = summary["classes"]
    shown = [r for r in REJECT_REASONS if any(v["rejected"][r] for v in classes.values())]
    table.add_column("class", footer="total")
    for name, key in (("need", "needed"), ("made", "generated"), ("top-up", "generated_topup"),
                      ("kept", "accepted"), ("short", "shortfall")):
        table.add_column(name, justify="right", footer=str(summary["totals"][key]))
    table.add_column("rate", justify="right")
    for r in shown:
        table.add_column(_SHORT.get(r, r), justify="right", footer=str(sum(v["rejected"][r] for v in classes.values())))
    for c, v in classes.items():
        rate = "-" if v["acceptance_rate"] is None else f"{v['acceptance_rate']:.2f}"
        short = Text(str(v["shortfall"]), style="bold yellow" if v["shortfall"] else "")
        table.add_row(Text(c), str(v["needed"]), str(v["generated"]), str(v["generated_topup"]),
                      str(v["accepted"]), short, rate, *(str(v["rejected"][r]) for r in shown))
    return table


def summary_line(summary: Mapping[str, Any]) -> str:
    """``filter_summary.json`` in one log line: accepted of generated, rejections by reason, shortfall."""
    totals, classes = summary["totals"], summary["classes"].values()
    reasons: Counter[str] = Counter()
    for c in classes:
        reasons.update(c["rejected"])
    rejected = ", ".join(f"{reason} {n}" for reason, n in reasons.items() if n) or "none"
    return (f"filter: accepted {totals['accepted']} of {totals['generated']} generated "
            f"({totals['generated_topup']} by top-up; {totals['needed']} needed, shortfall {totals['shortfall']}); "
            f"rejected: {rejected}")
