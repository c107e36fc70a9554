"""How many steps does fine-tuning from a pretrained folder need to match training from scratch (bundled example)?

1. The bundled example and the reference judge as in ``bench.quality`` (the judge is trained on the real train + val
   + heldback images); "accuracy" is the judge's accuracy on ``per_class`` samples of every class.
2. From scratch: a diffusion config smaller than the default (``SMALL``: UNet channels 16/32, batch 32, 400 steps;
   the default's 1000 steps of a 4x wider net do not fit a shared 2-core CPU three times over) trained on the real
   train split (all ten classes); its accuracy is the target.
3. The pretrained folder: the same config trained on the train images of the seven ordinary classes only (the
   scarce classes 3, 5, 8 left out), written as a MONAI bundle (``tasks.train.pretrained.write_bundle``) with its
   class names, read back with ``read_pretrained`` and loaded by ``apply_pretrained``: seven classes mapped by name,
   the three scarce ones get fresh class-embedding rows.
4. Fine-tuning: from that folder on the full train split, accuracy after a growing number of steps until it reaches
   the target (or the default step count runs out). The pretraining steps are reported too: they are a cost.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.quality import accuracy, as_stored, load_example
from bench.speed import machine_info, markdown_table
from synthaug.models.config import DiffusionConfig, JudgeConfig
from synthaug.models.diffusion import Diffusion
from synthaug.models.judge import train_judge
from synthaug.models.training import fit
from synthaug.tasks.core.sources.example import SCARCE_CLASSES
from synthaug.tasks.train.pretrained import apply_pretrained, read_pretrained, write_bundle

CPU = torch.device("cpu")
SMALL = DiffusionConfig(channels=(16, 32), num_head_channels=16, batch_size=32, steps=400)


def _model(config: DiffusionConfig, shape: tuple[int, ...], classes: int) -> Diffusion:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Diffusion(config, image_shape=shape, num_classes=classes, device=CPU)


def _train_to(model: Diffusion, x: torch.Tensor, y: torch.Tensor, steps: int, classes: list[str]) -> float:
    """Continue ``model`` to ``steps`` optimizer steps in all; returns the seconds it took."""
    start = time.perf_counter()
    done = model.steps_done
    model.config = dataclasses.replace(model.config, steps=steps)
    fit(model, x, y, seed=done, class_names=classes, start_step=done)  # a new batch order for each leg
    return time.perf_counter() - start


def _judged(model: Diffusion, judge: Any, classes: list[str], per_class: int) -> dict[str, Any]:
    labels = torch.arange(len(classes)).repeat_interleave(per_class)
    samples = as_stored(model.sample(labels, list(range(per_class)) * len(classes)))
    return accuracy(judge.predict_logits(samples).argmax(dim=1), labels, classes)


def run(*, quick: bool, save: Any) -> dict[str, Any]:
    per_class = 8 if quick else 20
    config = dataclasses.replace(SMALL, steps=6) if quick else SMALL
    checkpoints = [2, 4, 6] if quick else [25, 50, 100, 200, 400]
    scratch_points = [6] if quick else [400]
    with tempfile.TemporaryDirectory(prefix="synthaug-bench-") as tmp:
        splits, classes = load_example(Path(tmp))
        seen = [splits[s] for s in ("train", "val", "heldback")]
        judge = train_judge(torch.cat([s[0] for s in seen]), torch.cat([s[1] for s in seen]),
                            num_classes=len(classes), config=JudgeConfig(steps=50 if quick else 300),
                            device=CPU)
        x, y = splits["train"]
        shape = tuple(x.shape[1:])
        record: dict[str, Any] = {"benchmark": "finetune", "machine": machine_info(CPU), "quick": quick,
                                  "per_class": per_class, "config": dataclasses.asdict(config),
                                  "scarce_classes": list(SCARCE_CLASSES), "scratch": [], "finetune": []}

        scratch = _model(config, shape, len(classes))
        for steps in scratch_points:
            seconds = _train_to(scratch, x, y, steps, classes)
            record["scratch"].append({"steps": steps, "seconds": seconds, **_judged(scratch, judge, classes,
                                                                                    per_class)})
            print(f"  scratch {steps} steps: {record['scratch'][-1]['accuracy']:.3f}", flush=True)
            save(record)
        target = record["scratch"][-1]["accuracy"]

        ordinary = [c for c in classes if c not in SCARCE_CLASSES]
        keep = torch.tensor([classes[int(k)] in ordinary for k in y])
        remap = {classes.index(c): i for i, c in enumerate(ordinary)}
        y_ordinary = torch.tensor([remap[int(k)] for k in y[keep]])
        base = _model(config, shape, len(ordinary))
        record["pretrain"] = {"classes": ordinary, "images": int(keep.sum()), "steps": config.steps,
                              "seconds": _train_to(base, x[keep], y_ordinary, config.steps, ordinary)}
        folder = Path(tmp) / "pretrained"
        write_bundle(folder, {name: net.state_dict() for name, net in base.pretrained_networks().items()},
                     {"class_names": ordinary})

        tuned = _model(config, shape, len(classes))
        record["pretrained_notes"] = apply_pretrained(tuned, read_pretrained(folder), classes)
        tuned.steps_done = 0
        for steps in checkpoints:
            seconds = _train_to(tuned, x, y, steps, classes)
            record["finetune"].append({"steps": steps, "seconds": seconds, **_judged(tuned, judge, classes,
                                                                                     per_class)})
            print(f"  fine-tune {steps} steps: {record['finetune'][-1]['accuracy']:.3f}", flush=True)
            save(record)
            if record["finetune"][-1]["accuracy"] >= target:
                break
        reached = [r["steps"] for r in record["finetune"] if r["accuracy"] >= target]
        record["target_accuracy"] = target
        record["steps_to_target"] = reached[0] if reached else None
        record["machine_after"] = machine_info(CPU)
        save(record)
    return record


def table(record: dict[str, Any]) -> str:
    """Markdown: accuracy on samples after each step count, from scratch and fine-tuned, per scarce class too."""
    rows = [{"run": run, "steps": r["steps"], "acc": r["accuracy"],
             **{c: r["per_class"][c] for c in record["scarce_classes"]}}
            for run, key in (("from scratch", "scratch"), ("fine-tuned from the pretrained folder", "finetune"))
            for r in record[key]]
    columns = [("run", "run"), ("steps", "steps"), ("accuracy on samples", "acc")]
    columns += [(f"class {c}", c) for c in record["scarce_classes"]]
    return markdown_table(rows, columns)
