"""Source readers: an image folder, a CSV/parquet table or a MedMNIST-style ``.npz`` -> a list of items.

Images are ordinary files (PNG, JPEG, TIFF, BMP) or medical ones (``tasks.core.sources.medical``): DICOM files, NIfTI
files and DICOM *series folders*. In the folder layout a series folder is a folder below the class folder that holds
DICOM files (``<root>/<label>/<series>/*.dcm``, read as one volume); DICOM files directly in the class folder are single
images. In a table, a ``path`` that is a folder is a series folder.

A reader decodes no image. It says where each image is, its label and its split (None: the source gives none),
or why the item is refused before anything is read (``problem``; ingest quarantines it with that reason).
``fetch_dvc`` brings a path of a git/DVC repository at a revision into a local cache first.

Labels become folder names (``images/<label>/``) in the working copy and in the published dataset, so every label
is checked (``label_problem``) before anything is written: no path separator, ``..``, NUL or control character, no
leading ``.`` (git and DVC skip ``.git``/``.dvc`` folders, so such a class would silently vanish from a published
version), no Windows device name, at most ``MAX_LABEL_BYTES``. Symlinks in a folder source are followed only while
they stay inside the source root (a table's rows are held to the same rule).

``content_hash`` is the source's identity: sha256 over every file's path and bytes. ``HashCache`` remembers each
file's hash with its size, mtime and inode (as DVC's state database does), so a re-run reads only changed files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from synthaug.tasks.core.errors import UserError, exception_chain
from synthaug.tasks.core.io.files import atomic_path, file_sha256, tree_sha256
from synthaug.tasks.core.io.manifest import SPLITS
from synthaug.tasks.core.sources.medical import DICOM_SUFFIXES, NIFTI_SUFFIXES, is_dicom, is_nifti

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
KNOWN_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES
TABLE_SUFFIXES = (".csv", ".parquet")
SPLITS_FILE = "splits.csv"  # optional path,split table at the root of an image folder
NPZ_SPLITS = ("train", "val", "test")  # MedMNIST keys: <split>_images, <split>_labels
ESCAPES = "path escapes the source root"
MAX_LABEL_BYTES = 200  # UTF-8 bytes; file systems allow 255 per name, and the label is one
# Device names Windows reserves in any case and with any extension: a dataset holding one cannot be checked out there.
_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, eq=False)
class Item:
    """One image of a source, or one refused entry."""

    ref: str  # how reports name it: path relative to the source root, or ``file.npz:train[3]``
    label: str | None
    split: str | None  # None: ingest assigns one
    pixels: Path | np.ndarray | None  # a file, a series folder or an (H, W[, C]) array; None when refused
    problem: str | None = None  # reason to quarantine without reading


@dataclass(frozen=True)
class Source:
    root: Path  # folder that ``Item.ref`` paths and the content hash are relative to
    items: list[Item]
    files: list[Path] = field(default_factory=list)  # every file whose bytes make up the source


def read_source(path: Path) -> Source:
    """Dispatch on what ``path`` is: a folder, a ``.csv``/``.parquet`` table or a ``.npz`` archive."""
    if path.is_dir():
        return read_folder(path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return read_table(path)
    if path.suffix.lower() == ".npz":
        return read_npz(path)
    raise UserError(f"data.source: {path} is not an image folder, a .csv/.parquet table or a .npz file")


def read_folder(root: Path) -> Source:
    """``<root>/<label>/**/<image>``; splits from ``<root>/splits.csv`` (path,split) when present."""
    splits = _read_splits_file(root) if (root / SPLITS_FILE).is_file() else {}
    files, escaping, odd = _walk(root)
    items = [Item(ref, None, None, None, ESCAPES) for ref in escaping]
    items += [Item(ref, _class_of(ref), None, None, why) for ref, why in odd]
    series: set[Path] = set()
    for path in files:
        ref = path.relative_to(root).as_posix()
        parts = PurePosixPath(ref).parts
        if len(parts) == 1:
            # Loose files at the root (splits.csv, a README) are not images of any class; loose images are reported.
            if _known(path):
                items.append(Item(ref, None, None, None, "not inside a class folder (<root>/<label>/...)"))
            continue
        if len(parts) > 2 and is_dicom(path):
            series.add(path.parent)  # one item for the folder, below
            continue
        split, split_problem = splits.pop(ref, (None, None))
        items.append(_file_item(ref, parts[0], split, path, split_problem))
    for folder in series:
        ref = folder.relative_to(root).as_posix()
        split, split_problem = splits.pop(ref, (None, None))
        items.append(_file_item(ref, PurePosixPath(ref).parts[0], split, folder, split_problem))
    items.sort(key=lambda item: PurePosixPath(item.ref).parts)  # series folders among the files, in path order
    # Whatever splits.csv still lists has no file behind it.
    items += [Item(ref, None, None, None, "listed in splits.csv but file not found") for ref in sorted(splits)]
    return Source(root, items, files)


def read_table(table: Path) -> Source:
    """Rows ``path,label[,split]``; paths relative to the table's folder, which they may not leave."""
    table = table.resolve()  # the rows' paths are resolved too: both sides must match for relative_to
    frame = _read_frame(table, required=("path", "label"))
    root = table.parent
    items, files = [], {table}
    for row in frame.to_dict("records"):
        ref, label = _text(row["path"]), _text(row["label"])
        split, problem = _split(row.get("split"))
        if "\0" in ref:  # no file system path holds one (and os functions raise on it)
            items.append(Item(ref, label or None, split, None, "path holds a NUL byte"))
            continue
        path = _inside(root, ref)
        if path is not None and path.is_file():
            files.add(path)  # hashed even when the row is quarantined: the file's bytes decide that too
        elif path is not None and path.is_dir():
            files.update(p for p in path.iterdir() if p.is_file())  # a series folder
        if not ref:
            problem = "no path"
        elif path is None:
            problem = ESCAPES
        elif not label:
            problem = "no label"
        elif problem is None and not path.exists():
            problem = "file not found"
        elif problem is None and not path.is_file() and not path.is_dir():
            problem = NOT_REGULAR
        elif problem is None and path.is_dir() and not any(is_dicom(p) for p in path.iterdir() if p.is_file()):
            problem = "a folder, not an image file (a row may name a folder only when it is a DICOM series)"
        items.append(_file_item(ref, label or None, split, path, problem))
    return Source(root, items, sorted(files))


def read_npz(path: Path) -> Source:
    """MedMNIST layout: ``<split>_images`` uint8 (N, H, W[, C]) with ``<split>_labels`` (N,) or (N, 1)."""
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"data.source: {path} is not a readable .npz archive ({exc})") from None
    items = []
    for split in NPZ_SPLITS:
        if f"{split}_images" not in arrays:
            continue
        images, labels = arrays[f"{split}_images"], arrays.get(f"{split}_labels")
        where = f"data.source: {path}: {split}_images"
        if labels is None or labels.size != len(images):
            raise UserError(f"{where} needs {split}_labels with one label per image, shape (N,) or (N, 1)")
        if images.dtype not in (np.uint8, np.uint16) or images.ndim not in (3, 4):
            raise UserError(f"{where} must be uint8 or uint16 (N, H, W[, C]); got {images.dtype} {images.shape}")
        if images.ndim == 4 and images.shape[-1] not in (1, 3, 4):
            raise UserError(f"{where} has {images.shape[-1]} channels; expected 1, 3 or 4")
        for i, (image, label) in enumerate(zip(images, labels.reshape(-1), strict=True)):
            items.append(Item(f"{path.name}:{split}[{i}]", str(label.item()), split, image))
    if not items:
        keys = ", ".join(f"{s}_images" for s in NPZ_SPLITS)
        raise UserError(f"data.source: {path} holds none of {keys} (found: {', '.join(arrays) or 'nothing'})")
    return Source(path.parent, items, [path])


def label_problem(label: str | None) -> str | None:
    """Why ``label`` cannot name a class folder, or None when it can (see the module docstring)."""
    if not label:
        return "no label"
    shown = repr(label if len(label) <= 60 else label[:60] + "...")
    if _CONTROL.search(label):
        return f"label {shown} holds a NUL or control character; rename the class"
    if "/" in label or "\\" in label:
        return f"label {shown} holds a path separator; a label is one folder name"
    if label.startswith("."):
        return (f"label {shown} starts with '.': hidden folders ('.git', '.dvc', '..') are skipped or special in git "
                "and DVC; rename the class")
    if label != label.strip() or label.endswith("."):
        return f"label {shown} ends in a space or '.', which some file systems drop; rename the class"
    if _RESERVED.fullmatch(label):
        return f"label {shown} is a reserved device name on Windows; rename the class"
    if len(label.encode()) > MAX_LABEL_BYTES:
        return f"label {shown} is {len(label.encode())} bytes long; at most {MAX_LABEL_BYTES} (a folder name)"
    return None


class HashCache:
    """sha256 of files, reused while a file's size, mtime and inode are unchanged (DVC's state database idea).

    ``path``: the JSON file the hashes are kept in between runs; None keeps them in memory only.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, list] = {}
        self.changed = False
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError):  # a damaged cache only costs hashing again
                loaded = json.loads(path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}

    def sha256(self, file: Path) -> str:
        # Keyed by the absolute path as given: the state is the stat of what it names (links followed), so a link
        # pointed elsewhere is read again. No resolve(): it costs a syscall per path component.
        stat = os.stat(file)
        key, state = os.path.abspath(file), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = self.entries.get(key)
        if isinstance(entry, list) and entry[:3] == state and len(entry) == 4:
            return str(entry[3])
        sha = file_sha256(file)
        self.entries[key] = [*state, sha]
        self.changed = True
        return sha

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        with atomic_path(self.path, per_process=True) as tmp:
            tmp.write_text(json.dumps(self.entries))
        self.changed = False


def content_hash(source: Source, cache: HashCache | None = None) -> str:
    """sha256 over the sorted (path relative to the root, file sha256) pairs of the source's files.

    ``cache``: reuse the hashes of files whose stat is unchanged (and remember the new ones).
    """
    cache = cache or HashCache()
    digest = tree_sha256(source.files, source.root, sha256=cache.sha256)
    cache.save()
    return digest


def source_files(path: Path) -> Source:
    """The source at ``path`` as ``content_hash`` needs it: its root and files. A folder is only listed (its items,
    which cost more than hashing its files, are left empty); a table or an archive is read."""
    return Source(path, [], _walk(path)[0]) if path.is_dir() else read_source(path)


def fetch_dvc(repo: str, rev: str | None, path: str, cache_dir: Path) -> tuple[Path, str]:
    """Copy ``path`` of the git/DVC repository ``repo`` at ``rev`` (None: HEAD) into ``cache_dir``.

    The copy is keyed by the resolved commit, so a moving branch never serves stale data and a fixed commit is
    fetched once. A table brings its whole folder, since its rows point at files beside it.
    Returns the local path of ``path`` and the full commit sha.
    """
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    inner = PurePosixPath(path)
    if inner.is_absolute() or ".." in inner.parts:
        raise UserError(f"data.source: {path!r} must be a path inside data.repo, relative to its root")
    fetched = inner.parent if inner.suffix.lower() in TABLE_SUFFIXES else inner
    at = f"{repo} at {rev or 'HEAD'}"
    try:
        with contextlib.closing(DVCFileSystem(repo, rev=rev or "HEAD")) as fs:
            resolved = fs.repo.scm.resolve_rev(rev or "HEAD")
            # One folder per (commit, fetched path), not one shared tree: fetching `data` after `data/scans` must
            # not mistake the `data` folder holding only `scans` for a complete copy.
            key = cache_dir / "dvc" / resolved / hashlib.sha256(str(fetched).encode()).hexdigest()[:16]
            if not key.exists():
                partial = key.with_name(key.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                fs.get(str(fetched), str(partial / fetched), recursive=True)
                partial.replace(key)
    except (DvcException, FileNotFoundError) as exc:
        raise UserError(f"cannot fetch {path} from {at}: {exception_chain(exc)}; check data.repo, data.rev, "
                        "data.source and that the repository's DVC remote holds the data (dvc push)") from None
    except Exception as exc:  # scmrepo's and dulwich's errors (an unknown revision, an unreachable host)
        raise UserError(f"cannot fetch {path} from {at}: {type(exc).__name__}: {exception_chain(exc)}; check "
                        "data.repo (reachable from here, credentials in git's credential helper) and "
                        "data.rev") from None
    if not (key / inner).exists():  # a table's folder came, but not the table
        raise UserError(f"data.source: {path} not found in {at}")
    return key / inner, resolved


def _file_item(ref: str, label: str | None, split: str | None, path: Path | None, problem: str | None) -> Item:
    if problem is None and path is not None and not path.is_dir() and not _known(path):
        problem = f"unknown extension {path.suffix or '(none)'!r}; expected one of {', '.join(KNOWN_SUFFIXES)}"
    return Item(ref, label, split, None if problem else path, problem)


def _known(path: Path) -> bool:
    """An image ingest can read: by its suffix, or a DICOM file without one."""
    return path.suffix.lower() in IMAGE_SUFFIXES or is_nifti(path) or is_dicom(path)


def _read_splits_file(root: Path) -> dict[str, tuple[str | None, str | None]]:
    """splits.csv -> {normalized path: (split, problem)}."""
    frame = _read_frame(root / SPLITS_FILE, required=("path", "split"))
    return {PurePosixPath(_text(row["path"])).as_posix(): _split(row["split"]) for row in frame.to_dict("records")}


def _read_frame(table: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        # keep_default_na=False: an empty cell stays "", so "NA" or "null" can be a real label.
        frame = (pd.read_csv(table, dtype=str, keep_default_na=False) if table.suffix.lower() == ".csv"
                 else pd.read_parquet(table))
    except (OSError, ValueError) as exc:
        raise UserError(f"data.source: cannot read the table {table} ({exc})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(f"data.source: the table {table} needs columns {', '.join(required)}; missing {missing}")
    return frame


def _split(value: Any) -> tuple[str | None, str | None]:
    """A table cell -> (split or None when empty, problem when it is not an allowed split)."""
    text = _text(value)
    if text and text not in SPLITS:
        return None, f"unknown split {text!r}; allowed: {', '.join(SPLITS)}"
    return text or None, None


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


NOT_REGULAR = ("not a regular file (a FIFO, socket or device): not read, since opening one can block or never "
               "end; remove it from the source")
FOLDER_LIKE_IMAGE = "a folder named like an image file: not read; rename it (or move its images up)"


def _walk(root: Path) -> tuple[list[Path], list[str], list[tuple[str, str]]]:
    """The regular files under ``root``, following symlinks while they stay inside it; the refs of links that leave
    it; and (ref, why) of entries skipped unread: a FIFO, socket or device, and a folder named like an image file
    (``x.png/``).

    A folder reached twice (a link to a folder inside the root, or a link loop) is read once. Only links and folders
    are resolved: an entry that is not a link, in a folder inside the root, is inside too, and the type of an entry
    comes from its folder listing (no ``stat`` per file).
    """
    inside = root.resolve()
    files, escaping, odd, seen = [], [], [], set()
    pending = [root]  # a stack, children pushed in reverse: folders are read in the order os.walk reads them
    while pending:
        here = pending.pop()
        real = here.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(here) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:  # unreadable folder: skipped, as os.walk does
            continue
        folders = []
        for entry in entries:
            path = here / entry.name
            if entry.is_symlink() and not Path(os.path.realpath(entry.path)).is_relative_to(inside):
                escaping.append(path.relative_to(root).as_posix())
            elif _is_dir(entry):
                if entry.name.lower().endswith(IMAGE_SUFFIXES + NIFTI_SUFFIXES):
                    odd.append((path.relative_to(root).as_posix(), FOLDER_LIKE_IMAGE))
                else:
                    folders.append(path)
            elif entry.is_file():
                files.append(path)
            elif not entry.is_symlink() or os.path.exists(entry.path):  # a link to nothing is no entry
                odd.append((path.relative_to(root).as_posix(), NOT_REGULAR))
        pending.extend(reversed(folders))
    return sorted(files), sorted(escaping), sorted(odd)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # as os.walk: an entry whose type cannot be read is not a folder
        return False


def _class_of(ref: str) -> str | None:
    """The class folder an entry sits in (None at the root)."""
    parts = PurePosixPath(ref).parts
    return parts[0] if len(parts) > 1 else None


def _inside(root: Path, ref: str) -> Path | None:
    """``root / ref`` when it stays inside ``root`` (after ``..`` and symlinks), else None; reads no file."""
    path = (root / ref).resolve()
    return path if path.is_relative_to(root.resolve()) else None

