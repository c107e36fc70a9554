"""Scoring synthetic images against the real reference, in shards that run anywhere (tasks.core.io.shards)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from synthaug.models.common import pick_device
from synthaug.models.metrics import nearest_correlation_streamed, nearest_distance_streamed, realism_score
from synthaug.tasks.core.io.images import load_images
from synthaug.tasks.core.io.shards import SHARDS_DIR, RunShards, cut, finished, write_table
from synthaug.tasks.core.logs import get_logger, progress
from synthaug.tasks.core.scoring.features import embed
from synthaug.tasks.core.scoring.rules import SCORE_COLUMNS, sanity_reason
from synthaug.tasks.filter.reference import Reference, load_reference

REALISM_CAP = 1e3


def _load_checked(root: Path, paths: Sequence[str], shape: tuple[int, ...]) -> tuple[torch.Tensor, list[str | None]]:
    """Images as (N, C, H, W), NaN where a file could not be decoded; per image a load failure or None."""
    images = torch.full((len(paths), *shape), torch.nan)
    failures: list[str | None] = []
    for i, p in enumerate(paths):
        try:
            x = load_images(root, [p], shape[0])
        except (OSError, ValueError):  # missing, truncated or not an image
            failures.append("unreadable")
            continue
        if tuple(x.shape[1:]) != tuple(shape):
            failures.append("wrong_shape")
            continue
        images[i] = x[0]
        failures.append(None)
    return images, failures


def _score(rows: pd.DataFrame, root: Path, ref: Reference) -> tuple[pd.DataFrame, torch.Tensor]:
    """Per-image scores (sanity detail + the score columns but ``score_duplicate``) and features of ``rows``."""
    images, failures = _load_checked(root, list(rows["path"]), ref.judge.image_shape)
    sanity = [f or s for f, s in zip(failures, sanity_reason(images), strict=True)]
    ok = torch.isfinite(images.reshape(len(rows), -1)).all(dim=1)
    n, idx = len(rows), torch.nonzero(ok).flatten()
    out = {c: np.full(n, np.nan) for c in SCORE_COLUMNS if c != "score_duplicate"}
    feats = torch.full((n, ref.feats.shape[1]), torch.nan, dtype=torch.float64)
    if len(idx):
        x = images[idx]
        index = {name: i for i, name in enumerate(ref.class_names)}
        target = torch.tensor([index[str(rows["label"].iloc[int(i)])] for i in idx])
        proba = ref.judge.predict_proba(x)
        f = embed(x, ref.judge, extractor=ref.extractor).double()
        feats[idx] = f
        sel = idx.numpy()
        out["score_confidence"][sel] = proba.gather(1, target[:, None])[:, 0].double().numpy()
        wanted = rows["label"].astype(str).to_numpy()[sel]
        device = ref.judge.temperature.device  # the searches run where the judge does: the GPU when there is one
        for label in pd.unique(wanted):
            mine, real = wanted == label, ref.labels == label
            out["score_realism"][sel[mine]] = np.minimum(
                realism_score(ref.feats[torch.from_numpy(real)].to(device), ref.radii[real], f[torch.from_numpy(mine)]),
                REALISM_CAP)
        out["score_nn_feature"][sel] = nearest_distance_streamed(f.to(device), ref.feats)
        out["score_nn_pixel_corr"][sel] = nearest_correlation_streamed(x.reshape(len(idx), -1).to(device),
                                                                       ref.pixels)
    scores = pd.DataFrame(out, index=rows.index)
    scores.insert(0, "sanity", pd.Series(sanity, index=rows.index, dtype=object))
    return scores, feats


def score_shard(root: Path, rows: list[tuple[str, str]], reference_dir: Path, reference_key: str, judge_dir: Path,
                extractor: str | None, device: str, table: Path, key: str, rank: int = 0) -> int:
    """Score one shard of images (``rows``: (path under ``root``, intended label)) against the saved reference;
    write the scores and features as the shard's table, atomically, with its key."""
    ref = load_reference(reference_dir, reference_key, judge_dir, extractor, str(pick_device(device, rank)))
    scores, feats = _score(pd.DataFrame(rows, columns=["path", "label"]), root, ref)
    columns = {"sanity": pa.array(scores["sanity"].tolist(), pa.string())}
    columns |= {c: pa.array(scores[c].to_numpy(), pa.float64()) for c in scores.columns if c != "sanity"}
    flat = pa.array(feats.numpy().reshape(-1), pa.float64())
    columns["feature"] = pa.FixedSizeListArray.from_arrays(flat, feats.shape[1])
    write_table(pa.table(columns), table, key)
    return len(rows)


@dataclass(frozen=True)
class Scorer:
    """Everything the scoring shards need, as paths and plain values (nothing here is sent as a tensor)."""

    root: Path
    reference_dir: Path
    reference_key: str
    judge_dir: Path
    extractor: str | None
    device: str
    shard_size: int
    run_shards: RunShards

    def __call__(self, frame: pd.DataFrame, prefix: str) -> tuple[pd.DataFrame, torch.Tensor, list[Path]]:
        """Scores (index of ``frame``) and features of ``frame``'s rows, shard by shard; and the shard tables."""
        items = list(zip(frame["path"], frame["label"].astype(str), frame["image_id"], strict=True))
        shards = cut(items, self.shard_size, self.root / SHARDS_DIR, prefix, [self.reference_key, self.device])
        calls = [{"root": self.root, "rows": [(p, label) for p, label, _ in items[s.start:s.stop]],
                  "reference_dir": self.reference_dir, "reference_key": self.reference_key,
                  "judge_dir": self.judge_dir, "extractor": self.extractor, "device": self.device,
                  "table": s.path, "key": s.key} for s in shards if not finished(s)]
        with progress(get_logger("filter"), f"filter: {prefix}", len(items), unit="images") as bar:
            done = len(items) - sum(len(c["rows"]) for c in calls)
            bar(done)

            def shard_done(i: int) -> None:
                nonlocal done
                done += len(calls[i]["rows"])
                bar(done)

            self.run_shards(score_shard, calls, on_done=shard_done)
        tables = [pq.read_table(s.path) for s in shards]
        scores = pd.concat([t.drop(["feature"]).to_pandas() for t in tables], ignore_index=True) if tables else \
            pd.DataFrame(columns=["sanity", *(c for c in SCORE_COLUMNS if c != "score_duplicate")])
        scores = scores.astype({c: "float64" for c in scores.columns if c != "sanity"}).set_index(frame.index)
        scores["sanity"] = pd.Series([v if isinstance(v, str) else None for v in scores["sanity"]],
                                     index=frame.index, dtype=object)
        dim = self._dim(tables)
        feats = torch.from_numpy(np.concatenate(
            [t.column("feature").combine_chunks().flatten().to_numpy().reshape(-1, dim) for t in tables]
            or [np.empty((0, dim))]))
        return scores, feats, [s.path for s in shards]

    def _dim(self, tables: list[pa.Table]) -> int:
        if tables:
            return tables[0].schema.field("feature").type.list_size
        return int(np.load(self.reference_dir / "feats.npy", mmap_mode="r").shape[1])
