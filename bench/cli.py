"""How fast the command line answers: CPU seconds (user + system, of the process and its children) of
``synthaug --help``, ``synthaug run --help`` and a params error, against a bare ``python -c pass``.

Each command runs ``repeats`` times in turn (so a load change hits them alike); the median is reported. The commands
run with the ``synthaug`` beside this interpreter (``--synthaug`` picks another, e.g. an older checkout's venv, to
compare in one run).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "synthaug --help": ["{synthaug}", "--help"],
    "synthaug run --help": ["{synthaug}", "run", "--help"],
    "params error (synthaug plan -S model.famly=gan)": ["{synthaug}", "plan", "-S", "model.famly=gan"],
}


def cpu_seconds(cmd: list[str], cwd: Path) -> float:
    """User + system CPU seconds of ``cmd`` and everything it starts (``os.wait4`` of the child)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime


def run(repeats: int = 5, synthaug: str | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Median CPU seconds per command over ``repeats`` interleaved rounds (run in ``cwd``: no params.yaml there)."""
    exe = synthaug or str(Path(sys.executable).with_name("synthaug"))
    cwd = cwd or Path("/tmp")
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, cmd in COMMANDS.items():
            times[name].append(cpu_seconds([part.format(synthaug=exe) for part in cmd], cwd))
    return {"synthaug": exe, "repeats": repeats,
            "rows": [{"command": name, "cpu_s_median": round(statistics.median(t), 3),
                      "cpu_s_min": round(min(t), 3), "cpu_s_max": round(max(t), 3)} for name, t in times.items()]}


def table(record: dict[str, Any]) -> str:
    lines = ["| command | CPU s (median) | min | max |", "|---|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['cpu_s_median']:.2f} | {r['cpu_s_min']:.2f} | {r['cpu_s_max']:.2f} |"
              for r in record["rows"]]
    return "\n".join(lines)
