"""How the filter's nearest-neighbour searches and sharded generation grow with the number of images.

``search`` (imports only torch and ``models``: runs on a bare GPU host): N synthetic against N real images, the
two searches every synthetic image gets in the filter (``tasks.filter``), timed one after the other:

- feature: ``models.metrics.nearest_distance_streamed``, features of the judge's default size (F = 128,
  ``filter.judge.feature_dim``), float64, the memorization test in feature space;
- pixel: ``models.metrics.nearest_correlation_streamed``, 16x16 grayscale images (D = 256, the bundled example's
  size), the real side as stored 8-bit levels (uint8), the memorization test in pixel space.

The data are random (the cost of an exhaustive search does not depend on the values). On CUDA the query sets live
on the GPU and the real sets in host memory, read a block at a time, as in the filter.

``generate``: N images from an untrained VAE with the family's default config (16x16, 10 classes; sampling cost
does not depend on training), through the generate step (``tasks.generate.generate_from_plan``) on the default
runner (threads, one worker) in shards of the default ``runner.shard_size``, PNGs and manifest written to a
temporary folder.
The time includes the Prefect temporary server's start (a fixed few seconds, the first flow run of a process).

Each (benchmark, size) runs in a fresh child process. Peak memory is the child's peak resident set
(``ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``); ``inputs`` is the resident set once the search's
inputs exist, so ``peak - inputs`` is the memory the search itself needed. Growth columns are the ratios to the
previous size: for a size ratio of 10, an O(N^2) time grows 100x, an O(N) memory 10x and a fixed bound 1x.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.speed import machine_info, markdown_table

SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (200, 2_000)
FEATURES = 128  # the judge's default feature_dim
PIXELS = (1, 16, 16)  # the bundled example's images
CLASSES = 10


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def search(n: int, device_name: str) -> dict[str, Any]:
    """Time and memory of the filter's two searches, n synthetic x n real images."""
    from synthaug.models.common import pick_device
    from synthaug.models.metrics import nearest_correlation_streamed, nearest_distance_streamed

    device = pick_device(device_name)
    g = torch.Generator().manual_seed(0)
    synthetic_feats = torch.randn(n, FEATURES, generator=g, dtype=torch.float64).to(device)
    real_feats = torch.randn(n, FEATURES, generator=g, dtype=torch.float64)
    synthetic_pixels = (torch.rand(n, *PIXELS, generator=g) * 2 - 1).to(device)
    real_pixels = torch.randint(0, 256, (n, PIXELS[0] * PIXELS[1] * PIXELS[2]), generator=g,
                                dtype=torch.uint8).numpy()
    inputs = _rss_mib()
    record: dict[str, Any] = {"n_synthetic": n, "n_real": n, "inputs_mib": round(inputs, 1)}
    for name, run in (("feature", lambda: nearest_distance_streamed(synthetic_feats, real_feats)),
                      ("pixel", lambda: nearest_correlation_streamed(synthetic_pixels, real_pixels))):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        record[f"{name}_s"] = round(time.perf_counter() - start, 3)
    record["peak_mib"] = round(_peak_mib(), 1)
    record["search_mib"] = round(record["peak_mib"] - inputs, 1)
    if device.type == "cuda":
        record["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return record


def generate(n: int, device_name: str) -> dict[str, Any]:
    """Time and memory of generating n images through the sharded generate step (threads runner)."""
    import pandas as pd

    from synthaug.flows.runners import shard_runner
    from synthaug.models.config import VAEConfig
    from synthaug.models.training import save_checkpoint
    from synthaug.models.vae import VAE
    from synthaug.tasks.core.params.generate import GenerateParams
    from synthaug.tasks.core.params.runner import DEFAULT_SHARD_SIZE, RunnerParams
    from synthaug.tasks.generate import generate_from_plan

    classes = [str(c) for c in range(CLASSES)]
    with tempfile.TemporaryDirectory(prefix="synthaug-bench-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = VAE(VAEConfig(), image_shape=PIXELS, num_classes=CLASSES, device=torch.device("cpu"))
        save_checkpoint(model, root / "checkpoint", step=0, class_names=classes)
        per_class = [n // CLASSES + (i < n % CLASSES) for i in range(CLASSES)]
        pd.DataFrame({"class": classes, "real": 0, "target": per_class, "to_generate": per_class}).to_csv(
            root / "plan.csv", index=False)
        before = _rss_mib()
        start = time.perf_counter()
        with shard_runner(RunnerParams(), "bench-generate") as run_shards:
            manifest = generate_from_plan(root / "plan.csv", root / "checkpoint", GenerateParams(device=device_name),
                                          root / "out", shard_size=DEFAULT_SHARD_SIZE, run_shards=run_shards)
        seconds = time.perf_counter() - start
        rows = len(pd.read_parquet(manifest, columns=["path"]))
        disk = sum(f.stat().st_size for f in (root / "out").rglob("*") if f.is_file())
    return {"images": n, "rows": rows, "shards": -(-n // DEFAULT_SHARD_SIZE), "seconds": round(seconds, 2),
            "images_per_s": round(n / seconds, 1), "start_mib": round(before, 1), "peak_mib": round(_peak_mib(), 1),
            "disk_mib": round(disk / 2**20, 1)}


def _growth(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    for prev, row in itertools.pairwise(rows):
        for key in keys:
            if prev.get(key) and row.get(key) is not None:
                row[f"{key}_growth"] = round(row[key] / prev[key], 2)


def run(device_name: str, *, quick: bool, threads: int, sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Both benchmarks at every size, each in its own child process (``threads`` torch CPU threads); returns the
    result record."""
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    record: dict[str, Any] = {"benchmark": "scale", "quick": quick, "sizes": list(sizes), "features": FEATURES,
                              "pixels": list(PIXELS)}
    for kind in ("search", "generate"):
        rows = []
        for n in sizes:
            out = subprocess.run([sys.executable, "-m", "bench.scale", kind, str(n), device_name, str(threads)],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"scale {kind} {n}: child failed\n{out.stderr[-3000:]}")
            rows.append(json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]))
            print(f"  {kind} {n}: {rows[-1]}", flush=True)
        _growth(rows, ("feature_s", "pixel_s", "peak_mib", "search_mib", "inputs_mib") if kind == "search"
                else ("seconds", "peak_mib"))
        record[kind] = rows
    record["machine"] = machine_info(torch.device("cuda" if device_name != "cpu" and torch.cuda.is_available()
                                                  else "cpu"))
    return record


SEARCH_COLUMNS = [("synthetic x real", "n_real"), ("feature s", "feature_s"), ("× prev", "feature_s_growth"),
                  ("pixel s", "pixel_s"), ("× prev", "pixel_s_growth"), ("inputs MiB", "inputs_mib"),
                  ("peak MiB", "peak_mib"), ("× prev", "peak_mib_growth"), ("search MiB", "search_mib"),
                  ("× prev", "search_mib_growth"), ("CUDA peak MiB", "cuda_peak_mib")]
GENERATE_COLUMNS = [("images", "images"), ("shards", "shards"), ("seconds", "seconds"), ("× prev", "seconds_growth"),
                    ("images/s", "images_per_s"), ("peak MiB", "peak_mib"), ("× prev", "peak_mib_growth"),
                    ("disk MiB", "disk_mib")]


def tables(record: dict[str, Any]) -> str:
    return "\n\n".join([markdown_table(record["search"], SEARCH_COLUMNS),
                        markdown_table(record["generate"], GENERATE_COLUMNS)])


if __name__ == "__main__":  # the child: python -m bench.scale search|generate N DEVICE THREADS
    kind, size, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(int(sys.argv[4]))
    result = (search if kind == "search" else generate)(size, device)
    print(json.dumps(result), flush=True)
