"""The command line as a user runs it: a real subprocess, real files."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from typer.testing import CliRunner

from synthaug.flows.cli import app
from synthaug.tasks.core.io.manifest import COLUMNS
from tests.markers import integration

REPO = Path(__file__).resolve().parents[2]


def synthaug(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The real entry point in a fresh interpreter, as a user calls it."""
    return subprocess.run([sys.executable, "-m", "synthaug", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_every_command_has_help():
    runner = CliRunner()
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for command in ("example", "ingest", "plan", "train", "generate", "run", "dag", "anonymize", "privacy", "release"):
        assert command in out.output
        assert runner.invoke(app, [command, "--help"]).exit_code == 0


HEAVY = ("torch", "monai", "prefect", "pandas", "dvc")


def test_help_and_params_errors_load_no_heavy_library(tmp_path):
    """`synthaug --help` and a misspelt key answer without importing torch, MONAI, Prefect, pandas or DVC: they
    are imported inside the step that needs them (the time this saves is measured in `python -m bench --only cli`)."""
    script = (
        "import sys\n"
        "from synthaug.flows import cli\n"
        "for argv in (['--help'], ['run', '--help'], ['run', '-S', 'model.famly=gan'], ['serve', '-S', 'x.y=1'],\n"
        "             ['generate', '--generator', 'r@t', '-S', 'generate.seed=-1']):\n"
        "    sys.argv = ['synthaug', *argv]\n"
        "    try:\n"
        "        cli.main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:] + done.stderr[-2000:]
    assert "unknown key 'model.famly'" in done.stderr and "generate.seed" in done.stderr


@integration
def test_bad_param_exits_nonzero_with_one_line_reason(tmp_path):
    out = synthaug("plan", "-w", str(tmp_path), "-S", "plan.strategy=most")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "plan.strategy" in out.stderr and "match_majority" in out.stderr


@integration
def test_missing_source_names_the_path_and_the_key(tmp_path):
    out = synthaug("ingest", "-w", str(tmp_path / "w"), "-S", f"data.source={tmp_path / 'nope'}")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "nope" in out.stderr and "data.source" in out.stderr


@integration
def test_example_then_ingest_writes_contract_manifest(tmp_path):
    example = tmp_path / "x"
    assert synthaug("example", str(example)).returncode == 0
    out = synthaug("ingest", "-w", str(tmp_path / "w"), "-S", f"data.source={example}")
    assert out.returncode == 0, out.stderr
    manifest = tmp_path / "w" / "ingest" / "manifest.parquet"
    assert tuple(pq.read_schema(manifest).names[: len(COLUMNS)]) == COLUMNS
    frame = pd.read_parquet(manifest)
    assert set(frame["split"]) == {"train", "val", "test", "heldback"}
    assert (frame["source"] == "real").all()
    assert all((manifest.parent / p).is_file() for p in frame["path"])


@integration
def test_corrupt_and_zero_byte_images_are_quarantined_and_named(tmp_path):
    example = tmp_path / "x"
    assert synthaug("example", str(example)).returncode == 0
    (example / "3" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (example / "5" / "empty.png").write_bytes(b"")
    out = synthaug("ingest", "-w", str(tmp_path / "w"), "-S", f"data.source={example}")
    assert out.returncode == 0, out.stderr
    assert "corrupt.png" in out.stderr + out.stdout and "empty.png" in out.stderr + out.stdout
    quarantine = pd.read_parquet(tmp_path / "w" / "ingest" / "quarantine.parquet")
    named = " ".join(quarantine.astype(str).agg(" ".join, axis=1))
    assert "corrupt.png" in named and "empty.png" in named
    assert len(quarantine) == 2


def test_default_ingest_then_plan_in_process(tmp_path):
    """No configuration: the bundled example is written on first use, then planned with each strategy."""
    runner = CliRunner()
    work = str(tmp_path / "w")
    assert runner.invoke(app, ["ingest", "-w", work]).exit_code == 0
    for strategy, total in (("match_majority", 1220), ("target", 1300), ("ratio", 1712)):
        out = runner.invoke(app, ["plan", "-w", work, "-S", f"plan.strategy={strategy}", "-S", "plan.target=130"])
        assert out.exit_code == 0, out.output
        plan = pd.read_csv(tmp_path / "w" / "plan" / "plan.csv", dtype={"class": str})
        assert list(plan.columns) == ["class", "real", "target", "to_generate"]
        assert plan["target"].sum() == total


def test_a_step_run_from_another_checkout_names_the_code_that_runs(tmp_path):
    from synthaug.flows.cli import other_checkout
    from synthaug.flows.code_deps import REPO_ROOT

    assert other_checkout(REPO_ROOT) is None
    assert other_checkout(tmp_path) is None  # not a checkout: nothing to compare
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "dag.py").write_text("")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert other_checkout(tmp_path) == REPO_ROOT
