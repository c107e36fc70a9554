"""Shards on real files: keys, atomic tables, skipping finished shards, streaming concatenation; and the sharded
generate step: the same manifest and pixels whatever the shard size, resumes shard by shard, never mixes models."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from synthaug.models.config import VAEConfig
from synthaug.models.training import save_checkpoint
from synthaug.models.vae import VAE
from synthaug.tasks.core.io.shards import (
    concat_tables,
    cut,
    finished,
    remove_stale,
    remove_temporaries,
    run_in_process,
    write_table,
)
from synthaug.tasks.core.params.generate import GenerateParams
from synthaug.tasks.generate import CHECKPOINT_FILE, generate_from_plan

CLASSES = ["a", "b", "c"]


def test_cut_covers_the_items_once_with_keys_of_context_and_items(tmp_path):
    items = list(range(10))
    shards = cut(items, 4, tmp_path, "x", {"ckpt": "1"})
    assert [(s.start, s.stop) for s in shards] == [(0, 4), (4, 8), (8, 10)]
    assert len({s.key for s in shards}) == 3
    assert all(s.path.parent == tmp_path and s.path.name.startswith(f"x-{s.index:05d}-") for s in shards)
    assert [s.key for s in cut(items, 4, tmp_path, "x", {"ckpt": "1"})] == [s.key for s in shards]
    assert all(a.key != b.key for a, b in zip(cut(items, 4, tmp_path, "x", {"ckpt": "2"}), shards, strict=True))
    assert cut([*items[:4], 99, *items[5:]], 4, tmp_path, "x", {"ckpt": "1"})[1].key != shards[1].key
    with pytest.raises(ValueError, match="shard size"):
        cut(items, 0, tmp_path, "x", None)


def test_a_shard_is_finished_only_with_its_own_complete_table(tmp_path):
    shard = cut(["i"], 1, tmp_path, "x", None)[0]
    assert not finished(shard)
    write_table(pa.table({"v": [1, 2]}), shard.path, "another key")
    assert not finished(shard)
    write_table(pa.table({"v": [1, 2]}), shard.path, shard.key)
    assert finished(shard) and pq.read_table(shard.path).column("v").to_pylist() == [1, 2]
    assert not list(tmp_path.glob("*.tmp"))
    shard.path.write_bytes(shard.path.read_bytes()[:20])  # a file cut short is not a finished shard
    assert not finished(shard)


def test_concat_streams_tables_in_order_and_cleanup_keeps_only_what_is_listed(tmp_path):
    paths = [write_table(pa.table({"v": [i, i + 1]}), tmp_path / f"t-{i}.parquet", str(i)) for i in (4, 0, 2)]
    out = concat_tables(paths, tmp_path / "all.parquet", pa.schema([pa.field("v", pa.int64())]))
    assert pq.read_table(out).column("v").to_pylist() == [4, 5, 0, 1, 2, 3]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "half.png.tmp").write_bytes(b"x")
    remove_temporaries(tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))
    remove_stale(tmp_path, "t", paths[:2])
    assert sorted(p.name for p in tmp_path.glob("t-*")) == ["t-0.parquet", "t-4.parquet"]


def test_run_in_process_calls_in_order_and_reports_each():
    done: list[int] = []
    out = run_in_process(lambda x, rank: (x, rank), [{"x": 3}, {"x": 1}], on_done=done.append)
    assert out == [(3, 0), (1, 0)] and done == [0, 1]


# ------------------------------------------------------------------------------------------ the generate step


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny untrained VAE checkpoints with different weights, and a plan for 11 images."""
    root = tmp_path_factory.mktemp("shards")
    config = dataclasses.replace(VAEConfig.tiny(), sample_batch=4)
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = VAE(config, image_shape=(1, 8, 8), num_classes=len(CLASSES), device=torch.device("cpu"))
        save_checkpoint(model, root / f"ckpt{seed}", step=0, class_names=CLASSES)
    plan = root / "plan.csv"
    pd.DataFrame({"class": CLASSES, "real": [5, 5, 1], "target": [5, 9, 7],
                  "to_generate": [0, 4, 7]}).to_csv(plan, index=False)
    return root, plan


def _pixels(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "images").rglob("*.png"))}


def test_shard_size_changes_neither_manifest_nor_pixels(checkpoints, tmp_path):
    root, plan = checkpoints
    params = GenerateParams(device="cpu", batch_size=3)
    one = generate_from_plan(plan, root / "ckpt0", params, tmp_path / "one", shard_size=100)
    many = generate_from_plan(plan, root / "ckpt0", params, tmp_path / "many", shard_size=2)
    assert len(list((tmp_path / "many" / "shards").glob("*.parquet"))) == 6
    a, b = pd.read_parquet(one), pd.read_parquet(many)
    pd.testing.assert_frame_equal(a, b)
    assert list(a["label"]) == ["b"] * 4 + ["c"] * 7 and a["path"].is_unique
    assert _pixels(tmp_path / "one") == _pixels(tmp_path / "many")


def test_rerun_skips_finished_shards_and_redoes_the_rest(checkpoints, tmp_path):
    root, plan = checkpoints
    params = GenerateParams(device="cpu")
    out = tmp_path / "g"
    first = pd.read_parquet(generate_from_plan(plan, root / "ckpt0", params, out, shard_size=3))
    tables = sorted((out / "shards").glob("*.parquet"))
    stamps = {t: t.stat().st_mtime_ns for t in tables}
    tables[1].unlink()  # as if killed before that shard finished
    lost = out / first["path"].iloc[6]  # an image of the finished shard 2, deleted by hand
    pixels = lost.read_bytes()
    lost.unlink()
    progress: list[tuple[int, int]] = []
    again = generate_from_plan(plan, root / "ckpt0", params, out, shard_size=3,
                               on_progress=lambda done, total: progress.append((done, total)))
    pd.testing.assert_frame_equal(pd.read_parquet(again), first)
    assert lost.read_bytes() == pixels  # sampled again, the same pixels
    assert progress[0] == (11 - 6, 11) and progress[-1] == (11, 11)  # only shards 1 and 2 ran
    redone = {tables[1], tables[2]}
    assert {t: t.stat().st_mtime_ns for t in tables if t not in redone} == \
        {t: s for t, s in stamps.items() if t not in redone}


def test_another_checkpoint_replaces_every_image(checkpoints, tmp_path):
    root, plan = checkpoints
    params = GenerateParams(device="cpu")
    out = tmp_path / "g"
    generate_from_plan(plan, root / "ckpt0", params, out, shard_size=4)
    before = _pixels(out)
    manifest = pd.read_parquet(generate_from_plan(plan, root / "ckpt1", params, out, shard_size=4))
    fresh = tmp_path / "fresh"
    generate_from_plan(plan, root / "ckpt1", params, fresh, shard_size=4)
    assert _pixels(out) == _pixels(fresh) != before
    assert manifest["checkpoint"].nunique() == 1
    assert (out / CHECKPOINT_FILE).read_text().split()[0] == manifest["checkpoint"].iloc[0]
