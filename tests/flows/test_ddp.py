"""Multi-process training: `synthaug train --processes 2` runs torch DDP through torchrun (gloo on the CPU)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

from synthaug.flows.cli import app
from synthaug.flows.dag import step
from synthaug.flows.launch import torchrun_step
from synthaug.flows.params import load_params
from synthaug.models.training import load_checkpoint
from tests.markers import integration, slow
from tests.toy import TINY, digits_folder

pytestmark = [integration, slow]

STEPS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    # Its own registry: the default one is relative to the working directory, where `make demo` may have published
    # a generator that the train step would then warm-start from.
    overrides = [*TINY, f"data.source={digits_folder(root / 'source')}", f"model.vae.steps={STEPS}",
                 f"publish.registry={root / 'registry' / 'repo'}"]
    step("ingest").run(load_params(None, overrides), root / "a")
    return root, overrides


def test_two_cpu_processes_train_and_write_one_checkpoint(setup, tmp_path):
    root, overrides = setup
    work = root / "a"
    out = CliRunner().invoke(app, ["train", "-w", str(work), *(a for o in overrides for a in ("-S", o)),
                                   "--processes", "2"])
    assert out.exit_code == 0, out.output
    model = work / "model"
    assert sorted(p.name for p in (model / "checkpoint").iterdir()) == ["config.json", "weights.pt"]
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()) == [
        "checkpoint/config.json", "checkpoint/weights.pt", "origin.json", "run.json", f"samples/step_{STEPS:06d}.png",
        "train.json",
        "train_log.jsonl"]
    log = [json.loads(line) for line in (model / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))  # rank 0 alone logs, once per step
    loaded, meta, _ = load_checkpoint(model / "checkpoint", torch.device("cpu"))
    assert meta["step"] == STEPS
    x = loaded.sample(torch.tensor([0, 1, 2, 3]), [0, 1, 2, 3])
    side = load_params(None, overrides).data.image_size
    assert x.shape == (4, 1, side, side) and torch.isfinite(x).all()

    # The same seed and process count give the same weights.
    again = tmp_path / "b"
    step("ingest").run(load_params(None, overrides), again)
    torchrun_step("train", load_params(None, [*overrides, "model.processes=2"]), again, 2)
    digest = [hashlib.sha256((w / "model" / "checkpoint" / "weights.pt").read_bytes()).hexdigest()
              for w in (work, again)]
    assert digest[0] == digest[1]
