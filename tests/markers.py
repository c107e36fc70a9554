"""The test tiers, in one place. ``make test`` (the fast tier, before every commit) runs what carries none of the
markers below; ``make test-full`` (CI) runs everything.

- ``slow``: more than about ten seconds of work (a pipeline end to end, a trained generator, a full evaluation).
- ``integration``: real outside parts: a Prefect server, git + DVC repositories and remotes, ``synthaug`` or
  ``torchrun`` in subprocesses.
- ``browser``: a real Chromium renders the report (``chromium``; .ci/run installs it).
- ``dicom``: dicom3tools' ``dciodvfy`` validates written DICOM files (.ci/run installs it).
- ``cuda``: needs a CUDA GPU; skipped where there is none (CI and the development machines have none).

A test needing a tool that is missing fails, naming the tool: nothing is skipped to make a run green, except the
CUDA tests on a machine without a GPU.
"""

from __future__ import annotations

import shutil

import pytest

slow = pytest.mark.slow
integration = pytest.mark.integration
browser = pytest.mark.browser
dicom = pytest.mark.dicom
cuda = pytest.mark.cuda

# name -> what it means; pyproject.toml registers the same names (``--strict-markers``), and tests/test_layout.py
# checks the two lists agree.
MARKERS = {
    "slow": "more than about ten seconds of work; not in the fast tier (make test)",
    "integration": "real outside parts (Prefect server, git + DVC, subprocesses); not in the fast tier",
    "browser": "a real Chromium renders the report; not in the fast tier",
    "dicom": "dicom3tools' dciodvfy validates DICOM files; not in the fast tier",
    "cuda": "needs a CUDA GPU; skipped without one",
}
FAST_TIER = "not slow and not integration and not browser and not dicom"  # make test's -m expression


def require_tool(name: str, install: str) -> str:
    """The path of the command-line tool ``name``; fails the test (never skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {install}")
    return path
