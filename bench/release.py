"""``python -m bench.release --family NAME [-S key=value ...] --workdir DIR --out FILE``: an anonymized release of
the bundled example (``params.yaml`` defaults, planned as ``synthaug anonymize`` plans), its TSTR vs TRTR and its
privacy gate.

It runs the anonymize flow's steps as plain functions (no Prefect, no publishing), with the gate *not* stopping the
run: utility is measured whether it passes or not. To fit 2 shared CPU cores, only the two conditions TSTR vs TRTR
compares are trained (``real_only`` and ``synthetic_only`` of ``tasks.evaluate``, with its code, recipe and seeds),
not the evaluate step's other four. The JSON holds the params overrides, the seconds per step, the plan, the
released images per class, the gate's verdict and attack AUCs, TSTR vs TRTR (``tasks.core.privacy.tstr``) and, for a
DP-trained generator, its (epsilon, delta).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from synthaug.flows.anonymize import release_params
from synthaug.flows.dag import step, steps_through
from synthaug.flows.params import load_params
from synthaug.models.judge import train_judge
from synthaug.tasks.core.evaluation.downstream import score, training_set
from synthaug.tasks.core.evaluation.inputs import read_data
from synthaug.tasks.core.params.evaluate import EvaluateParams
from synthaug.tasks.core.privacy.tstr import METRICS, TRTR, TSTR, release_utility
from synthaug.tasks.core.scoring.features import load_judge_step
from synthaug.tasks.privacy import privacy_gate

STEPS = steps_through("filter")[1:]  # no fingerprint: the scenario writes its own source


def tstr_trtr(workdir: Path, params: EvaluateParams) -> dict[str, Any]:
    """The evaluate step's ``real_only`` and ``synthetic_only`` runs alone, in its ``utility`` layout."""
    judge, class_names = load_judge_step(workdir / "judge", device=torch.device("cpu"))
    data = read_data(workdir / "ingest", workdir / "filter", class_names, judge.image_shape)
    truth = data.test_y.numpy()
    out: dict[str, Any] = {}
    for condition in (TRTR, TSTR) if data.syn_x.shape[0] else (TRTR,):
        runs = []
        for i in range(params.seeds):
            seed = params.classifier.seed + i
            x, y = training_set(condition, data, seed)
            model = train_judge(x, y, num_classes=len(class_names),
                                config=dataclasses.replace(params.classifier, seed=seed), device=torch.device("cpu"))
            runs.append(score(model.predict_logits(data.test_x).argmax(dim=1).numpy(), truth, class_names, []))
        out[condition] = {m: {"values": [r[m] for r in runs]} for m in METRICS}
        out[condition]["per_class_recall"] = {c: {"values": [r["per_class_recall"][c] for r in runs]}
                                              for c in runs[0]["per_class_recall"]}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.release", description=__doc__)
    parser.add_argument("--family", required=True)
    parser.add_argument("-S", "--set", action="append", default=[], dest="overrides")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    overrides = [f"model.family={args.family}", *args.overrides]
    params = release_params(load_params(Path("params.yaml"), overrides))
    seconds: dict[str, float] = {}
    for name in STEPS:
        done = args.workdir / "model" / "checkpoint" / "config.json"
        if name == "train" and done.is_file() and json.loads(done.read_text())["step"] == params.model.family_config(
                ).steps:  # an earlier attempt in this workdir finished training (and then stopped): its time
            log = (args.workdir / "model" / "train_log.jsonl").read_text().splitlines()
            seconds[name] = json.loads(log[-1])["time_s"]
            print(f"train: reused the finished checkpoint ({seconds[name]} s when trained)", flush=True)
            continue
        start = time.perf_counter()
        step(name).run(params, args.workdir)
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {seconds[name]} s", flush=True)
    start = time.perf_counter()
    gate = privacy_gate(args.workdir / "ingest", args.workdir / "filter", args.workdir / "judge", params.privacy,
                        params.filter, args.workdir / "privacy", checkpoint_dir=args.workdir / "model" / "checkpoint")
    seconds["privacy"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    utility = tstr_trtr(args.workdir, params.evaluate)
    seconds["tstr_trtr"] = round(time.perf_counter() - start, 1)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": os.environ.get("BENCH_COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                                                  text=True).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {os.environ.get('OMP_NUM_THREADS')}",
        "load_average_at_end": os.getloadavg(),
        "overrides": overrides, "seconds": seconds,
        "released_per_class": gate.report["release"]["per_class"],
        "real_train_per_class": gate.report["release"].get("real_train_per_class"),
        "gate": {"passed": gate.passed, "failures": gate.failures,
                 "attacks": {k: v for k, v in gate.report.items() if k in ("attack", "density_attack")}},
        "dp": gate.report["dp"],
        "utility": release_utility(utility) if TSTR in utility else "no accepted synthetic image",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"utility: {result['utility']}; gate passed: {gate.passed}", flush=True)


if __name__ == "__main__":
    main()
