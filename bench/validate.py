"""Validation only (the test split is never read): how strong the best real baseline is at each CNN step count, and
what the synthetic conditions score, with equal passes and with equal steps, on a scenario of ``bench.utility``.

The scenario's steps up to the filter run first, with the default params (each only when its folder is missing).
Then, on the validation folds of ``synthaug tune`` (``tasks.core.evaluation.recipe.validation_folds``: the real val
split, or k-fold over real train + val), both classifier families train ``--seeds`` times per condition: the two real
baselines at every ``--steps`` count, and ``real_synthetic`` / ``real_classical_aug_synthetic`` at the default
count with ``evaluate.equal_passes`` on and off. The rule the default step count follows (docs/BENCHMARKS.md): the
fewest steps whose best-baseline balanced accuracy is within 0.01 of the best count tried.

``python -m bench.validate --scenario NAME [--steps 500,1000,2000] [--seeds 6] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from synthaug.flows.dag import steps_through

STEPS = steps_through("filter")[1:]  # no fingerprint: the scenario writes its own source
SYNTHETIC = ("real_synthetic", "real_classical_aug_synthetic")


def run_steps(scenario: str, workdir: Path):
    """The scenario's params, after running every step up to the filter whose output folder is missing."""
    from bench.utility import scenario_params
    from synthaug.flows.dag import step

    workdir.mkdir(parents=True, exist_ok=True)
    params = scenario_params(scenario, workdir)
    for name in STEPS:
        if not (workdir / ("model" if name == "train" else name)).exists():
            start = time.perf_counter()
            step(name).run(params, workdir)
            print(f"{scenario}: {name} {time.perf_counter() - start:.1f} s", flush=True)
    return params


def validate(scenario: str, workdir: Path, step_counts: list[int], seeds: int) -> dict:
    """{steps: {condition: {family: [balanced accuracy, minority recall]}}} on the validation folds."""
    import torch

    from synthaug.tasks.core.evaluation.downstream import BASELINES, COMPARED
    from synthaug.tasks.core.evaluation.inputs import read_inputs
    from synthaug.tasks.core.evaluation.recipe import mean_score, validation_folds, validation_runs

    params = run_steps(scenario, workdir)
    base = params.evaluate.model_copy(update={"validation_seeds": seeds})
    device = torch.device("cpu")
    inputs = read_inputs(workdir / "ingest", workdir / "filter", workdir / "judge", base, device=device)
    folds, how = validation_folds(inputs.data, inputs.real_f, inputs.minority)
    result: dict = {"scenario": scenario, "validated_on": how, "seeds": seeds, "default_steps":
                    base.classifier.steps, "steps": {}}
    for steps in step_counts:
        at = base.model_copy(update={"classifier": dataclasses.replace(base.classifier, steps=steps)})
        runs = {c: (at, c) for c in BASELINES}
        if steps == base.classifier.steps:
            for c in SYNTHETIC:
                runs[c] = (at.model_copy(update={"equal_passes": True}), c)
                runs[f"{c} (equal steps)"] = (at.model_copy(update={"equal_passes": False}), c)
        scores = {}
        for name, (p, condition) in runs.items():
            family_runs = validation_runs(folds, inputs.syn_f, p, inputs.minority, device, condition)
            scores[name] = {family: [round(mean_score(r, m), 4) for m in COMPARED] for family, r in family_runs.items()}
        result["steps"][str(steps)] = scores
        print(f"{scenario}: {steps} steps {json.dumps(scores)}", flush=True)
    best = {s: max(v[c]["cnn"][0] for c in BASELINES) for s, v in result["steps"].items()}
    top = max(best.values())
    result["best_baseline_balanced_accuracy"] = best
    result["rule_steps"] = min(int(s) for s, v in best.items() if v >= top - 0.01)
    return result


def main(argv: list[str] | None = None) -> None:
    from bench.utility import HOLDOUT, RESULTS, SCENARIOS, write_result

    parser = argparse.ArgumentParser(prog="python -m bench.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True, choices=(*SCENARIOS, HOLDOUT))
    parser.add_argument("--steps", default="500,1000,2000", help="CNN step counts, comma-separated")
    parser.add_argument("--seeds", type=int, default=6, help="classifier runs per condition and fold")
    parser.add_argument("--workdir", type=Path, default=Path("data/bench-utility"), help="<workdir>/<scenario>")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON results")
    args = parser.parse_args(argv)
    result = validate(args.scenario, args.workdir / args.scenario, [int(s) for s in args.steps.split(",")],
                      args.seeds)
    path = write_result(args.out, f"validate-{args.scenario}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}", result)
    print(f"{args.scenario}: rule picks {result['rule_steps']} steps -> {path}", flush=True)


if __name__ == "__main__":
    main()
