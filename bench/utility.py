"""Does the pipeline's synthetic data help on scarce classes it was not tuned on? Three scenarios from real images
that ship offline, each with held-back real images of its scarce classes as the oracle.

Scenarios (``SCENARIOS``):

- ``digits-example``: the bundled example (``tasks.core.sources.example``: scikit-learn's digits, classes 3, 5, 8 cut to
  6 train images each).
- ``digits-279``: the same scans and split rule (``tasks.core.sources.example.example_splits``), other scarce classes
  and counts: 2 and 9 keep 3 train images, 7 keeps 6; the rest of their train part is ``heldback``.
- ``digits-146`` (``HOLDOUT``, run only when named): the digits again with scarce classes 1 and 6 (3 train images)
  and 4 (6). It was kept out of every choice, to be run once to confirm a recipe whose choice followed a reading of
  the three other scenarios' test splits.
- ``textures``: 32x32 patches of four 512x512 grayscale photographs bundled with scikit-image (``brick``, ``grass``,
  ``gravel``, ``moon``; the ingest resizes them to ``data.image_size``). Regions are disjoint by rows: train and
  heldback patches tile rows 0-191 (stride 32: 96 per image), val patches rows 192-255 (10 of 32 drawn per class),
  test patches rows 256-511 (50 of 128 drawn per class), so no test pixel was seen in training. ``grass`` keeps 3
  train patches and ``gravel`` 6 (drawn with a seeded permutation); their other train-region patches are
  ``heldback``.

Each scenario runs the pipeline's steps up to the report (``flows.dag``: ingest, plan, train, generate, judge,
filter, evaluate, report; nothing is published) with the default params except ``data.source``, the overrides given
(``--set``) and ``evaluate.seeds``. The test split is read by the evaluate step alone, once; no param was chosen by
looking at any scenario's test split. The result file keeps, per scenario, the utility block of ``metrics.json``
(both classifier families, every condition, the paired differences and gaps from the best real baseline, the gate)
and the wall time of each step.

With ``--tune``, ``synthaug tune``'s flow then runs in the same workdir (the recipe chosen on validation only,
then the evaluate and report steps once with it); the result file adds its trials and the tuned utility block.

The scenario suite (``bench/suite.py``) runs the same way: ``--scenario`` takes its names too, and ``--half
development`` runs its development half. ``--half report`` runs the report half, which is read once per released
recipe: each such run first appends a line to ``REPORT_READS`` (the commit, the date, the overrides, the seeds and
the scenarios), committed with the results, so every read is on record whether or not it is reported.

``python -m bench.utility [--scenario NAME ... | --half development|report] [--seeds 5] [--set section.key=value
...] [--workdir DIR] [--from-step STEP] [--tune]``
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import suite
from synthaug.flows.dag import steps_through

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("digits-example", "digits-279", "textures")
HOLDOUT = "digits-146"  # kept out of every choice: run on its own, once, to confirm what the others' tests prompted
STEPS = (*steps_through("filter")[1:], "evaluate", "report")  # no fingerprint: the scenario writes its own source
DIGITS_SCARCE = {"2": 3, "7": 6, "9": 3}
HOLDOUT_SCARCE = {"1": 3, "4": 6, "6": 3}
TEXTURES = ("brick", "grass", "gravel", "moon")
TEXTURES_SCARCE = {"grass": 3, "gravel": 6}
PATCH = 32
# A scenario's own data params, as its user would set them: the texture photographs' patches are resized to 16 px
# (the digits keep the default, their native 8 px).
SCENARIO_PARAMS = {"textures": ("data.image_size=16",)}
TRAIN_ROWS, VAL_ROWS, TEST_ROWS = (0, 192), (192, 256), (256, 512)
REPORT_READS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "report-half-reads.jsonl"
VAL_PER_CLASS, TEST_PER_CLASS = 10, 50


def _write_folder(directory: Path, images: Sequence[tuple[str, str, np.ndarray, str]]) -> Path:
    """``<directory>/<label>/<name>.png`` for each (label, name, uint8 pixels, split), and ``splits.csv``."""
    rows = []
    for label, name, pixels, split in images:
        path = directory / label / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="PNG")
        rows.append(f"{label}/{name}.png,{split}")
    (directory / "splits.csv").write_text("path,split\n" + "\n".join(rows) + "\n")
    return directory


def write_digits(directory: Path, *, scarce: dict[str, int] = DIGITS_SCARCE, seed: int = 0) -> Path:
    """The digits scenario with other scarce classes: the example's pixels and split rule, ``scarce`` train counts."""
    from synthaug.tasks.core.sources.example import digit_pixels, example_splits

    pixels, targets = digit_pixels()
    splits = example_splits(targets, seed=seed, scarce=scarce)
    return _write_folder(directory, [(str(t), f"d{i:04d}", pixels[i], splits[i]) for i, t in enumerate(targets)])


def _patches(image: np.ndarray, rows: tuple[int, int]) -> list[np.ndarray]:
    top, bottom = rows
    return [image[r:r + PATCH, c:c + PATCH] for r in range(top, bottom - PATCH + 1, PATCH)
            for c in range(0, image.shape[1] - PATCH + 1, PATCH)]


def write_textures(directory: Path, *, scarce: dict[str, int] = TEXTURES_SCARCE, seed: int = 0) -> Path:
    """The textures scenario (module docstring): disjoint row bands for train/heldback, val and test."""
    from skimage import data  # the bench extra: pip install 'synthaug[bench]'

    images = []
    for k, name in enumerate(TEXTURES):
        photo = np.asarray(getattr(data, name)(), dtype=np.uint8)
        rng = np.random.default_rng([seed, k])
        train = _patches(photo, TRAIN_ROWS)
        keep = set(rng.permutation(len(train))[:scarce[name]].tolist()) if name in scarce else set(range(len(train)))
        images += [(name, f"tr{i:03d}", p, "train" if i in keep else "heldback") for i, p in enumerate(train)]
        val = _patches(photo, VAL_ROWS)
        images += [(name, f"va{i:03d}", val[i], "val") for i in sorted(rng.permutation(len(val))[:VAL_PER_CLASS])]
        test = _patches(photo, TEST_ROWS)
        images += [(name, f"te{i:03d}", test[i], "test") for i in sorted(rng.permutation(len(test))[:TEST_PER_CLASS])]
    return _write_folder(directory, images)


def source(scenario: str, root: Path) -> str:
    """The ``data.source`` of ``scenario``, written under ``root`` when it is a folder."""
    if scenario == "digits-example":
        return "example:digits"
    if scenario == "digits-279":
        return str(write_digits(root / "source"))
    if scenario == HOLDOUT:
        return str(write_digits(root / "source", scarce=HOLDOUT_SCARCE))
    if scenario == "textures":
        return str(write_textures(root / "source"))
    if scenario in suite.BY_NAME:
        folder = root / "source"
        if not (folder / "splits.csv").is_file():  # a rerun (--from-step) keeps the folder it wrote
            suite.materialize(scenario, folder)
        return str(folder)
    raise ValueError(f"unknown scenario {scenario!r}; scenarios: {', '.join(SCENARIOS)} and the suite's "
                     f"(python -m bench.suite --list)")


def scenario_params(scenario: str, workdir: Path, overrides: Sequence[str] = ()):
    """The params ``scenario`` runs with: the defaults, its source (written under ``workdir``), its own data params
    (``SCENARIO_PARAMS``), then ``overrides``."""
    from synthaug.flows.params import load_params

    own = suite.BY_NAME[scenario].params if scenario in suite.BY_NAME else SCENARIO_PARAMS.get(scenario, ())
    return load_params(None, [f"data.source={source(scenario, workdir)}", *own, *overrides])


def run_scenario(scenario: str, workdir: Path, *, seeds: int, overrides: Sequence[str] = (),
                 first: str = STEPS[0], tune: bool = False) -> dict[str, Any]:
    """Run the steps up to the report on ``scenario`` (from ``first``: the earlier ones' outputs in ``workdir`` are
    reused); returns the utility block, counts and step times. ``tune``: then run ``synthaug tune``'s flow in the
    same workdir and add its trials and the tuned utility block (``tuned``)."""
    from synthaug.flows.dag import step
    from synthaug.flows.params import dump_params

    workdir.mkdir(parents=True, exist_ok=True)
    params = scenario_params(scenario, workdir, [f"evaluate.seeds={seeds}", *overrides])
    seconds = {}
    for name in STEPS[STEPS.index(first):]:
        start = time.perf_counter()
        step(name).run(params, workdir)
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"{scenario}: {name} {seconds[name]} s", flush=True)
    metrics = json.loads((workdir / "evaluate" / "metrics.json").read_text())
    result = {"scenario": scenario, "overrides": list(overrides), "seconds": seconds, "params": dump_params(params),
              "classes": metrics["classes"], "minority_classes": metrics["minority_classes"],
              "counts": metrics["counts"], "utility": metrics["utility"]}
    if tune:
        from synthaug.flows.tune import tune as tune_flow

        start = time.perf_counter()
        tune_flow(params, str(workdir), str(workdir / "params.tuned.yaml"))
        seconds["tune"] = round(time.perf_counter() - start, 1)
        result["tuned"] = {"trials": json.loads((workdir / "tune" / "trials.json").read_text()),
                           "utility": json.loads((workdir / "evaluate" / "metrics.json").read_text())["utility"]}
    return result


BAR_GAP = 0.30  # the bar: share of the best-baseline -> oracle gap closed in minority recall


def bar(utility: dict[str, Any]) -> dict[str, list[str]]:
    """Per classifier family, the treated conditions that clear the bar: a minority-recall gain over the best real
    baseline whose 95% interval excludes zero, closing >= ``BAR_GAP`` of the gap to the oracle."""
    from synthaug.tasks.core.evaluation.downstream import families

    out = {}
    for family, results in families(utility).items():
        out[family] = [c for c, paired in results["paired_difference"].items()
                       if paired["minority_recall"].get("ci95") and paired["minority_recall"]["ci95"][0] > 0
                       and (results["gap_closed"][c]["minority_recall"]["value"] or 0.0) >= BAR_GAP]
    return out


def _ms(entry: dict[str, Any]) -> str:
    return "—" if entry["mean"] is None else f"{entry['mean']:.3f} ± {entry['std']:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """The scenario's tables for docs/BENCHMARKS.md (``utility_tables``), and those of the tuned recipe when the
    run tuned one."""
    from synthaug.tasks.tune import DEFAULT_TRIAL

    text = utility_tables(result["utility"])
    tuned = result.get("tuned")
    if tuned:
        winner, trials = tuned["trials"]["winner"], tuned["trials"]["trials"]
        # The first trial of the default recipe: the default trial (with the params' own guidance when searched).
        default = next(t for t in trials if {k: t["recipe"][k] for k in DEFAULT_TRIAL} == DEFAULT_TRIAL)
        guidance = f", guidance {winner['recipe']['guidance']:g}" if "guidance" in winner["recipe"] else ""
        text += (f"\n\n**`synthaug tune`** ({len(trials)} trials, validated on {tuned['trials']['validated_on']}): "
                 f"winner share {winner['recipe']['share']:.2f}, order {winner['recipe']['selection']}, weight "
                 f"{winner['recipe']['weight']:.2f}{guidance}, validation objective {winner['objective']:+.4f} "
                 f"(default recipe {default['objective']:+.4f}). On test, once:\n\n" + utility_tables(tuned["utility"]))
    return text


def utility_tables(utility: dict[str, Any]) -> str:
    """Every condition with both families, then every treated condition against the best real baseline, the
    recipe, the gate and the bar."""
    from synthaug.tasks.core.evaluation.downstream import COMPARED, families

    fams = families(utility)
    head = " | ".join(f"{f} {m.replace('_', ' ')}" for f in fams for m in COMPARED)
    lines = [f"| condition | {head} |", "|---" * (1 + 2 * len(fams)) + "|"]
    for c in utility["setup"]["conditions"]:
        lines.append(f"| {c} | " + " | ".join(_ms(r[c][m]) for r in fams.values() for m in COMPARED) + " |")
    lines += ["", "| family | condition | metric | best real baseline | Δ [95% CI] | gap closed |", "|---" * 6 + "|"]
    for family, results in fams.items():
        for c, paired in results["paired_difference"].items():
            for m in COMPARED:
                d, g = paired[m], results["gap_closed"][c][m]
                delta = "—" if d["mean"] is None else f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                gap = "—" if g["value"] is None else f"{g['value']:.2f}"
                lines.append(f"| {family} | {c} | {m.replace('_', ' ')} | {d['baseline']} | {delta} | {gap} |")
    recipe = utility.get("recipe")
    if recipe:
        lines += ["", f"Chosen on {recipe['validated_on']}: selection `{recipe['selection']}`, shares "
                      f"{json.dumps(recipe['shares'])}."]
    used = utility["setup"].get("recipe")
    if used:
        lines += ["", f"Synthetic recipe: share {used['share']:.2f}, order `{used['selection']}`, loss weight "
                      f"{used['weight']:.2f}; chosen on: {used['chosen_on']}."]
    lines += ["", f"Gate: {utility['gate']['verdict']}", "",
              "Bar (minority-recall gain with 95% CI above zero and >= 30% of the gap closed): "
              + "; ".join(f"{f}: {', '.join(c) or 'none'}" for f, c in bar(utility).items())]
    return "\n".join(lines)


def write_result(out: Path, name: str, result: dict[str, Any]) -> Path:
    """``<out>/<name>.json``: ``result`` with the machine it was measured on."""
    import torch

    from bench.speed import machine_info

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine_info(torch.device("cpu"))}, indent=2))
    return path


def log_report_read(scenarios: Sequence[str], overrides: Sequence[str], seeds: int, log: Path = REPORT_READS) -> dict:
    """Append a read of the suite's report half to ``log`` before it happens (refused unless every scenario is of
    that half, and outside a git checkout: a read is recorded against the commit it reads)."""
    import subprocess

    if not scenarios or any(suite.HALF.get(name) != "report" for name in scenarios):
        raise ValueError("a report-half read runs scenarios of the report half only")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"a report-half read is logged against a git commit; {root} is no git checkout")
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True).stdout.strip())
    entry = {"commit": done.stdout.strip(), "uncommitted_changes": dirty,
             "date": datetime.now(UTC).isoformat(timespec="seconds"), "overrides": list(overrides), "seeds": seeds,
             "scenarios": list(scenarios)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.utility", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--scenario", action="append", choices=(*SCENARIOS, HOLDOUT, *suite.BY_NAME),
                       help=f"repeatable; default: the three of SCENARIOS ({HOLDOUT}: only when named)")
    which.add_argument("--half", choices=("development", "report"),
                       help="every scenario of that half of the suite (report: logged as a read, docs/BENCHMARKS.md)")
    parser.add_argument("--seeds", type=int, default=5, help="evaluate.seeds (classifier runs per condition)")
    parser.add_argument("--set", "-S", dest="overrides", action="append", default=[],
                        help="a param override for every scenario, e.g. -S model.family=vae (repeatable)")
    parser.add_argument("--workdir", type=Path, default=Path("data/bench-utility"), help="<workdir>/<scenario>")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON results")
    parser.add_argument("--from-step", choices=STEPS, default=STEPS[0],
                        help="rerun from this step on an earlier run's workdir (e.g. evaluate after a code change)")
    parser.add_argument("--tune", action="store_true", help="then run `synthaug tune` in each scenario's workdir")
    parser.add_argument("--markdown", type=Path, nargs="+", help="print the tables of result files; run nothing")
    args = parser.parse_args(argv)
    if args.markdown:
        for path in args.markdown:
            result = json.loads(path.read_text())
            print(f"### {result['scenario']}\n\n{markdown(result)}\n")
        return

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    scenarios = [n for n in suite.BY_NAME if suite.HALF[n] == args.half] if args.half else args.scenario or SCENARIOS
    if any(suite.HALF.get(n) == "report" for n in scenarios):
        entry = log_report_read(scenarios, args.overrides, args.seeds)
        print(f"report-half read logged in {REPORT_READS} (commit {entry['commit'][:7]})", flush=True)
    for scenario in scenarios:
        result = run_scenario(scenario, args.workdir / scenario, seeds=args.seeds, overrides=args.overrides,
                              first=args.from_step, tune=args.tune)
        path = write_result(args.out, f"utility-{scenario}-{stamp}", result)
        print(f"{scenario}: {result['utility']['gate']['verdict']}\n-> {path}", flush=True)


if __name__ == "__main__":
    main()
