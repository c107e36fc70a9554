"""``python -m bench.release --family NAME [-S key=value ...] --workdir DIR --out FILE``: an anonymized release of
the bundled example (``params.yaml`` defaults, planned as ``synthaug anonymize`` plans), its TSTR vs TRTR and its
privacy gate.

It runs the anonymize flow's steps as plain functions (no Prefect, no publishing), with the gate *not* stopping the
run: the evaluation runs whether it passes or not, so a failed gate still has its utility measured. The JSON holds
the params overrides, the seconds per step, the plan, the released images per class, the gate's verdict and attack
AUCs, TSTR vs TRTR (``tasks.tstr``) and, for a DP-trained generator, its (epsilon, delta).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from flows.anonymize import release_params
from flows.dag import step
from flows.params import load_params
from tasks.privacy import privacy_gate
from tasks.tstr import release_utility

STEPS = ("ingest", "plan", "train", "generate", "judge", "filter")


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
        start = time.perf_counter()
        step(name).run(params, args.workdir)
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {seconds[name]} s", flush=True)
    start = time.perf_counter()
    gate = privacy_gate(args.workdir / "ingest", args.workdir / "filter", args.workdir / "judge", params.privacy,
                        params.filter, args.workdir / "privacy")
    seconds["privacy"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    step("evaluate").run(params, args.workdir)
    seconds["evaluate"] = round(time.perf_counter() - start, 1)
    metrics = json.loads((args.workdir / "evaluate" / "metrics.json").read_text())
    dp_file = args.workdir / "model" / "checkpoint" / "dp.json"
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
        "dp": json.loads(dp_file.read_text()) if dp_file.is_file() else None,
        "utility": release_utility(metrics["utility"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    ba = result["utility"]["balanced_accuracy"]
    print(f"TSTR {ba['tstr']['mean']:.3f} TRTR {ba['trtr']['mean']:.3f} ratio {ba['ratio']['mean']:.3f}; "
          f"gate passed: {gate.passed}", flush=True)


if __name__ == "__main__":
    main()
