"""The ``publish`` section: the data registry, the dataset name and the utility gate."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ValidationInfo, field_validator

from synthaug.tasks.core.errors import refuse_credentials
from synthaug.tasks.core.params.base import Section

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_LICENSE_RE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")


CRON_ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *",
                "@yearly": "0 0 1 1 *"}


# publish.utility_gate: the rule the publish step enforces, or false (off); true is read as "harm"
GateMode = Literal["harm", "gain"] | bool
GATE_RULES: tuple[str, ...] = ("harm", "gain")


class PublishParams(Section):
    """``publish`` section: the data registry, the dataset name, the schedule and the utility gate.

    name: dataset name; the registry path is ``datasets/<name>`` and versions are tagged ``<name>/v<N>``.
      Letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit; at most 100 characters.
    registry: the data registry: a git URL (``https://…``, ``ssh://…``, ``git@host:org/repo.git``), a local bare
      repository (cloned like a URL), or a local working repository, created with git + DVC on first use if absent.
    remote: URL of the registry's default DVC remote (``s3://bucket/prefix``, ``gs://…``, ``ssh://…``, a local
      folder, ...). Set as the default remote when the registry is created; for an existing registry it must equal
      the registry's default remote. Credentials go into DVC's config or the environment, never here.
    push: push the data to ``remote`` and the commit + tag to the registry's origin. ``false`` commits and tags in a
      local registry only (an offline trial); a later run with ``true`` pushes the same content.
    schedule: cron (UTC) of ``synthaug serve`` and ``prefect.yaml``; a scheduled run that finds the source, params
      and code unchanged publishes nothing.
    utility_gate: what the evaluate step's utility evidence must show for the dataset to be published
      (``tasks.core.evaluation.gate.gate_verdict``): ``harm`` (``true`` means the same): publish unless the synthetic
      images measurably hurt against the best real baseline; ``gain``: publish only when they measurably help for at
      least one classifier family and measurably hurt for none; ``false``: publish anyway (the step's record and the
      card say when the harm rule refused).
    license: the license of the published dataset and generator, as a Hugging Face license id (``cc-by-4.0``,
      ``mit``, ``other``, ...), written into the cards' headers; null: the bundled example's ``cc-by-4.0``, else
      ``unknown`` (the source's license applies).
    """

    name: str = "digits-balanced"
    registry: str = "registry/repo"
    remote: str = "registry/remote"
    push: bool = True
    schedule: str = "0 3 * * *"
    utility_gate: GateMode = "harm"
    license: str | None = None

    @field_validator("utility_gate", mode="before")
    @classmethod
    def _gate_mode(cls, value: object) -> object:
        if value is True:
            return "harm"  # what `true` always meant: refuse only measurable harm
        if value is False or (isinstance(value, str) and value in GATE_RULES):
            return value
        raise ValueError("must be one of: harm, gain, false (true means harm)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        check_name(value)
        return value

    @field_validator("license")
    @classmethod
    def _license_id(cls, value: str | None) -> str | None:
        if value is not None and not _LICENSE_RE.fullmatch(value):
            raise ValueError(f"license {value!r} is not a license id: lowercase letters, digits, '.', '-', '+' "
                             "(e.g. 'cc-by-4.0', 'mit', 'other')")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        """A five-field cron expression (or @hourly, @daily, @weekly, @monthly, @yearly), checked with ``cronsim``
        without importing Prefect (which reads the same expression when it schedules)."""
        from datetime import datetime

        from cronsim import CronSim, CronSimError

        try:
            CronSim(CRON_ALIASES.get(value.strip(), value), datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"schedule {value!r} is not a cron expression ({exc}): minute hour day month weekday, "
                             "e.g. '0 3 * * *'") from None
        return value

    @field_validator("registry", "remote")
    @classmethod
    def _no_secrets(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        refuse_credentials(value, f"publish.{info.field_name}")
        return value


def check_name(name: str) -> None:
    """Raise ValueError unless ``name`` is safe as a folder name and as one component of a git tag."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
        raise ValueError(f"dataset name {name!r} is not allowed: use letters, digits, '.', '_', '-', start with a "
                         "letter or digit, no '..', not ending in '.' or '.lock', at most 100 characters")

