"""Test-wide environment: nothing calls the network or writes outside temp dirs."""

import os
import tempfile

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


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (`--dist loadgroup`)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test without an xdist_group runs in the group of its module: a module's fixtures (a trained model, a
    dvc-repro'd clone) are then built by one test process, not by every process that gets one of its tests."""
    for item in items:
        if next(item.iter_markers("xdist_group"), None) is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
