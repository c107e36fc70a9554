"""The data registry: a git + DVC repository holding dataset and generator versions, tagged ``<name>/v<N>``.

Naming and reading versions, what a version *is* (``dataset_identity``), and running git and DVC on it with secrets
redacted; publishing a version is the publish step (``tasks/publish/step.py``).

DVC artifacts: the registry's ``dvc.yaml`` declares each dataset and generator in its ``artifacts:`` section
(``artifact_name``), and each version also carries the tag DVC's model registry (GTO) reads,
``<artifact>@v<N>.0.0``, beside ``<name>/v<N>``; so ``dvc artifacts get <registry> <artifact>`` fetches the latest
version and ``--rev v<N>.0.0`` a given one. Dataset names may hold a ``.``, which artifact names may not: it becomes
``-`` there."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import uuid
from pathlib import Path

from synthaug.tasks.core.errors import UserError, mask_secrets, refuse_credentials
from synthaug.tasks.core.params.publish import check_name
from synthaug.tasks.core.publishing.vcs import PublishError, dvc, git, is_url, normalize_location, rmtree, run_command

log = logging.getLogger(__name__)

DATASETS_DIR = "datasets"
MODELS_DIR = "models"  # the generator of dataset <name> lives at models/<name>, tagged <name>-generator/v<N>
GENERATOR_SUFFIX = "-generator"
ARTIFACTS_FILE = "dvc.yaml"  # the registry's artifact declarations (its `artifacts:` section)
_ARTIFACT_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-_]*[a-zA-Z0-9])?")  # GTO's rule, without its '/'


def tag_for(name: str, version: int) -> str:
    return f"{name}/v{version}"


def fetch(registry: str, name: str, version: int | str, out: Path | str) -> Path:
    """Download version ``version`` of dataset ``name`` from ``registry`` into the new folder ``out``.

    Plain DVC, the same as ``dvc get <registry> datasets/<name> --rev <name>/v<N> -o <out>``.
    ``version`` is N, ``"vN"``, ``"<name>/vN"`` or ``"latest"``. ``out`` must not exist (or be an empty folder);
    it appears only when complete.
    """
    return _get_version(registry, f"{DATASETS_DIR}/{name}", name, name, version, Path(out))


def _get_version(registry: str, rel: str, name: str, tag_name: str, version: int | str, out: Path) -> Path:
    """``rel`` at version ``version`` of the tags ``<tag_name>/v<N>`` (``name``: the dataset) into ``out``."""
    try:
        check_name(name)
        refuse_credentials(registry, "registry")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    location = normalize_location(registry)
    _refuse_existing(out.absolute())
    tag = _resolve_tag(location, tag_name, version)
    if str(version).strip() != "latest":
        _require_tag(location, tag_name, tag)
    return _get_into(location, rel, tag, out)


def _require_tag(location: str, name: str, tag: str) -> None:
    """UserError naming the versions there are when ``location`` has no tag ``tag`` (DVC alone would say only that
    it failed); a missing or unreachable registry fails in ``git ls-remote``, with git's reason."""
    listed = git(["ls-remote", "--tags", "--refs", location, f"refs/tags/{name}/v*"], cwd=Path.cwd(),
                 what=f"reading the versions in {mask_secrets(location)}").stdout
    tags = sorted({line.split()[-1].removeprefix("refs/tags/") for line in listed.splitlines() if line.strip()},
                  key=lambda t: int(t.rpartition("/v")[2]) if t.rpartition("/v")[2].isdigit() else 0)
    if tag not in tags:
        there = f"its versions of {name}: {', '.join(tags)}" if tags else f"it has no version of {name}"
        raise UserError(f"{mask_secrets(location)}: no version {tag} ({there}); ask for one of them or 'latest'")


def _get_into(location: str, rel: str, tag: str, out: Path) -> Path:
    """``dvc get <location> <rel> --rev <tag>`` into the new folder ``out``, which appears only when complete."""
    out = out.absolute()  # DVC runs in out's parent: a relative path would land one level too deep
    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with tempfile.TemporaryDirectory(prefix="dvc-site-") as site:
            dvc(["get", "--quiet", location, rel, "--rev", tag, "-o", str(partial)],
                 cwd=out.parent, site_cache=Path(site), what=f"dvc get {tag} from {mask_secrets(location)}")
        if out.exists():
            out.rmdir()
        partial.rename(out)
    finally:
        rmtree(partial)
    return out


def _refuse_existing(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists; fetch into a new folder")


def _resolve_tag(location: str, name: str, version: int | str) -> str:
    text = str(version).strip()
    if text == "latest":
        listed = git(["ls-remote", "--tags", "--refs", location, f"refs/tags/{name}/v*"], cwd=Path.cwd(),
                      what=f"listing the versions of {name} in {mask_secrets(location)}").stdout
        pattern = re.compile(rf"refs/tags/{re.escape(name)}/v([1-9][0-9]*)")
        versions = [int(m.group(1)) for line in listed.splitlines() if (m := pattern.search(line.split()[-1]))]
        if not versions:
            raise UserError(f"{mask_secrets(location)}: no published version of {name!r}")
        return tag_for(name, max(versions))
    text = text.removeprefix(f"{name}/").removeprefix("v")
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"version {version!r}: expected N, 'vN', '{name}/vN' or 'latest' (N >= 1)")
    return tag_for(name, int(text))


def artifact_name(name: str) -> str | None:
    """The DVC artifact name of dataset (or generator) ``name``: ``.`` becomes ``-``; None when the result is still no
    valid artifact name (e.g. it ends in ``_``): that dataset is then not declared as an artifact."""
    candidate = name.replace(".", "-")
    return candidate if _ARTIFACT_NAME.fullmatch(candidate) else None


def artifact_tag(name: str, version: int) -> str | None:
    """The tag DVC's ``dvc artifacts get`` reads for version ``version`` of ``name``: ``<artifact>@v<N>.0.0``."""
    artifact = artifact_name(name)
    return None if artifact is None else f"{artifact}@v{version}.0.0"


def dataset_identity(folder: Path) -> str:
    """What a dataset version *is*: sha256 over its manifest's data columns (the contract's columns, no scores),
    row by row in path order. A version is new only when this differs from the latest one's: the card, metrics,
    report, params and run record around the same images never make one.

    The manifest stands for the images because every ``image_id`` is the sha256 of its file: that is checked here,
    and so is that every file under ``images/`` is in the manifest. Raises UserError naming the first mismatch.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthaug.tasks.core.io.files import file_sha256

    folder = Path(folder)
    manifest = folder / "manifest.parquet"
    try:
        table = pq.read_table(manifest)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UserError(f"{manifest}: not a readable parquet manifest ({exc}); nothing was published") from None
    rows = identity_rows(table)
    listed = {str(r["path"]) for r in rows}
    for row in rows:
        path = folder / str(row["path"])
        if not path.is_file():
            raise UserError(f"{path}: listed in the manifest but missing; assemble the dataset again")
        if file_sha256(path) != row.get("image_id"):
            raise UserError(f"{path}: its sha256 is not the manifest's image_id; assemble the dataset again")
    images = folder / "images"
    extra = sorted(p.relative_to(folder).as_posix() for p in images.rglob("*") if p.is_file()) if images.is_dir() \
        else []
    extra = [p for p in extra if p not in listed]
    if extra:
        raise UserError(f"{folder / extra[0]}: an image the manifest does not list ({len(extra)} in all); assemble "
                        "the dataset again")
    return rows_identity(rows)


def identity_rows(table: object) -> list[dict]:
    """The data columns of a manifest table (pyarrow), one dict per row, in path order."""
    from synthaug.tasks.core.io.manifest import COLUMNS

    present = [c for c in COLUMNS if c in table.column_names]  # type: ignore[attr-defined]
    return sorted(table.select(present).to_pylist(), key=lambda r: str(r.get("path")))  # type: ignore[attr-defined]


def rows_identity(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update((json.dumps(row, sort_keys=True, default=str) + "\n").encode())
    return digest.hexdigest()


def generator_name(name: str) -> str:
    """The tag prefix of dataset ``name``'s generator: its versions are ``<name>-generator/v<N>``."""
    return f"{name}{GENERATOR_SUFFIX}"


def latest_generator(registry: str, name: str) -> str | None:
    """The tag of the last generator published with dataset ``name`` in ``registry`` (None: none yet, or no
    registry there). Reads only the registry's tags (``git ls-remote``)."""
    location = normalize_location(registry)
    if not is_url(location) and not Path(location).exists():  # created by the first publish
        return None
    try:
        return _resolve_tag(location, generator_name(name), "latest")
    except PublishError:  # the registry is unreachable: say so rather than silently train from scratch
        raise
    except UserError:  # no generator version yet
        return None


def fetch_generator(registry: str, tag: str, out: Path) -> Path:
    """Download generator version ``tag`` (``<name>-generator/v<N>``) from ``registry`` into the new folder ``out``:
    plain DVC, the same as ``dvc get <registry> models/<name> --rev <tag> -o <out>``."""
    gname, _, version = tag.rpartition("/")
    if not gname.endswith(GENERATOR_SUFFIX) or not re.fullmatch(r"v[1-9][0-9]*|latest", version):
        raise UserError(f"generator tag {tag!r}: expected <dataset>{GENERATOR_SUFFIX}/v<N> (or /latest), e.g. "
                        f"digits-balanced{GENERATOR_SUFFIX}/v1")
    name = gname.removesuffix(GENERATOR_SUFFIX)
    return _get_version(registry, f"{MODELS_DIR}/{name}", name, gname, version, Path(out))


def code_version() -> str:
    """The pipeline code's version: ``git describe`` (full sha, ``-dirty`` when modified) of the synthaug checkout,
    or the installed package version when the code is not a git checkout."""
    root = Path(__file__).resolve().parents[3]  # the checkout holding tasks/core/publishing/
    top = run_command(["git", "rev-parse", "--show-toplevel"], cwd=root, check=False)
    if top.returncode == 0 and Path(top.stdout.strip()).resolve() == root:
        described = run_command(["git", "describe", "--tags", "--always", "--dirty", "--abbrev=40"], cwd=root,
                                check=False)
        if described.returncode == 0 and described.stdout.strip():
            return f"git {described.stdout.strip()}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"synthaug {version('synthaug')}"
    except PackageNotFoundError:
        return "unknown"



