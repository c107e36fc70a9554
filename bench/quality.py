"""Are generated images recognizably their class? Each family, default config, trained on the bundled example.

1. The example (``tasks.core.sources.example``) goes through ``tasks.ingest.ingest`` with the default ``DataParams``:
   the 8x8 scans at their own size (resized to 16x16 before 2026-12-07, as in docs/BENCHMARKS.md's records), 8-bit PNGs,
   the example's splits (train has 6 images of each scarce class 3, 5, 8).
2. A reference classifier (``models.judge.train_judge``, default ``JudgeConfig``) is trained on every real image
   except the test split (train + val + heldback), so it knows all ten digits well; its accuracy on the real test
   split is reported as the reference.
3. Each family is trained with its default config by ``models.training.fit`` on the real train split only (seed 0,
   timed), then samples ``per_class`` images of every class (seeds 0..per_class-1), stored as 8-bit pixels like the
   pipeline's PNGs. The reference classifier labels them: accuracy overall and per class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.speed import machine_info, markdown_table
from synthaug.models.config import JudgeConfig
from synthaug.models.families import get_family
from synthaug.models.judge import train_judge
from synthaug.models.training import fit
from synthaug.tasks.core.io.images import load_images, save_grid, to_uint8
from synthaug.tasks.core.io.manifest import read_manifest
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.ingest import ingest

Split = tuple[torch.Tensor, torch.Tensor]


def load_example(workdir: Path) -> tuple[dict[str, Split], list[str]]:
    """Images and label indices of every split of the ingested example, and the class names in index order."""
    result = ingest(DataParams(), workdir / "ingest", cache_dir=workdir / "cache")
    frame, _ = read_manifest(result.manifest_path)
    real = frame[frame["source"] == "real"]
    class_names = sorted({str(v) for v in real["label"]}, key=natural_key)
    index = {name: i for i, name in enumerate(class_names)}
    splits = {}
    for split, rows in real.groupby("split"):
        images = load_images(result.manifest_path.parent, list(rows["path"]), int(rows["channels"].iloc[0]))
        splits[str(split)] = images, torch.tensor([index[str(v)] for v in rows["label"]])
    return splits, class_names


def accuracy(predicted: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Overall accuracy and accuracy per class (keyed by class name)."""
    hit = (predicted == labels).float()
    return {"accuracy": hit.mean().item(),
            "per_class": {name: hit[labels == k].mean().item() for k, name in enumerate(class_names)}}


def as_stored(images: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit pixels and back, as writing and reading a PNG does in the pipeline."""
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def evaluate_family(name: str, splits: dict[str, Split], class_names: list[str], judge: Any, *, per_class: int,
                    steps: int | None, out_dir: Path) -> dict[str, Any]:
    """Train ``name`` (default config; ``steps`` overrides only for smoke runs) on train, sample, label, time."""
    family = get_family(name)
    config = family.Config() if steps is None else dataclasses.replace(family.Config(), steps=steps)
    x, y = splits["train"]
    device = torch.device("cpu")
    source = Path(inspect.getfile(family))
    record: dict[str, Any] = {"family": name, "steps": config.steps, "batch_size": config.batch_size,
                              "config": dataclasses.asdict(config), "source_file": source.name,
                              "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = family(config, image_shape=tuple(x.shape[1:]), num_classes=len(class_names), device=device)
    last: dict[str, float] = {}

    def on_step(step: int, losses: dict[str, float]) -> None:
        last.update(losses)
        if step % max(1, config.steps // 10) == 0:
            print(f"  {name} step {step}/{config.steps} {time.perf_counter() - start:.0f}s "
                  + " ".join(f"{k}={v:.4f}" for k, v in losses.items()), flush=True)

    start, cpu_start = time.perf_counter(), time.process_time()
    fit(model, x.to(device), y.to(device), seed=0, class_names=class_names, on_step=on_step)
    record["train_seconds"] = time.perf_counter() - start
    # CPU seconds of all threads: on a shared machine wall time grows with the load, this much less.
    record["train_cpu_seconds"] = time.process_time() - cpu_start
    record["final_losses"] = dict(last)

    labels = torch.arange(len(class_names)).repeat_interleave(per_class)
    seeds = list(range(per_class)) * len(class_names)
    start = time.perf_counter()
    samples = as_stored(model.sample(labels, seeds))
    record["sample_seconds"] = time.perf_counter() - start
    record["images_per_class"] = per_class
    predicted = judge.predict_logits(samples).argmax(dim=1)
    record.update(accuracy(predicted, labels, class_names))
    save_grid(samples, per_class, out_dir / f"quality-samples-{name}.png")
    return record


def run(families: list[str], *, quick: bool, out_dir: Path, save: Any) -> dict[str, Any]:
    """The quality benchmark on the CPU; ``save(record)`` is called after every family (partial results survive)."""
    device = torch.device("cpu")
    per_class, steps = (8, 20) if quick else (50, None)
    judge_config = JudgeConfig(steps=50) if quick else JudgeConfig()
    with tempfile.TemporaryDirectory(prefix="synthaug-bench-") as tmp:
        splits, class_names = load_example(Path(tmp))
    seen = [splits[s] for s in ("train", "val", "heldback")]
    start, cpu_start = time.perf_counter(), time.process_time()
    judge = train_judge(torch.cat([s[0] for s in seen]), torch.cat([s[1] for s in seen]),
                        num_classes=len(class_names), config=judge_config, device=device)
    test_x, test_y = splits["test"]
    record: dict[str, Any] = {
        "benchmark": "quality", "machine": machine_info(device), "quick": quick, "class_names": class_names,
        "split_sizes": {s: int(v[1].shape[0]) for s, v in splits.items()},
        "train_counts": {class_names[k]: int(c) for k, c in enumerate(torch.bincount(splits["train"][1]))},
        "judge": {"trained_on": "train + val + heldback (real)", "images": sum(int(s[1].shape[0]) for s in seen),
                  "config": dataclasses.asdict(judge_config), "train_seconds": time.perf_counter() - start,
                  "train_cpu_seconds": time.process_time() - cpu_start,
                  "test": accuracy(judge.predict_logits(test_x).argmax(dim=1), test_y, class_names)},
        "families": [],
    }
    print(f"  reference classifier: test accuracy {record['judge']['test']['accuracy']:.3f}", flush=True)
    save(record)
    for name in families:
        record["families"].append(evaluate_family(name, splits, class_names, judge, per_class=per_class,
                                                  steps=steps, out_dir=out_dir))
        record["machine_after"] = machine_info(device)
        save(record)
    return record


def table(record: dict[str, Any]) -> str:
    """Markdown: one row per family (and the reference classifier on real test images), per-class accuracy."""
    names = record["class_names"]
    judge = record["judge"]
    rows = [{"what": "real test images (reference)", "n": record["split_sizes"]["test"],
             "acc": judge["test"]["accuracy"], **judge["test"]["per_class"]}]
    for fam in record["families"]:
        rows.append({"what": f"{fam['family']} samples", "steps": fam["steps"], "train_min": fam["train_seconds"] / 60,
                     "cpu_min": fam["train_cpu_seconds"] / 60, "n": fam["images_per_class"] * len(names),
                     "acc": fam["accuracy"], **fam["per_class"]})
    columns = [("labelled images", "what"), ("train steps", "steps"), ("train wall min", "train_min"),
               ("train CPU min", "cpu_min"), ("images", "n"),
               ("accuracy", "acc")]
    columns += [(f"{n}*" if record["train_counts"][n] < 10 else n, n) for n in names]
    return markdown_table(rows, columns)


def dump(record: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
