"""Writing files atomically and hashing them: the one place for both."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path, *, per_process: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, renamed onto ``path`` when the block ends without an error: a
    reader sees the old file or the new one, never half of one. The parent folder is created.

    ``per_process``: the temporary name carries the process id, for a file several processes may write at once
    (each renames its own complete copy; the last one wins).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp" if per_process else f"{path.name}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old file and no half-written temporary
        raise
    tmp.replace(path)


def write_atomic(data: bytes | str, path: Path) -> str:
    """Write ``data`` (text as UTF-8) through a temp file and a rename (never half a file); returns its sha256."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (hex), read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link to ``src`` (no copy of large image sets), or, where links are impossible (another
    file system), an atomic copy. The parent folder is created; ``dst`` must not exist."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not supported
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def files_under(path: Path) -> list[Path]:
    """The files of a folder (recursively, sorted; ``__pycache__`` left out: bytecode changes when Python compiles,
    not when the code does), ``[path]`` for a file, nothing when ``path`` does not exist."""
    if not path.is_dir():
        return [path] if path.is_file() else []
    return sorted(f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts)


def tree_sha256(files: Iterable[Path], root: Path, *, sha256: Callable[[Path], str] = file_sha256) -> str:
    """sha256 over the sorted (path relative to ``root``, file sha256) pairs of ``files``: the content hash of a set
    of files, whatever order they are listed in. ``sha256`` may serve file hashes from a cache."""
    digest = hashlib.sha256()
    for rel, sha in sorted((f.relative_to(root).as_posix(), sha256(f)) for f in files):
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest()
