"""Test-wide environment: nothing calls the network or writes outside temp dirs."""

import os
import tempfile
from collections import Counter

import pytest

# Fixtures of the whole test run: the real Prefect server (started by the first test asking), the tiny workdirs.
pytest_plugins = ["tests.prefect_server", "tests.workdirs"]

# Before prefect/albumentations/dvc are imported anywhere (ENVIRONMENT.md).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="synthaug-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test nets are tiny: threads gain nothing, and on a shared 2-core machine they mostly wait on each other."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _quiet_logging_at_exit():
    """Prefect stops its temporary server at interpreter exit and logs that to pytest's already-closed capture
    stream; logging would print a 'closed file' traceback for each such record."""
    import logging

    yield
    logging.raiseExceptions = False


# The groups that run longest (minutes each; `pytest --durations`, docs/BENCHMARKS.md "Test tiers"), longest first.
# pytest-xdist hands out groups in collection order (`--no-loadscope-reorder` in the Makefile; its own order puts
# groups with many tests first, which left the longest ones to run alone at the end): starting these first lets
# the short ones fill in beside them.
LONGEST_FIRST = (
    "tests/flows/test_dvc_project.py", "prefect-server", "tests/flows/test_anonymize.py", "tests/tasks/test_publish.py",
    "tests/flows/test_tune.py", "tests/flows/test_latent.py", "tests/flows/test_gate.py", "tests/tasks/test_locks.py",
    "evaluated-workdir", "tests/flows/test_runners.py", "tests/flows/test_augment.py",
    "tests/tasks/test_generators.py")


def _group(item: pytest.Item) -> str:
    marker = next(item.iter_markers("xdist_group"))
    return marker.args[0] if marker.args else marker.kwargs["name"]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (`--dist loadgroup`)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test without an xdist_group runs in the group of its module: a module's fixtures (a trained model, a
    dvc-repro'd clone) are then built by one test process, not by every process that gets one of its tests. Then
    the groups are ordered: ``LONGEST_FIRST``, then the others by their number of tests (the order within a group
    stays)."""
    for item in items:
        if next(item.iter_markers("xdist_group"), None) is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    sizes = Counter(_group(item) for item in items)
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(_group(item), len(rank)), -sizes[_group(item)], _group(item)))
