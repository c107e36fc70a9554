"""``python -m bench.privacy_null --workdir DIR [--releases 200] [--out FILE]``: the privacy gate's false refusal
rate on releases that cannot leak, because they are real images no model was trained on.

Each simulated release draws, per class, real held-out images (``val``, ``test``, ``heldback``: the gate's
non-members) in place of synthetic ones: as many as the class has real train images (the release's default size),
at most half of the class's held-out images, so the other half stays as the attack's non-members. The pipeline's
filter would reject any image within the memorization thresholds (``filter.memorization_quantile``, calibrated on the
val images not drawn); those are dropped, as the filter does. Then the gate's own ``audit`` runs on it with the
``privacy`` section's params: members are the real train images, non-members the held-out images not drawn.

Such a release is independent of the training images, so every membership attack is at chance: a refusal is a false
refusal. The gate states its level as ``1 - privacy.confidence`` per attack result (pooled, and per class
Bonferroni-corrected); the JSON reports the rate of refused releases with its 95% Clopper-Pearson interval, overall
and per failed check, so it can be compared with that level. A control release of the members themselves (the
worst leak: the training images) shows the gate refuses what it should.

DIR holds the ``ingest`` and ``judge`` steps' outputs (``make demo`` leaves them in ``data/work``); missing, they are
run there first with ``params.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from synthaug.flows.dag import step
from synthaug.flows.params import load_params
from synthaug.tasks.core.io.results import real_rows
from synthaug.tasks.core.params.privacy import PrivacyParams
from synthaug.tasks.core.privacy.record import ATTACKS, SPACES
from synthaug.tasks.core.scoring.features import load_judge_step
from synthaug.tasks.core.scoring.rules import memorization_thresholds
from synthaug.tasks.privacy import HOLDOUT_SPLITS, Records, attack_embedding, audit, closeness, load_records, subset


def real_sets(workdir: Path, extractor: str | None = None) -> dict[str, Records]:
    """The real ``train`` images (members) and every held-out image (``HOLDOUT_SPLITS``) in the gate's feature
    space, and which held-out rows are val images (the memorization thresholds' calibration):
    ``{"train": Records, "holdout": Records, "holdout_is_val": bool array}``."""
    judge, class_names = load_judge_step(workdir / "judge", device=torch.device("cpu"))
    real = real_rows(workdir / "ingest")
    real = real[real["label"].isin(class_names)]
    train = real[real["split"] == "train"]
    holdout = real[real["split"].isin(HOLDOUT_SPLITS)].reset_index(drop=True)
    return {"train": load_records(workdir / "ingest", train, judge, extractor),
            "holdout": load_records(workdir / "ingest", holdout, judge, extractor),
            "holdout_is_val": holdout["split"].eq("val").to_numpy()}


def draw_release(train: Records, holdout: Records, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``holdout`` released and rows kept as non-members: per class, as many as its train images, at most
    half of its held-out images (a class needs ``MIN_PER_CLASS`` non-members left to be audited)."""
    released, kept = [], []
    for c in np.unique(train.labels):
        rows = rng.permutation(np.flatnonzero(holdout.labels == c))
        n = min(int((train.labels == c).sum()), rows.size // 2)
        released.append(rows[:n])
        kept.append(rows[n:])
    return np.sort(np.concatenate(released)), np.sort(np.concatenate(kept))


def simulate(sets: dict[str, Any], params: PrivacyParams, filter_quantile: float, seed: int, *,
             control: bool = False, extractor: str | None = None) -> dict[str, Any]:
    """One release of held-out real images (``control``: of the train images themselves) through the filter's
    memorization rule and the gate's ``audit``: whether it passed and which checks failed."""
    train, holdout, is_val = sets["train"], sets["holdout"], sets["holdout_is_val"]
    rng = np.random.default_rng(seed)
    released, kept = draw_release(train, holdout, rng)
    calibration = subset(holdout, np.flatnonzero(is_val & ~np.isin(np.arange(len(holdout)), released)))
    release = train if control else subset(holdout, released)
    dropped = 0
    if not control:  # the filter's memorization rejection, as the pipeline applies it before the gate
        thresholds = memorization_thresholds(calibration.feats, train.feats, calibration.pixels, train.pixels,
                                             filter_quantile)
        near = closeness(release, train)
        memorized = thresholds.memorized(near["pixel"], near["feature"])
        dropped = int(memorized.sum())
        release = subset(release, np.flatnonzero(~memorized))
    run_params = params.model_copy(update={"seed": seed})
    embed_attack, space = attack_embedding(release, run_params, extractor, torch.device("cpu"))
    report, _ = audit(release, train, subset(holdout, kept), calibration, run_params, attack_embed=embed_attack,
                      attack_space=space)
    return {"seed": seed, "passed": report["passed"], "released": len(release), "dropped_by_filter": dropped,
            "failures": report["failures"],
            "aucs": {f"{k}/{s}": report[k][s]["auc"] for k in ATTACKS for s in SPACES}}


def failure_kind(line: str) -> str:
    """A failed check's line as its kind: ``memorization``, ``<attack> (<space>)`` pooled or ``..., class``."""
    head = line.split(":")[0]
    if head.startswith("memorization"):
        return "memorization"
    return head.split(", class")[0] + (" per class" if ", class" in head else " pooled")


def rate(refused: int, runs: int) -> dict[str, Any]:
    """Refused of runs with its 95% Clopper-Pearson interval."""
    ci = stats.binomtest(refused, runs).proportion_ci(0.95, method="exact")
    return {"refused": refused, "runs": runs, "rate": refused / runs, "ci95": [float(ci.low), float(ci.high)]}


def calibrate(sets: dict[str, Any], params: PrivacyParams, filter_quantile: float, releases: int, *,
              extractor: str | None = None, first_seed: int = 0) -> dict[str, Any]:
    """``releases`` simulated null releases (seeds from ``first_seed``) and ``max(3, releases // 20)`` member
    controls: the false refusal rate overall and per kind of failed check, and the control's refusal rate."""
    seeds = range(first_seed, first_seed + releases)
    runs = [simulate(sets, params, filter_quantile, s, extractor=extractor) for s in seeds]
    controls = [simulate(sets, params, filter_quantile, s, control=True, extractor=extractor)
                for s in seeds[:max(3, releases // 20)]]
    kinds = Counter(k for r in runs for k in {failure_kind(f) for f in r["failures"]})
    return {"false_refusal": rate(sum(not r["passed"] for r in runs), len(runs)),
            "stated_level": 1 - params.confidence,
            "by_check": {k: rate(n, len(runs)) for k, n in sorted(kinds.items())},
            "members_released_refused": rate(sum(not r["passed"] for r in controls), len(controls)),
            "train_per_class": dict(Counter(sets["train"].labels.tolist())),
            "median_released": float(np.median([r["released"] for r in runs])),
            "median_dropped_by_filter": float(np.median([r["dropped_by_filter"] for r in runs])),
            "runs": runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.privacy_null", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("data/work"))
    parser.add_argument("--releases", type=int, default=200)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seed of the first release: releases not drawn before, to check a choice made on others")
    parser.add_argument("-S", "--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out", type=Path, default=Path("bench/results/privacy_null.json"))
    args = parser.parse_args(argv)
    params = load_params(Path("params.yaml"), args.overrides)
    for name in ("fingerprint", "ingest", "judge"):
        if name == "fingerprint" or not (args.workdir / name).is_dir():
            step(name).run(params, args.workdir)
    start = time.perf_counter()
    sets = real_sets(args.workdir, params.filter.extractor)
    result = calibrate(sets, params.privacy, params.filter.memorization_quantile, args.releases,
                       extractor=params.filter.extractor, first_seed=args.first_seed)
    result["attack_features"] = params.privacy.attack_features
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "overrides": args.overrides,
              "first_seed": args.first_seed,
              "seconds": round(time.perf_counter() - start, 1), **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    fr = result["false_refusal"]
    print(f"false refusals: {fr['refused']} of {fr['runs']} = {fr['rate']:.3f} "
          f"[{fr['ci95'][0]:.3f}, {fr['ci95'][1]:.3f}] (stated level {result['stated_level']:.3f}); by check: "
          + ", ".join(f"{k} {v['refused']}" for k, v in result["by_check"].items())
          + f"; member controls refused {result['members_released_refused']['refused']} of "
            f"{result['members_released_refused']['runs']}", flush=True)


if __name__ == "__main__":
    main()
