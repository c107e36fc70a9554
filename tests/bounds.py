"""Run a piece of code in a fresh interpreter under resource bounds: the hostile-input tests' "refused quickly in
bounded memory" is a bound (``RLIMIT_AS``, ``RLIMIT_CPU``), never a timing measurement.

The bounds count from the moment the code starts, after its imports: ``memory_mb`` of address space above what the
interpreter holds then, ``cpu_s`` seconds of CPU time. Exceeding either kills the child (or makes it raise
MemoryError), and the test sees a failed run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = """
import resource, sys
def _vm_bytes():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
_used = resource.getrusage(resource.RUSAGE_SELF)
_cpu = int(_used.ru_utime + _used.ru_stime) + 1
resource.setrlimit(resource.RLIMIT_CPU, (_cpu + {cpu_s}, _cpu + {cpu_s} + 5))
resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + {memory_mb} * 2**20,) * 2)
"""


def run_bounded(setup: str, code: str, *, memory_mb: int = 300, cpu_s: int = 5,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``setup`` (imports; unbounded), then ``code`` under the bounds; stdout/stderr captured as text."""
    script = "\n".join([textwrap.dedent(setup), PRELUDE.format(memory_mb=memory_mb, cpu_s=cpu_s),
                        textwrap.dedent(code)])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
