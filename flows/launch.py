"""Run a step in several processes through ``torchrun`` (``torch.distributed.run``): multi-GPU training."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

from synthaug.flows.params import Params, dump_params
from synthaug.tasks.core.errors import UserError


def torchrun_step(step: str, params: Params, workdir: Path, processes: int) -> None:
    """Run ``synthaug <step>`` with exactly ``params`` in ``processes`` processes on this host.

    ``torchrun --standalone`` sets RANK, LOCAL_RANK and WORLD_SIZE for each process and a free rendezvous port;
    each process joins the process group (``tasks.train``), one GPU per process on CUDA, gloo on the CPU. The
    processes read the resolved params from a temporary file, so they run with exactly these values.
    """
    with tempfile.TemporaryDirectory(prefix="synthaug-torchrun-") as tmp:
        resolved = Path(tmp) / "params.yaml"
        resolved.write_text(dump_params(params))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "synthaug", step, "--params", str(resolved), "--workdir", str(workdir)]
        proc = subprocess.Popen(cmd)
        try:
            while proc.poll() is None:  # wake every half second: a stop signal is handled (flows/stopping.py)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.5)
        finally:
            if proc.poll() is None:  # stopped while torchrun ran: it stops too
                proc.terminate()
                proc.wait(timeout=30)
    if proc.returncode != 0:
        raise UserError(f"{step} in {processes} processes (torchrun) failed with exit code {proc.returncode}; "
                        "the processes' errors are printed above")
