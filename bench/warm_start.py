"""How many steps does a warm start need? ``python -m bench.warm_start [--family vae] [--quick]``.

The bundled example at two source revisions:

- revision 1: the example as ``tasks.ingest`` gives it (6 train images of each scarce class 3, 5, 8);
- revision 2: revision 1 plus ``EXTRA`` more train images of each scarce class (the first ``EXTRA`` of its
  ``heldback`` images, in manifest order): the "new images of the scarce classes landed" case.

1. Generator G1: the family's default config, from scratch on revision 1 (seed 0), as the published version.
2. From scratch on revision 2: the same config and seed, ``steps`` steps; judged at ``SCRATCH_POINTS`` of them.
3. Warm start on revision 2: G1's weights and optimizer state (``models.training.load_checkpoint`` with the step
   count overridden, as ``tasks.train`` does for ``model.init_from``), ``steps / 3`` steps; judged at
   ``WARM_POINTS`` (fractions of the from-scratch ``steps``).
4. Judge accuracy at each point: ``per_class`` samples of every class (seeds 0..per_class-1, 8-bit like the PNGs),
   labelled by the reference classifier of ``bench.quality`` (trained on real train + val + heldback).
5. Utility at each warm-start point and at the from-scratch run's last step (the target), on the **validation**
   split (10 per class): the evaluate step's classifier recipe
   (``tasks.core.evaluation.downstream.DEFAULT_CLASSIFIER``, seeds 0..2) trained on revision 2's real train images plus
   synthetic images of the scarce classes up to the median train count of the other classes (seeds from 100000);
   balanced accuracy, mean over seeds. The **test** split is read once, at the end, for three conditions: real only,
   real + the from-scratch model's final samples, real + the warm start's final samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.quality import Split, accuracy, as_stored, load_example
from bench.speed import machine_info
from synthaug.models.config import JudgeConfig
from synthaug.models.families import get_family
from synthaug.models.judge import train_judge
from synthaug.models.training import fit, load_checkpoint, save_checkpoint
from synthaug.tasks.core.params.evaluate import DEFAULT_CLASSIFIER
from synthaug.tasks.core.sources.example import SCARCE_CLASSES

EXTRA = 12  # new train images per scarce class in revision 2
SCRATCH_POINTS = (0.05, 0.1, 1 / 6, 0.25, 1 / 3, 0.5, 2 / 3, 1.0)
WARM_POINTS = (0.025, 0.05, 0.1, 1 / 6, 0.25, 1 / 3)
UTILITY_SEEDS = (0, 1, 2)
SYNTH_SEED = 100_000
RESULTS = Path(__file__).resolve().parent / "results"


def revision_2(splits: dict[str, Split], class_names: list[str]) -> Split:
    """Revision 1's train split plus the first ``EXTRA`` heldback images of each scarce class."""
    x, y = splits["train"]
    hx, hy = splits["heldback"]
    extra = torch.cat([torch.nonzero(hy == class_names.index(c)).flatten()[:EXTRA] for c in SCARCE_CLASSES])
    return torch.cat([x, hx[extra]]), torch.cat([y, hy[extra]])


def balanced_accuracy(predicted: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    return torch.stack([(predicted[labels == c] == c).float().mean() for c in range(k)]).mean().item()


def synthetic_fill(model: Any, train: Split, class_names: list[str]) -> Split:
    """Synthetic images of the scarce classes, each up to the median train count of the other classes."""
    counts = torch.bincount(train[1], minlength=len(class_names))
    ordinary = [counts[i] for i, c in enumerate(class_names) if c not in SCARCE_CLASSES]
    target = int(torch.stack(ordinary).median())
    labels = torch.cat([torch.full((target - int(counts[class_names.index(c)]),), class_names.index(c))
                        for c in SCARCE_CLASSES])
    seeds = [SYNTH_SEED + i for i in range(len(labels))]
    return as_stored(model.sample(labels, seeds)), labels


def utility(train: Split, synthetic: Split | None, held_out: Split, k: int, config: JudgeConfig) -> float:
    """Mean balanced accuracy over ``UTILITY_SEEDS`` of the classifier recipe on ``held_out``."""
    x, y = train if synthetic is None else (torch.cat([train[0], synthetic[0]]), torch.cat([train[1], synthetic[1]]))
    scores = []
    for seed in UTILITY_SEEDS:
        clf = train_judge(x, y, num_classes=k, config=dataclasses.replace(config, seed=seed), device="cpu")
        scores.append(balanced_accuracy(clf.predict_logits(held_out[0]).argmax(dim=1), held_out[1], k))
    return sum(scores) / len(scores)


def judged_run(model: Any, train: Split, class_names: list[str], judge: Any, val: Split, *, points: list[int],
               utility_points: list[int], per_class: int, classifier: JudgeConfig,
               label: str) -> list[dict[str, Any]]:
    """Train ``model`` to its config's steps; at each of ``points`` judge its samples, and at ``utility_points``
    measure val utility too."""
    k = len(class_names)
    labels = torch.arange(k).repeat_interleave(per_class)
    seeds = list(range(per_class)) * k
    curve: list[dict[str, Any]] = []
    start = time.perf_counter()

    def on_step(step: int, losses: dict[str, float]) -> None:
        if step not in points:
            return
        train_s = time.perf_counter() - start
        predicted = judge.predict_logits(as_stored(model.sample(labels, seeds))).argmax(dim=1)
        row = {"step": step, "train_seconds_so_far": round(train_s, 1), **accuracy(predicted, labels, class_names),
               "val_utility": (utility(train, synthetic_fill(model, train, class_names), val, k, classifier)
                               if step in utility_points else None)}
        curve.append(row)
        print(f"  {label} step {step}: judge accuracy {row['accuracy']:.4f}, val utility {row['val_utility']}",
              flush=True)

    fit(model, train[0], train[1], seed=0, class_names=class_names, on_step=on_step)
    return curve


def first_reaching(curve: list[dict[str, Any]], key: str, target: float) -> int | None:
    return next((row["step"] for row in curve if row[key] is not None and row[key] >= target), None)


def run(family_name: str, *, quick: bool, out: Path) -> dict[str, Any]:
    family = get_family(family_name)
    base = family.Config() if not quick else dataclasses.replace(family.Config(), steps=30)
    steps = base.steps
    per_class = 8 if quick else 50
    judge_config = JudgeConfig(steps=50) if quick else JudgeConfig()
    classifier = dataclasses.replace(DEFAULT_CLASSIFIER, steps=30) if quick else DEFAULT_CLASSIFIER
    with tempfile.TemporaryDirectory(prefix="synthaug-bench-") as tmp:
        splits, class_names = load_example(Path(tmp))
    k = len(class_names)
    seen = [splits[s] for s in ("train", "val", "heldback")]
    judge = train_judge(torch.cat([s[0] for s in seen]), torch.cat([s[1] for s in seen]), num_classes=k,
                        config=judge_config, device="cpu")
    rev1, rev2 = splits["train"], revision_2(splits, class_names)
    shape = tuple(rev1[0].shape[1:])
    record: dict[str, Any] = {"benchmark": "warm_start", "family": family_name, "quick": quick, "steps": steps,
                              "config": dataclasses.asdict(base), "extra_per_scarce_class": EXTRA,
                              "train_images": {"rev1": len(rev1[1]), "rev2": len(rev2[1])},
                              "machine": machine_info(torch.device("cpu")),
                              "started": datetime.now(UTC).isoformat()}

    def new_model(config: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return family(config, image_shape=shape, num_classes=k, device=torch.device("cpu"))

    with tempfile.TemporaryDirectory(prefix="synthaug-warm-") as tmp:
        g1 = new_model(base)
        t0 = time.perf_counter()
        fit(g1, rev1[0], rev1[1], seed=0, class_names=class_names)
        record["g1_train_seconds"] = round(time.perf_counter() - t0, 1)
        save_checkpoint(g1, Path(tmp), step=steps, class_names=class_names)

        scratch_model = new_model(base)
        scratch = judged_run(scratch_model, rev2, class_names, judge, splits["val"],
                             points=sorted({max(1, round(f * steps)) for f in SCRATCH_POINTS}), utility_points=[steps],
                             per_class=per_class, classifier=classifier, label="scratch")
        warm_steps = max(1, round(steps / 3))
        warm_model, _, _ = load_checkpoint(Path(tmp), torch.device("cpu"),
                                           config_override=dataclasses.replace(base, steps=warm_steps))
        warm_points = sorted({max(1, round(f * steps)) for f in WARM_POINTS})
        warm = judged_run(warm_model, rev2, class_names, judge, splits["val"], points=warm_points,
                          utility_points=warm_points, per_class=per_class, classifier=classifier, label="warm")
    target_acc, target_util = scratch[-1]["accuracy"], scratch[-1]["val_utility"]
    record.update({
        "scratch": scratch, "warm": warm,
        "target": {"judge_accuracy": target_acc, "val_utility": target_util},
        "steps_to_reach": {
            "warm_judge_accuracy": first_reaching(warm, "accuracy", target_acc),
            "warm_val_utility": first_reaching(warm, "val_utility", target_util),
            "scratch_judge_accuracy": first_reaching(scratch, "accuracy", target_acc),
            "scratch_val_utility": None},  # measured at the last step only (the target)
        "test_utility": {  # the test split, read once
            "real_only": utility(rev2, None, splits["test"], k, classifier),
            "real_plus_scratch": utility(rev2, synthetic_fill(scratch_model, rev2, class_names), splits["test"], k,
                                         classifier),
            "real_plus_warm": utility(rev2, synthetic_fill(warm_model, rev2, class_names), splits["test"], k,
                                      classifier)},
        "finished": datetime.now(UTC).isoformat(), "machine_after": machine_info(torch.device("cpu"))})
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if quick else "")
    path = out / f"warm-start-{family_name}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("target", "steps_to_reach", "test_utility")}, indent=2))
    print(f"results: {path}")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.warm_start", description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="vae")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps, numbers meaningless")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.family, quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
