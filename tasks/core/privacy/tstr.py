"""Utility of an anonymized release: train on synthetic, test on real (TSTR) against train on real (TRTR).

A release replaces the real training set, so the question a user of it asks is: how good is a classifier trained on
the release alone, compared with one trained on the real images it stands in for? Both numbers come from the
evaluate step (``tasks.evaluate``), which trains the same classifier recipe from scratch on each training set with
the same seeds and scores it on the held-out real ``test`` split:

- TSTR: its ``synthetic_only`` condition (the accepted synthetic images, which in the anonymize flow are the release:
  every class at its real size);
- TRTR: its ``real_only`` condition (the real train split).

Per metric (balanced accuracy, macro-F1) and per class (recall), over the ``evaluate.seeds`` seeds: the mean of each
with its t-interval, the seed-paired difference TSTR - TRTR with its t-interval, and the ratio TSTR / TRTR (per seed,
then its mean and t-interval). ``privacy.min_tstr_ratio`` gates the release on the balanced-accuracy ratio's mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.render import render

TSTR, TRTR = "synthetic_only", "real_only"  # the evaluate step's conditions
METRICS = ("balanced_accuracy", "macro_f1")


class ReleaseUtilityError(UserError):
    """The release is less useful than ``privacy.min_tstr_ratio`` asks; nothing is published."""


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean and t-interval (n - 1 degrees of freedom) of per-seed values; the interval is null below two values."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if arr.size < 2:
        return {"mean": mean, "ci": None, "n": int(arr.size)}
    if np.ptp(arr) == 0:  # every seed gave the same value: scipy's interval would be (nan, nan)
        return {"mean": mean, "ci": [mean, mean], "n": int(arr.size)}
    low, high = stats.t.interval(confidence, arr.size - 1, loc=mean, scale=stats.sem(arr))
    return {"mean": mean, "ci": [float(low), float(high)], "n": int(arr.size)}


def compare(tstr: Sequence[float], trtr: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """TSTR and TRTR (paired by seed): each one's mean and interval, their difference, and their ratio."""
    a, b = np.asarray(tstr, dtype=np.float64), np.asarray(trtr, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"TSTR and TRTR need the same seeds: got {a.size} and {b.size} values")
    ratio = mean_interval(a / b, confidence) if (b > 0).all() else {"mean": None, "ci": None, "n": int(a.size),
                                                                    "reason": "TRTR is 0 for some seed"}
    return {"tstr": mean_interval(a, confidence), "trtr": mean_interval(b, confidence),
            "difference": mean_interval(a - b, confidence), "ratio": ratio}


def release_utility(utility: Mapping[str, Any], *, confidence: float = 0.95) -> dict[str, Any]:
    """TSTR vs TRTR, overall and per class, from the evaluate step's ``utility`` block (``metrics.json``).

    Raises:
        UserError: the evaluation has no ``synthetic_only`` (nothing accepted) or no ``real_only`` runs.
    """
    missing = [c for c in (TSTR, TRTR) if c not in utility]
    if missing:
        raise UserError(f"metrics.json: utility has no {', '.join(missing)} runs; TSTR vs TRTR needs both "
                        f"(skipped: {utility.get('setup', {}).get('skipped', {})})")
    syn, real = utility[TSTR], utility[TRTR]
    per_class = {c: compare(syn["per_class_recall"][c]["values"], real["per_class_recall"][c]["values"],
                            confidence)
                 for c in real["per_class_recall"] if c in syn["per_class_recall"]}
    return {"tstr": f"{TSTR}: the classifier trained on the released synthetic images alone",
            "trtr": f"{TRTR}: the same classifier trained on the real train split",
            "scored_on": "real test split", "seeds": len(real["balanced_accuracy"]["values"]),
            "confidence": confidence, "interval": "t-interval over seeds (ratio and difference: paired by seed)",
            **{m: compare(syn[m]["values"], real[m]["values"], confidence) for m in METRICS},
            "per_class_recall": per_class}


def check_ratio(release: Mapping[str, Any], min_ratio: float | None) -> str | None:
    """The failure line when the balanced-accuracy ratio TSTR / TRTR is below ``min_ratio``; None when it passes."""
    ratio = release["balanced_accuracy"]["ratio"]["mean"]
    if min_ratio is None or (ratio is not None and ratio >= min_ratio):
        return None
    shown = "undefined" if ratio is None else f"{ratio:.3f}"
    ba = release["balanced_accuracy"]
    return (f"release utility: TSTR / TRTR balanced accuracy {shown} (TSTR {ba['tstr']['mean']:.3f}, TRTR "
            f"{ba['trtr']['mean']:.3f}) is below privacy.min_tstr_ratio={min_ratio}")


def _ci(entry: Mapping[str, Any]) -> str:
    if entry["mean"] is None:
        return "n/a"
    ci = entry["ci"]
    return f"{entry['mean']:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def utility_rows(release: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(what, TSTR, TRTR, TSTR - TRTR, TSTR / TRTR) rows with their intervals: overall metrics, then each class."""
    rows = [(m.replace("_", " "), *(_ci(release[m][k]) for k in ("tstr", "trtr", "difference", "ratio")))
            for m in METRICS]
    rows += [(f"recall, class {c}", *(_ci(v[k]) for k in ("tstr", "trtr", "difference", "ratio")))
             for c, v in release["per_class_recall"].items()]
    return rows


def card_section(release: Mapping[str, Any]) -> str:
    """The card's utility section (Markdown, template ``card_tstr.md.j2``)."""
    return render("card_tstr.md.j2", release=release, rows=utility_rows(release))
