"""The ``synthaug`` command line: one command per pipeline step, plus ``example``, ``run`` and ``anonymize``."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console

from synthaug.flows.dag import PRIVACY_STEPS, STEPS
from synthaug.flows.params import DEFAULT_PARAMS, Params, load_params
from synthaug.tasks.core.logs import get_logger, log_to_stderr, route_to_prefect

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
    from synthaug.tasks.core.sources.example import write_example

    summary = write_example(directory, seed=seed)
    console.print(summary)


def other_checkout(cwd: Path) -> Path | None:
    """The checkout whose code runs, when ``cwd`` is another synthaug checkout (`dvc repro` in a clone where
    `synthaug` on PATH was installed from elsewhere); None when they are the same or ``cwd`` is no checkout."""
    from synthaug.flows.code_deps import REPO_ROOT

    is_checkout = (cwd / "dvc.yaml").is_file() and (cwd / "flows" / "dag.py").is_file()
    return REPO_ROOT if is_checkout and cwd.resolve() != REPO_ROOT.resolve() else None


def _run_step(name: str, params: Params, workdir: Path) -> None:
    from synthaug.flows.dag import step
    from synthaug.tasks.core.io.locks import workdir_lock

    running = other_checkout(Path.cwd())
    if running is not None:  # DVC hashes this checkout's code as the stage's deps, but another checkout's code runs
        get_logger("cli").warning(f"warning: `synthaug {name}` runs the code in {running}, not in this checkout "
                                  f"({Path.cwd()}); run `pip install -e .` here so that dvc.lock matches what ran")

    if "WORLD_SIZE" in os.environ:  # a torchrun process: the command that launched it holds the workdir lock
        record = step(name).run(params, workdir)
    else:
        with workdir_lock(workdir):
            record = step(name).run(params, workdir)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
        for key, value in record.items():
            console.print(f"{key}: {value}")


def _add_step_command(name: str, help_text: str) -> None:
    """One CLI command per pipeline step, from the single DAG declaration (dvc.yaml runs these)."""

    def command(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt) -> None:
        _run_step(name, _params(params_file, overrides), workdir)

    def train_command(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt,
                      processes: int | None = typer.Option(
                          None, min=1, help="Train in N processes (torch DDP through torchrun); the same as "
                                            "-S model.processes=N.")) -> None:
        extra = [] if processes is None else [f"model.processes={processes}"]
        _run_step(name, _params(params_file, [*overrides, *extra]), workdir)

    def generate_command(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt,
                         generator: str | None = typer.Option(
                             None, help="Sample from a published generator, <registry>@<dataset>-generator/v<N> "
                                        "(plain DVC access to the registry; no workdir, no training)."),
                         count: int = typer.Option(8, min=1, help="With --generator: images per class."),
                         classes: str | None = typer.Option(
                             None, help="With --generator: comma-separated classes (default: all)."),
                         out: Path = typer.Option(Path("generated"), help="With --generator: the output folder."),
                         ) -> None:
        if generator is None:
            _run_step(name, _params(params_file, overrides), workdir)
            return
        params = _params(params_file, overrides)
        from synthaug.tasks.core.publishing.generators import sample_published

        wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        manifest = sample_published(generator, out, count=count, classes=wanted, params=params.generate)
        console.print(f"sampled {count} per class from {generator} into {out} (manifest {manifest})")

    commands = {"train": train_command, "generate": generate_command}
    app.command(name=name, help=help_text)(commands.get(name, command))


for _step in STEPS + PRIVACY_STEPS:
    _add_step_command(_step.name, _step.help)


def _run_flow(flow_fn, params: Params, workdir: Path) -> dict[str, dict]:
    """Run a pipeline flow and print each step's record, one line per step."""
    records = flow_fn(params, str(workdir))
    for name, record in records.items():
        console.print(f"[bold]{name}[/]: " + ", ".join(f"{k}={v}" for k, v in record.items()))
    return records


@app.command()
def run(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt) -> None:
    """Run the whole pipeline as the Prefect flow `augment` (a temporary local Prefect server; nothing to start)."""
    params = _params(params_file, overrides)  # a params error answers before Prefect and torch load
    from synthaug.flows.augment import augment

    records = _run_flow(augment, params, workdir)
    published = records["publish"]
    report = published.get("report") or records["report"]["report"]
    fresh = "" if published.get("new") else "; nothing new published: the images and manifest are those of this version"
    console.print(f"\n[bold]verdict[/]  {records['evaluate']['utility_gate']}\n"
                  f"[bold]dataset[/]  {published['registry']} @ {published['tag']} "
                  f"(working copy {published['dataset']}{fresh})\n[bold]report[/]   {report}\n"
                  f"[bold]metrics[/]  {records['evaluate']['metrics']}\n"
                  f"fetch it: {published['fetch']}", highlight=False, soft_wrap=True)


@app.command()
def anonymize(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt) -> None:
    """Publish synthetic images only, gated by privacy (memorization, membership attack): the flow `anonymize`.

    A failed gate publishes nothing and exits 1 naming each failed check, its measured value and its threshold.
    """
    params = _params(params_file, overrides)
    from synthaug.flows.anonymize import anonymize as anonymize_flow

    released = _run_flow(anonymize_flow, params, workdir)["release"]
    console.print(f"\n[bold]release[/]  {released['registry']} @ {released['tag']} (synthetic images only; working "
                  f"copy {released['dataset']})\n[bold]privacy[/]  {workdir / 'privacy' / 'privacy.json'}\n"
                  f"fetch it: {released['fetch']}", highlight=False, soft_wrap=True)


@app.command()
def compare(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt,
            workdir: Path = typer.Option(Path("data/work/compare"), "--workdir", "-w",
                                         help="Where each family's outputs go (<workdir>/<family>).")) -> None:
    """Train and evaluate every generator family on the same data; one comparison table (nothing published)."""
    params = _params(params_file, overrides)
    from synthaug.flows.compare import compare as run_compare

    console.print(f"comparison: {run_compare(params, str(workdir))}")


@app.command()
def tune(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt,
         out: Path = typer.Option(Path("params.tuned.yaml"), "--out", "-o",
                                  help="The params file the winning recipe is written to (commit it).")) -> None:
    """Choose the synthetic recipe (share, order, loss weight) on validation data: Optuna trials as Prefect tasks.

    The winner goes into --out and is confirmed once on the test split; `synthaug run -p <out>` publishes with it.
    """
    params = _params(params_file, overrides)
    from synthaug.flows.runners import task_runner
    from synthaug.flows.tune import tune as tune_flow

    result = tune_flow.with_options(task_runner=task_runner(params.runner))(params, str(workdir), str(out))
    recipe = result["winner"]
    guidance = f", sampling guidance {recipe['guidance']:g}" if "guidance" in recipe else ""
    console.print(f"\n[bold]recipe[/]   share {recipe['share']:.2f}, order {recipe['selection']}, synthetic loss "
                  f"weight {recipe['weight']:.2f}{guidance} (validation objective "
                  f"{result['validation_objective']:+.4f}; trials {result['trials']})\n[bold]params[/]   "
                  f"{result['params']}  (synthaug run -p {result['params']} publishes with it)\n[bold]test[/]     "
                  "confirmed once:", highlight=False)
    for line in result["test"]:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    console.print(result["gate"], highlight=False, soft_wrap=True)


@app.command()
def assess(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt) -> None:
    """Before any generator trains: would synthetic images help? Learning curves of each scarce class from the real
    images alone (1/4, 1/2 and all of its train images, both classifier families, scored on val), as an estimate.
    """
    params = _params(params_file, overrides)
    from synthaug.flows.assess import assess as assess_flow

    result = assess_flow(params, str(workdir))
    console.print("\n[bold]assess[/]   an estimate from the real images alone (learning curves on the val split), "
                  "not a measurement of synthetic images:", highlight=False)
    for line in result["lines"]:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    console.print(f"[bold]curves[/]   {result['assess']}", highlight=False)


@app.command()
def serve(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt, workdir: Path = WorkdirOpt,
          cron: str | None = typer.Option(None, help="Cron schedule (default: publish.schedule).")) -> None:
    """Serve the pipeline on a schedule (needs a Prefect server); a run publishes only when something changed."""
    _params(params_file, overrides)  # a params error answers before Prefect loads
    from synthaug.flows.serve import serve_command

    serve_command(params_file, overrides, workdir, cron=cron)


@app.command()
def dag(write: bool = typer.Option(False, help="Write dvc.yaml instead of printing it.")) -> None:
    """Print (or write) dvc.yaml: the same stages as the flow, each running one step through the CLI."""
    from synthaug.flows.dag import dvc_yaml

    text = dvc_yaml()
    if write:
        Path("dvc.yaml").write_text(text)
    else:
        typer.echo(text)


@app.command(name="params")
def params_command(params_file: Path = ParamsOpt, overrides: list[str] = SetOpt) -> None:
    """Print every param as resolved: params.yaml (the project's choices) and the overrides over the defaults."""
    from synthaug.flows.params import dump_params

    typer.echo(dump_params(_params(params_file, overrides)), nl=False)


@app.command(name="params-doc")
def params_doc(write: bool = typer.Option(False, help="Write docs/params.md instead of printing it.")) -> None:
    """Print (or write) docs/params.md: every param with its type, default and meaning."""
    from synthaug.flows.params_doc import DOC_PATH, params_reference

    text = params_reference()
    if write:
        Path(DOC_PATH).parent.mkdir(parents=True, exist_ok=True)
        Path(DOC_PATH).write_text(text)
    else:
        typer.echo(text, nl=False)


def main() -> None:
    """Console entry point: user errors print one line and exit 1 (SYNTHAUG_DEBUG=1 shows the traceback); SIGTERM
    and SIGINT stop the command within seconds, exiting 143 / 130 (``flows/stopping.py``)."""
    from synthaug.flows.stopping import install, stop_signal

    install()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls (and errors) offline
    # Prefect's temporary server can take minutes to start on a loaded machine; its default wait is shorter.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    # The synthaug logger's lines on stderr; in a flow run (`synthaug run`, `serve`) also in the run's log, while a
    # step run alone (`dvc repro`) has no run to send them to: Prefect then drops them silently.
    log_to_stderr()
    route_to_prefect()
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    try:
        app(standalone_mode=False)  # returns 130 when a KeyboardInterrupt (``Stopped``) ended the command
    except SystemExit:
        if stop_signal() is None:
            raise  # after a stop signal Prefect's engine exits 0 once it recorded the run as Crashed: see below
    except KeyboardInterrupt as exc:  # the with blocks have unwound
        _stopped(getattr(exc, "signum", signal.SIGINT))
    except Exception as exc:  # one line for the user; the traceback on request
        if os.environ.get("SYNTHAUG_DEBUG"):
            raise
        from click.exceptions import Abort, ClickException

        if isinstance(exc, ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, Abort):  # click turns a KeyboardInterrupt into Abort
            _stopped(getattr(exc.__cause__, "signum", signal.SIGINT))
        from synthaug.tasks.core.errors import mask_secrets

        first = str(exc).strip().splitlines()
        detail = mask_secrets("\n".join(first)) if first else type(exc).__name__
        console.print(f"[bold red]error:[/] {detail}", highlight=False)
        sys.exit(1)
    signum = stop_signal()
    if signum is not None:  # whatever ended the command after a stop signal, it exits with the signal's code
        _stopped(signum)


def _stopped(signum: int) -> None:
    """Exit after a stop signal: one line, and the shell's code for it (128 + the signal number)."""
    import gc

    from synthaug.flows.stopping import exit_code

    console.print(f"stopped ({signal.Signals(signum).name}); run the same command again to continue", highlight=False)
    gc.freeze()  # the interpreter's final collection of torch's and Prefect's objects took seconds: skipped
    sys.exit(exit_code(signum))
