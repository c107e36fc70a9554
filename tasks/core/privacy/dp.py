"""What differential privacy a release may claim, and the card's section that says it.

``model.dp.epsilon`` set: the train step trains the generator with DP-SGD (``tasks/train/private.py``) and writes
``dp.json`` beside the checkpoint with the epsilon spent and the weights' sha256.

What the epsilon covers: the generator's weights, hence every image sampled from them (post-processing). What it
does not cover: the pipeline's later steps read the real training images again (the judge, the filter's
memorization and realism scores and the privacy gate decide which samples are released by comparing them with the
training images), and the released metrics and report are computed on real images. ``dp_claim`` says so, and a
release claims DP only when every released image came from the DP-trained checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from synthaug.models.training import checkpoint_hash
from synthaug.tasks.core.render import render

DP_FILE = "dp.json"
COVERS = "the generator's weights and every image sampled from them (post-processing)"
NOT_COVERED = ("the selection of released images: the judge, the filter (memorization, realism) and the privacy gate "
               "compare samples with the real training images after generation; and the metrics, report and attack "
               "results, which are computed on real images")


def dp_claim(checkpoint_dir: Path, released: pd.DataFrame) -> dict[str, Any]:
    """What a release may say about differential privacy: ``claimed`` only when the checkpoint was DP-trained
    (``dp.json`` for exactly its weights) and every released image came from it."""
    path = checkpoint_dir / DP_FILE
    if not path.is_file():
        return {"claimed": False, "reason": "the generator was not trained with differential privacy "
                                            "(model.dp.epsilon is null)"}
    record = json.loads(path.read_text())
    hashes = set(released["checkpoint"].dropna().astype(str))
    if record["weights_sha256"] != checkpoint_hash(checkpoint_dir) or hashes != {record["weights_sha256"]}:
        return {"claimed": False, "reason": f"released images come from {len(hashes)} checkpoint(s), not all from "
                                            f"the DP-trained one (sha256 {record['weights_sha256'][:12]})"}
    return {"claimed": True, **record, "covers": COVERS, "does_not_cover": NOT_COVERED}


def card_section(claim: Mapping[str, Any]) -> str:
    """The card's differential-privacy section (Markdown, template ``card_dp.md.j2``)."""
    return render("card_dp.md.j2", claim=claim)
