"""The pixel-vs-latent bench path (``python -m bench --size ...``) on the CPU, as the GPU host would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.sizes import unet_levels
from tests.markers import slow

REPO = Path(__file__).resolve().parents[2]
# What the GPU host lacks (it has torch, numpy, einops, pandas, pillow, scikit-learn and a carried monai wheel):
# the bench runs with these made unimportable, as there (monai's optional imports then skip them).
ABSENT_ON_GPU_HOST = ("prefect", "dvc", "albumentations", "pydantic", "rich", "pydicom", "nibabel", "tasks", "flows")
BLOCKER = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {absent!r}:
            raise ImportError('absent on the GPU host: ' + name)
sys.meta_path.insert(0, Absent())
"""


def test_unet_levels_take_the_input_down_to_8() -> None:
    assert [unet_levels(s) for s in (8, 16, 32, 64, 256)] == [2, 2, 3, 4, 6]
    with pytest.raises(ValueError, match="8 times a power of two"):
        unet_levels(48)


@slow
def test_quick_size_bench_runs_without_the_project_only_packages_and_writes_json_and_markdown(tmp_path) -> None:
    out = tmp_path / "results"
    argv = ["bench", "--only", "train", "--only", "sample", "--device", "cpu", "--family", "diffusion",
            "--family", "latent_diffusion", "--size", "32", "--size", "64", "--quick", "--threads", "1",
            "--out", str(out)]
    code = (BLOCKER.format(absent=set(ABSENT_ON_GPU_HOST)) + "import json, runpy, sys\n"
            f"sys.argv = {argv!r}\n"
            "runpy.run_module('bench', run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [record_path] = out.glob("sizes-cpu-*-quick.json")
    record = json.loads(record_path.read_text())
    assert record_path.with_suffix(".md").read_text().count("| 32 |") >= 3
    assert {(r["size"], r["family"], r.get("stage")) for r in record["train_rows"]} == {
        (s, "diffusion", "pixels") for s in (32, 64)} | {
        (s, "latent_diffusion", st) for s in (32, 64) for st in ("unet", "autoencoder")}
    assert {r["arm"] for r in record["train_rows"]} == {"baseline", "ours"}  # compile only on CUDA
    for row in record["summary"]:
        assert row["unet_stage_cheaper_x"] > 0 and row["sampling_faster_x"] > 0
        assert row["pixel_train_peak_mib"] > 0
    unet_inputs = {(r["size"], r["family"]): r["unet_input"] for r in record["sample_rows"]}
    assert unet_inputs == {(32, "diffusion"): "3x32x32", (32, "latent_diffusion"): "3x8x8",
                           (64, "diffusion"): "3x64x64", (64, "latent_diffusion"): "3x16x16"}


def test_size_bench_refuses_families_it_does_not_compare(tmp_path) -> None:
    from bench.__main__ import main

    with pytest.raises(SystemExit, match="drop --family gan"):
        main(["--only", "train", "--size", "32", "--family", "gan", "--quick", "--out", str(tmp_path)])
