"""What a published file may say about where things are: nothing local, nothing secret (docs/trust.md).

A published version (its manifest's lineage, ``params.yaml``, ``card.md``, ``report.html``, ``run.json``,
``metrics.json``, the generator's ``generator.json`` and card) is read by people who do not share the publisher's
machine. A local path there tells them nothing they can use and tells everyone the publisher's folder layout (a
user name, a project name); a URL may carry a credential. So every location is written in its public form
(``public_location``): a remote URL as given with any credential masked, a local path or ``file://`` URL as
``local:<its last name>``.
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from synthaug.tasks.core.errors import mask_secrets

LOCAL = "local:"
EXAMPLE_PREFIX = "example:"
# The params whose values are locations (files, folders, repositories, registries).
LOCATION_PARAMS = (("data", "repo"), ("publish", "registry"), ("publish", "remote"), ("model", "init_from"),
                   ("model", "pretrained"), ("filter", "extractor"), ("runner", "address"))


def public_location(value: str | None) -> str | None:
    """``value`` as a published file may show it: a URL (``https://``, ``s3://``, ``ssh://``, ``git@host:org/r``)
    with credentials masked; ``example:…`` as is; a local path (absolute or relative) or a ``file://`` URL as
    ``local:<last name>`` (``/home/me/data/scans`` -> ``local:scans``)."""
    if value is None or value.startswith((EXAMPLE_PREFIX, LOCAL)):
        return value
    text = value.strip()
    if text.lower().startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text or _scp_like(text):
        return mask_secrets(text)
    name = PureWindowsPath(text).name if "\\" in text else PurePosixPath(text.rstrip("/")).name
    return f"{LOCAL}{name or 'folder'}"


def _scp_like(text: str) -> bool:
    """``user@host:path``, git's ssh short form (not a Windows drive ``C:\\``)."""
    head, colon, _ = text.partition(":")
    return bool(colon) and "@" in head and "/" not in head and "\\" not in head


def public_source(source: str | None, repo: str | None) -> str | None:
    """``data.source`` as published: a path inside ``data.repo`` as is (it names data in that repository), a local
    one in its public form."""
    return source if repo is not None and source is not None else public_location(source)


def public_lineage(lineage: dict[str, Any]) -> dict[str, Any]:
    """A source lineage (``source``, ``repo``, ...; the data params under ``params``) with every location public."""
    out = dict(lineage)
    repo = lineage.get("repo")
    out["source"] = public_source(lineage.get("source"), repo)
    out["repo"] = public_location(repo)
    if isinstance(lineage.get("params"), dict):
        params = dict(lineage["params"])
        params["source"] = public_source(params.get("source"), params.get("repo"))
        params["repo"] = public_location(params.get("repo"))
        out["params"] = params
    return out


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Dumped params (``Params.model_dump(mode="json")``) with every location of ``LOCATION_PARAMS`` and
    ``data.source`` public."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in params.items()}
    for section, key in LOCATION_PARAMS:
        if isinstance(out.get(section), dict) and isinstance(out[section].get(key), str):
            out[section][key] = public_location(out[section][key])
    data = out.get("data")
    if isinstance(data, dict) and isinstance(data.get("source"), str):
        data["source"] = public_source(data["source"], params["data"].get("repo"))
    return out


def public_params_yaml(text: str) -> str:
    """The resolved ``params.yaml`` text as a version publishes it (``public_params``)."""
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        return text
    return yaml.safe_dump(public_params(loaded), sort_keys=False)
