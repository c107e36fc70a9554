"""`synthaug assess` as a user runs it: the steps up to ingest through Prefect, then the verdict on the console."""

import json
from pathlib import Path

from typer.testing import CliRunner

from synthaug.flows.cli import app
from tests.markers import slow
from tests.tasks.test_assess import FAST
from tests.toy import digits_folder


@slow  # Prefect's temporary server starts first
def test_assess_prints_the_verdict_of_each_scarce_class_as_an_estimate(tmp_path: Path) -> None:
    source = digits_folder(tmp_path / "digits", {"0": 60, "1": 60, "2": 60, "3": 20})
    work = tmp_path / "work"
    sets = [f"data.source={source}", "data.val_fraction=0.3", "data.test_fraction=0.1", *FAST]
    done = CliRunner().invoke(app, ["assess", "-w", str(work), *(a for s in sets for a in ("-S", s))])
    assert done.exit_code == 0, done.output
    record = json.loads((work / "assess" / "assess.json").read_text())
    printed = " ".join(done.output.split())  # the console wraps long lines
    assert "an estimate from the real images alone" in printed
    assert record["lines"] and all(" ".join(line.split()) in printed for line in record["lines"])
    assert record["lines"][0].startswith(f"class 3: {record['classes']['3']['verdict']}")
