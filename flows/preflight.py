"""Preflight: right after ingest, check what the later steps will need, so a run stops in seconds with the fix
instead of failing after minutes of training.

From the ingest manifest and the params: two or more classes with real train images (the judge), more real train
images than ``filter.realism_k`` (the realism test), real val images (the filter's and the privacy gate's
memorization thresholds are calibrated on val -> train distances), real test images (utility is scored on them),
``evaluate.minority_classes`` naming real classes, a usable ``filter.extractor`` file, and a generator network that
takes ``data.image_size``. Classes without a val image are named in a note: the thresholds are calibrated on the
others.
"""

from __future__ import annotations

from pathlib import Path

from synthaug.flows.params import Params
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.manifest import iter_manifest


def unfit(params: Params, family: str, num_classes: int = 2) -> str | None:
    """Why ``family``'s network, as ``params`` configure it, refuses the images' shape (its constructor's message)
    or would be too large (``models.training.build_family``), or None. Builds the network once on torch's meta
    device (every run's preflight does, once): no memory is allocated."""
    import torch

    from synthaug.models.training import build_family

    data = params.data
    model = params.model.model_copy(update={"family": family})
    try:  # on torch's meta device: the constructor's checks and the network's size, no memory
        build_family(family, model.family_config(), num_classes=num_classes, device=torch.device("meta"),
                     image_shape=(data.channels, data.image_size, data.image_size))
    except ValueError as exc:
        return str(exc)
    return None


def preflight(params: Params, manifest: Path) -> list[str]:
    """Raise UserError naming the first problem and its fix; returns notes worth printing (may be empty)."""
    counts: dict[tuple[str, str], int] = {}
    for chunk in iter_manifest(manifest, columns=["label", "split", "source"]):
        real = chunk[chunk["source"] == "real"]
        for (label, split), n in real.groupby(["label", "split"]).size().items():
            counts[(str(label), str(split))] = counts.get((str(label), str(split)), 0) + int(n)
    per_split = {s: {label: n for (label, split), n in counts.items() if split == s} for s in ("train", "val", "test")}
    classes = sorted(per_split["train"])
    where = f"{manifest} (ingested from data.source={params.data.source})"
    if len(classes) < 2:
        raise UserError(f"{where}: real train images of {len(classes)} class(es) {classes}; the judge and the "
                        "utility classifiers need at least two classes")
    if sum(per_split["train"].values()) <= params.filter.realism_k:
        raise UserError(f"{where}: {sum(per_split['train'].values())} real train images; filter.realism_k="
                        f"{params.filter.realism_k} needs more than that: add images or lower filter.realism_k")
    if not per_split["val"]:
        raise UserError(f"{where}: no real val images; the filter calibrates its memorization thresholds on real "
                        "val -> train distances. Give the source a val split (splits.csv or the table's split "
                        "column: e.g. 15% of each class's train images), or leave the splits to ingest "
                        "(data.val_fraction)")
    if not per_split["test"]:
        raise UserError(f"{where}: no real test images; utility is scored on the test split. Give the source a test "
                        "split, or leave the splits to ingest (data.test_fraction > 0)")
    unknown = sorted(set(params.evaluate.minority_classes or ()) - set(classes))
    if unknown:
        raise UserError(f"evaluate.minority_classes: {unknown} are not classes of this dataset ({classes}); fix the "
                        "names or set it to null")
    if params.filter.extractor is not None:
        from synthaug.models.judge import load_feature_extractor

        try:
            load_feature_extractor(params.filter.extractor)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"filter.extractor={params.filter.extractor}: {exc}") from None
    why = unfit(params, params.model.family, len(classes))
    if why is not None:
        raise UserError(f"model.family={params.model.family} at data.image_size={params.data.image_size}: {why}; set "
                        "data.image_size to a size it takes, or another model.family")
    without_val = [c for c in classes if c not in per_split["val"]]
    return [f"classes without real val images: {', '.join(without_val)} (the thresholds are calibrated on the "
            "others)"] if without_val else []
