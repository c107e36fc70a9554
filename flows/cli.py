"""The ``synthaug`` command line: one command per pipeline step, plus ``example`` and ``run``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from flows.params import DEFAULT_PARAMS, Params, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fix scarce and imbalanced image datasets with class-conditional synthetic data.")
console = Console(stderr=True)

ParamsOpt = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="params.yaml to read (defaults apply when absent).")
SetOpt = typer.Option([], "--set", "-S", help="Override a param, e.g. -S model.family=gan (repeatable).")
WorkdirOpt = typer.Option(Path("data/work"), "--workdir", "-w", help="Where step outputs go (<workdir>/<step>).")


def _params(params_file: Path, overrides: list[str]) -> Params:
    return load_params(params_file, overrides)


@app.command()
def example(directory: Path = typer.Argument(..., help="Folder to write the example dataset into."),
            seed: int = typer.Option(0, help="Seed of the class cut and the splits.")) -> None:
    """Write the bundled scarce, imbalanced example (scikit-learn's handwritten digits)."""
    from tasks.example import write_example

    summary = write_example(directory, seed=seed)
    console.print(summary)


@app.command()
def ingest(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt) -> None:
    """Read the source dataset into <workdir>/ingest: normalized images, manifest.parquet, quarantine.parquet."""
    from tasks.ingest import ingest as run_ingest

    params = _params(params_file, overrides)
    result = run_ingest(params.data, workdir / "ingest", cache_dir=workdir / "sources")
    console.print(f"manifest: {result.manifest_path}")


@app.command()
def plan(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt) -> None:
    """Decide how many synthetic images each class gets; writes <workdir>/plan/plan.csv."""
    from tasks.plan import make_plan

    params = _params(params_file, overrides)
    make_plan(workdir / "ingest" / "manifest.parquet", params.plan, workdir / "plan")


@app.command()
def train(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt) -> None:
    """Train (or fine-tune, with model.init_from) the model.family generator; writes <workdir>/model."""
    from tasks.train import train as run_train

    params = _params(params_file, overrides)
    result = run_train(workdir / "ingest" / "manifest.parquet", params.model, workdir / "model")
    console.print(f"checkpoint: {result.checkpoint_dir} (sha256 {result.checkpoint_hash[:12]}, {result.steps} steps)")


@app.command()
def generate(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt) -> None:
    """Sample the planned number of images per class; writes <workdir>/generate (images + manifest.parquet)."""
    from tasks.generate import generate_from_plan

    params = _params(params_file, overrides)
    manifest = generate_from_plan(workdir / "plan" / "plan.csv", workdir / "model" / "checkpoint", params.generate,
                                  workdir / "generate")
    console.print(f"manifest: {manifest}")


def main() -> None:
    """Console entry point: user errors print one line and exit 1 (SYNTHAUG_DEBUG=1 shows the traceback)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    try:
        app(standalone_mode=False)
    except SystemExit:
        raise
    except Exception as exc:  # one line for the user; the traceback on request
        if os.environ.get("SYNTHAUG_DEBUG"):
            raise
        from click.exceptions import Abort, ClickException

        if isinstance(exc, ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, Abort):
            sys.exit(130)
        first = str(exc).strip().splitlines()
        detail = "\n".join(first) if first else type(exc).__name__
        console.print(f"[bold red]error:[/] {detail}", highlight=False)
        sys.exit(1)
