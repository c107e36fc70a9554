"""``python -m bench.fingerprint [--files N] [--repeats R] [--workdir DIR] [--out FILE]``: how long the DAG's first
step (``tasks.ingest.fingerprint_source``) takes on a folder source of N tiny PNG files, cold (an empty hash cache:
every file is read and hashed) and warm (the hash cache of the cold run: only stats).

The folder (``<workdir>/source``: 10 class folders of 8 x 8 grey PNGs with random pixels, about 150 bytes each) is
made once and reused by later runs with the same N. The files are in the OS page cache when timed (they were just
written or read): the cold time is hashing and per-file overhead, not disk reads. Each timing is the median of R runs,
each cold run with a fresh cache folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.ingest import fingerprint_source

CLASSES = 10


def make_source(root: Path, files: int) -> Path:
    """``root`` with ``files`` distinct 8 x 8 PNGs in ``CLASSES`` class folders (kept when already complete)."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == str(files):
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(files):
        folder = root / f"class{i % CLASSES}"
        if i < CLASSES:
            folder.mkdir(parents=True)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(buffer, format="PNG")
        (folder / f"{i:06d}.png").write_bytes(buffer.getvalue())
    done.write_text(str(files))
    return root


def time_fingerprint(source: Path, cache_dir: Path, out: Path) -> tuple[float, str]:
    start = time.perf_counter()
    lineage = fingerprint_source(DataParams(source=str(source)), out, cache_dir=cache_dir)
    return time.perf_counter() - start, lineage["content_hash"]


def run(files: int, repeats: int, workdir: Path) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()  # the code imported, at the start
    source = make_source(workdir / "source", files)
    cold, warm, hashes = [], [], set()
    for r in range(repeats):
        cache = workdir / f"cache{r}"
        shutil.rmtree(cache, ignore_errors=True)
        seconds, digest = time_fingerprint(source, cache, workdir / "source.json")
        cold.append(seconds)
        hashes.add(digest)
        seconds, digest = time_fingerprint(source, cache, workdir / "source.json")
        warm.append(seconds)
        hashes.add(digest)
        shutil.rmtree(cache)
    if len(hashes) != 1:
        raise SystemExit(f"python -m bench.fingerprint: the content hash changed between runs: {sorted(hashes)}")
    return {"files": files, "repeats": repeats, "cold_s": round(statistics.median(cold), 2),
            "warm_s": round(statistics.median(warm), 2), "content_hash": hashes.pop(), "commit": commit,
            "date": datetime.now(UTC).date().isoformat(),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
                        "load": [round(x, 1) for x in os.getloadavg()]}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fingerprint", description=__doc__)
    parser.add_argument("--files", type=int, default=100_000, help="PNG files in the source folder")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the median is reported")
    parser.add_argument("--workdir", type=Path, default=Path("bench/results/fingerprint"),
                        help="where the source folder and the caches are made")
    parser.add_argument("--out", type=Path, help="JSON file of the record (default: printed only)")
    args = parser.parse_args(argv)
    record = run(args.files, args.repeats, args.workdir)
    text = json.dumps(record, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
