"""The synthaug logger and step progress: log lines when output is not a terminal, a rich bar when it is."""

import io
import logging
import os
import subprocess
import sys

from rich.console import Console

from synthaug.tasks.core.logs import EXTRA_LOGGERS, ROOT, get_logger, progress, route_to_prefect
from synthaug.tasks.filter.step import summary_line


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith(ROOT)]


def test_not_a_terminal_logs_every_tenth_and_the_end(caplog):
    caplog.set_level(logging.INFO, logger=ROOT)
    plain = Console(file=io.StringIO(), force_terminal=False)
    with progress(get_logger("train"), "train vae", 20, unit="steps", console=plain, every_s=3600) as bar:
        for step in range(21):
            bar(step, f"loss={1 / (step + 1):.4f}")
    lines = _messages(caplog)
    assert [line.split(" (")[0] for line in lines][:2] == ["train vae: 0/20 steps loss=1.0000",
                                                           "train vae: 2/20 steps loss=0.3333"]
    assert len(lines) == 11 and lines[-1].startswith("train vae: 20/20 steps loss=0.0476")
    assert plain.file.getvalue() == ""  # no bar drawn into a log


def test_not_a_terminal_logs_at_least_every_interval(caplog):
    caplog.set_level(logging.INFO, logger=ROOT)
    plain = Console(file=io.StringIO(), force_terminal=False)
    with progress(get_logger("generate"), "generate", 1000, unit="images", console=plain, every_s=0) as bar:
        for done in (1, 2, 3):
            bar(done)
    # every update is due at a 0 s interval, and the last one was said already: no closing repeat
    assert [m.split(" (")[0] for m in _messages(caplog)] == [
        "generate: 1/1000 images", "generate: 2/1000 images", "generate: 3/1000 images"]


def test_a_terminal_gets_a_bar_and_one_closing_line(caplog):
    caplog.set_level(logging.INFO, logger=ROOT)
    tty = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress(get_logger("filter"), "filter: score", 8, unit="images", console=tty) as bar:
        for done in range(9):
            bar(done)
    assert "filter: score" in tty.file.getvalue() and "8/8" in tty.file.getvalue()
    assert [m.split(" (")[0] for m in _messages(caplog)] == ["filter: score: 8/8 images"]


def test_route_to_prefect_adds_synthaug_to_the_extra_loggers(monkeypatch):
    monkeypatch.setenv(EXTRA_LOGGERS, "dvc")
    route_to_prefect()
    route_to_prefect()
    assert os.environ[EXTRA_LOGGERS] == "dvc,synthaug"


def test_cli_prints_synthaug_records_once_on_stderr():
    code = ("import logging, sys; from synthaug.flows import cli; sys.argv = ['synthaug', '--help']; "
            "cli.log_to_stderr(); cli.log_to_stderr(); logging.getLogger('synthaug.publish').info('published x/v1')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.count("published x/v1") == 1, done.stderr


def test_filter_summary_line_names_accepted_and_rejected_by_reason():
    summary = {"totals": {"needed": 10, "generated": 16, "generated_topup": 2, "accepted": 9, "shortfall": 1},
               "classes": {"a": {"rejected": {"label": 2, "unrealistic": 1, "surplus": 0}},
                           "b": {"rejected": {"label": 1, "unrealistic": 0, "surplus": 3}}}}
    assert summary_line(summary) == ("filter: accepted 9 of 16 generated (2 by top-up; 10 needed, shortfall 1); "
                                     "rejected: label 3, unrealistic 1, surplus 3")

