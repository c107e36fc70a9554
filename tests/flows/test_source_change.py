"""A changed source is always seen: files added, deleted or modified in a source folder re-run ingest and everything
after it and publish a new version whose manifest differs by exactly those files; an unchanged source publishes
nothing."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from synthaug.flows.augment import augment
from synthaug.flows.dag import STEPS
from synthaug.flows.params import load_params
from synthaug.tasks.core.sources.readers import Item
from synthaug.tasks.ingest import normalize, open_image, png
from tests.markers import slow
from tests.toy import TINY, digits_folder


def stored_id(path: Path, params) -> str:
    """The image_id ingest gives a source file: the sha256 of its normalized PNG."""
    return hashlib.sha256(png(normalize(open_image(Item("x", "0", None, path)), params.data))).hexdigest()


def real_rows(dataset: Path) -> set[tuple[str, str]]:
    frame = pd.read_parquet(dataset / "manifest.parquet")
    real = frame[frame["source"] == "real"]
    return set(zip(real["label"], real["image_id"], strict=True))


@slow
def test_added_deleted_and_modified_files_publish_v2_with_exactly_those_changes(tmp_path: Path) -> None:
    source = digits_folder(tmp_path / "source")
    overrides = [*TINY, f"data.source={source}", f"publish.registry={tmp_path / 'registry'}",
                 f"publish.remote={tmp_path / 'remote'}", "publish.name=toy"]
    params = load_params(None, overrides)
    work = tmp_path / "work"
    first = augment(params, str(work))
    assert first["publish"]["tag"] == "toy/v1"
    before = real_rows(Path(first["publish"]["dataset"]))

    digits = load_digits()
    zeros, ones = digits.images[digits.target == 0], digits.images[digits.target == 1]
    added, deleted, modified = source / "0" / "new.png", source / "0" / "5.png", source / "1" / "3.png"
    Image.fromarray((zeros[40] * 255 / 16).astype(np.uint8)).save(added)
    gone = stored_id(deleted, params)
    deleted.unlink()
    old = stored_id(modified, params)
    Image.fromarray((ones[40] * 255 / 16).astype(np.uint8)).save(modified)  # same name, other bytes

    second = augment(params, str(work))
    assert "reused" not in second["ingest"], "the changed source was not ingested again"
    assert second["publish"]["tag"] == "toy/v2" and second["publish"]["new"] is True
    after = real_rows(Path(second["publish"]["dataset"]))
    assert before - after == {("0", gone), ("1", old)}
    assert after - before == {("0", stored_id(added, params)), ("1", stored_id(modified, params))}

    third = augment(params, str(work))
    assert all("reused" in third[s.name] for s in STEPS if not (s.always_changed or s.publishes))
    assert third["publish"]["tag"] == "toy/v2" and third["publish"]["new"] is False


def test_fingerprint_follows_folder_table_and_npz_content(tmp_path: Path, monkeypatch) -> None:
    """The fingerprint step's file changes with the bytes of a folder, of a table and the files it names, and of a
    .npz; it stays byte-identical when nothing changed, and unchanged files are not read again."""
    import json

    import synthaug.tasks.core.sources.readers
    from synthaug.tasks.core.params.data import DataParams
    from synthaug.tasks.ingest import fingerprint_source

    folder = digits_folder(tmp_path / "folder", {"0": 3, "1": 3})
    shutil.copytree(folder, tmp_path / "table")
    rows = [(f"{c}/{i}.png", c) for c in "01" for i in range(3)]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "table" / "labels.csv", index=False)
    npz = tmp_path / "source.npz"
    np.savez(npz, train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.array([0, 1]))

    reads: list[Path] = []
    real_sha = synthaug.tasks.core.sources.readers.file_sha256
    monkeypatch.setattr(synthaug.tasks.core.sources.readers, "file_sha256", lambda p: reads.append(p) or real_sha(p))

    def fingerprint(source: Path) -> bytes:
        out = tmp_path / "work" / "fingerprint.json"
        fingerprint_source(DataParams(source=str(source)), out, cache_dir=tmp_path / "work" / "sources")
        return out.read_bytes()

    for source, change in ((folder, folder / "1" / "2.png"), (tmp_path / "table" / "labels.csv",
                                                                tmp_path / "table" / "0" / "1.png"), (npz, npz)):
        first = fingerprint(source)
        reads.clear()
        assert fingerprint(source) == first and reads == [], f"{source}: unchanged files were hashed again"
        change.write_bytes(change.read_bytes() + b"\0")  # one more byte: a new size and content
        assert fingerprint(source) != first and reads == [change], source
        assert json.loads(first)["files"] >= 1
