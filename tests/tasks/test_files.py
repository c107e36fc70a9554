"""The one helper for atomic writes and the one for file hashes (tasks/core/io/files.py)."""

import hashlib
import os

import pytest

from synthaug.tasks.core.io.files import atomic_path, file_sha256, write_atomic


def test_write_atomic_writes_text_and_bytes_and_returns_their_sha256(tmp_path):
    path = tmp_path / "deep" / "a.json"
    digest = write_atomic('{"é": 1}\n', path)
    assert path.read_bytes() == '{"é": 1}\n'.encode()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert write_atomic(b"\x00\x01", path) == hashlib.sha256(b"\x00\x01").hexdigest()
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "plan.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.csv"]


def test_per_process_temporaries_do_not_collide(tmp_path):
    path = tmp_path / "hashes.json"
    with atomic_path(path, per_process=True) as tmp:
        assert str(os.getpid()) in tmp.name and tmp.parent == tmp_path
        tmp.write_text("{}")
    assert path.read_text() == "{}"


def test_file_sha256_streams_large_files(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # more than one 1 MiB block, not a multiple of it
    path = tmp_path / "weights.pt"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
