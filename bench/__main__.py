"""``python -m bench [--only train|sample|quality|scale|finetune|cli] [--family NAME] [--device auto|cpu|cuda]
[--quick]``.

With ``--size S`` (repeatable) the train and sample benchmarks compare pixel and latent diffusion on S x S images
(``bench.sizes``) instead of timing every family on a 16 x 16 shape (the bundled example's until 2026-12-07).
Every benchmark writes its JSON record and a markdown table into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench import speed
from synthaug.models.families import family_names

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("train", "sample", "quality", "scale", "finetune", "cli")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", action="append", choices=KINDS, help="benchmark to run (repeatable; default all)")
    parser.add_argument("--family", action="append", choices=family_names(), help="family (repeatable; default all)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="device of the speed and scale benchmarks (quality always runs on the CPU)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps and images, numbers meaningless")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch CPU threads (default: the cores this process may use)")
    parser.add_argument("--size", action="append", type=int,
                        help="image side of the pixel-vs-latent comparison (repeatable; e.g. 64, 128, 256)")
    parser.add_argument("--channels", type=int, default=3, help="image channels of the --size comparison")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and markdown results")
    parser.add_argument("--synthaug", help="the synthaug command the cli benchmark times (default: this venv's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.size:
        _sizes(args)
        return
    families = args.family or family_names()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")

    for kind in args.only or KINDS:
        print(f"## {kind}", flush=True)
        if kind == "quality":
            from bench import quality  # imports tasks/ (pandas, pillow, ...): not needed on a bare GPU host

            path = args.out / f"quality-cpu-{stamp}.json"
            record = quality.run(families, quick=args.quick, out_dir=args.out,
                                 save=lambda r, path=path: quality.dump(r, path))
            print(quality.table(record))
        elif kind == "finetune":
            from bench import finetune, quality  # import tasks/ (pandas, pillow, ...)

            path = args.out / f"finetune-cpu-{stamp}.json"
            record = finetune.run(quick=args.quick, save=lambda r, path=path: quality.dump(r, path))
            path.with_suffix(".md").write_text(finetune.table(record) + "\n")
            print(finetune.table(record))
        elif kind == "cli":
            from bench import cli

            record = {"machine": speed.machine_info(torch.device("cpu")),
                      **cli.run(3 if args.quick else 7, args.synthaug)}
            path = args.out / f"cli-{stamp}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2))
            path.with_suffix(".md").write_text(cli.table(record) + "\n")
            print(cli.table(record))
        elif kind == "scale":
            from bench import scale

            record = scale.run(args.device, quick=args.quick, threads=args.threads)
            device = "cpu" if record["machine"]["device"] == "cpu" else "cuda"
            path = args.out / f"scale-{device}-{stamp}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2))
            print(scale.tables(record))
        else:
            record = speed.run(kind, families, args.device, quick=args.quick)
            device = "cpu" if record["machine"]["device"] == "cpu" else "cuda"
            path = args.out / f"{kind}-{device}-{stamp}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2))
            columns = speed.TRAIN_COLUMNS if kind == "train" else speed.SAMPLE_COLUMNS
            table = speed.markdown_table(record["rows"], columns)
            path.with_suffix(".md").write_text(f"machine: {record['machine']}\n\n{table}\n")
            print(table)
        print(f"machine: {json.dumps(record['machine'])}\nresults: {path}\n", flush=True)


def _sizes(args: argparse.Namespace) -> None:
    """The pixel-vs-latent comparison at ``args.size``: one record (JSON) and its tables (markdown)."""
    from bench import sizes

    kinds = [k for k in args.only or ("train", "sample") if k in ("train", "sample")]
    if not kinds:
        raise SystemExit("--size applies to --only train and --only sample")
    try:
        record = sizes.run(kinds, args.family or list(sizes.SIZE_FAMILIES), args.size, args.device,
                           channels=args.channels, quick=args.quick)
    except ValueError as err:
        raise SystemExit(f"python -m bench: {err}") from None
    device = "cpu" if record["machine"]["device"] == "cpu" else "cuda"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    path = args.out / f"sizes-{device}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    table = sizes.markdown(record)
    path.with_suffix(".md").write_text(table + "\n")
    print(f"{table}\nresults: {path} and {path.with_suffix('.md')}\n", flush=True)


if __name__ == "__main__":
    main()
