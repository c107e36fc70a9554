"""synthaug: fix scarce and imbalanced image datasets with class-conditional synthetic data.

The command line (``synthaug --help``) runs the pipeline. From Python, a small API over what it publishes::

    import synthaug

    params = synthaug.load_params("params.yaml", ["generate.seed=7"])     # validated, as the CLI reads it
    folder = synthaug.fetch_dataset("registry/repo", "digits-balanced", "latest", "digits")  # a published version
    rows, lineage = synthaug.read_manifest(folder / "manifest.parquet")
    manifest = synthaug.sample_published("registry/repo@digits-balanced-generator/v1", "more", count=8)

Each name is imported on first use: ``import synthaug`` loads neither torch nor Prefect. The packages behind them
are ``synthaug.flows`` (the flows, the CLI, the params), ``synthaug.tasks`` (the steps on a shared core) and
``synthaug.models`` (networks and maths, torch and MONAI only).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Params", "fetch_dataset", "load_params", "read_manifest", "sample_published"]

_API = {  # name -> (module, attribute)
    "Params": ("synthaug.flows.params", "Params"),
    "load_params": ("synthaug.flows.params", "load_params"),
    "fetch_dataset": ("synthaug.tasks.core.publishing.registry", "fetch"),
    "read_manifest": ("synthaug.tasks.core.io.manifest", "read_manifest"),
    "sample_published": ("synthaug.tasks.core.publishing.generators", "sample_published"),
}


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'synthaug' has no attribute {name!r}; its API: {', '.join(__all__)}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next lookup finds it directly
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
