"""The privacy audit's record (``privacy.json``, written by the privacy step): the ``privacy`` params, the attacks it
reports, its reader, and the rows and the card section (template ``card_privacy.md.j2``) that show it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import file_sha256
from synthaug.tasks.core.render import render

PRIVACY_FILE = "privacy.json"
DCR_PLOT = "dcr.png"
SPACES = ("pixel", "feature")
REFERENCE_FOLDS = 10  # cross-fitting folds of the density-ratio attack's held-out reference (each sees 90% of it)
ATTACKS = {  # privacy.json key -> (what the failure lines call it, method)
    "attack": ("membership inference", "distance to the closest released image (GAN-Leaks); AUC over same-class "
                                       "(member, non-member) pairs"),
    "density_attack": ("membership inference, density ratio",
                       "density ratio log p_release(x) - log p_heldout(x) (DOMIAS) with nearest-neighbour densities: "
                       "log distance to the closest held-out image minus log distance to the closest released image "
                       f"(pixel: 1 - correlation), the held-out side cross-fitted over {REFERENCE_FOLDS} folds; AUC "
                       "over same-class (member, non-member) pairs"),
}


class PrivacyGateError(UserError):
    """The release failed the privacy gate; the message lists each failed check with its value and threshold."""


def read_privacy(privacy_dir: Path, filter_dir: Path) -> dict[str, Any]:
    """``privacy.json``, only when it passed for the filter manifest now in ``filter_dir``; else a UserError."""
    path = privacy_dir / PRIVACY_FILE
    if not path.is_file():
        raise UserError(f"{path}: no privacy gate result; run `synthaug privacy` before releasing")
    report = json.loads(path.read_text())
    if not report.get("passed"):
        raise PrivacyGateError(f"{path}: the privacy gate failed ({'; '.join(report.get('failures', []))}); "
                               "nothing is released")
    if report["release"]["filter_manifest_sha256"] != file_sha256(filter_dir / "manifest.parquet"):
        raise UserError(f"{path}: the gate checked another filter result than {filter_dir}; rerun `synthaug "
                        "privacy`")
    return report


def check_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, bool]]:
    """The gate as (check, measured, threshold, passed) rows, for the card and the report."""
    mem = report["memorization"]
    t = mem["thresholds"]
    rows = [
        ("memorization, pixel: released images correlating with a training image at or above the threshold",
         f"{mem['pixel']['within']} (highest {_fmt(mem['pixel']['highest_correlation'])})",
         f"0 at >= {_fmt(t['pixel_correlation'])}", mem["pixel"]["passed"]),
        ("memorization, feature: released images within the threshold distance of a training image",
         f"{mem['feature']['within']} (nearest {_fmt(mem['feature']['smallest_distance'])})",
         f"0 at <= {_fmt(t['feature_distance'])}", mem["feature"]["passed"]),
    ]
    for key, (name, _) in ATTACKS.items():
        for space in SPACES:
            a = report[key][space]
            measured = "n/a" if a["auc"] is None else f"AUC {a['auc']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]"
            if a.get("per_class"):
                worst, v = max(a["per_class"].items(), key=lambda item: item[1]["ci"][0])
                measured += (f"; per class highest interval: class {worst}, AUC {v['auc']:.3f} [{v['ci'][0]:.3f}, "
                             f"{v['ci'][1]:.3f}] at {a['class_confidence']:.2%}")
            rows.append((f"{name}, {space} (members {a.get('members', 0)}, non-members {a.get('non_members', 0)}): "
                         "pooled and per class", measured,
                         f"every CI lower bound <= {report[key]['max_auc']}", a["passed"]))
    return rows


def attacks_side_by_side(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Per space, the pooled AUC [interval] of the distance attack and of the density-ratio attack, for the card
    and the report to show next to each other."""
    def cell(a: Mapping[str, Any]) -> str:
        return "n/a" if a["auc"] is None else f"{a['auc']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]"

    return [(space, cell(report["attack"][space]), cell(report["density_attack"][space])) for space in SPACES]


def card_section(report: Mapping[str, Any]) -> str:
    """The card's privacy section (Markdown, template ``card_privacy.md.j2``): the verdict, the checks, the attacks
    side by side, the DCR distributions."""
    sets = (("released_to_train", "released -> train"), ("holdout_to_train", "held-out real -> train"))
    dcr = [(space, name, report["dcr"][space][key]["n"],
            *(_fmt(report["dcr"][space][key][q]) for q in ("min", "p05", "median", "p95", "max")))
           for space in SPACES for key, name in sets]
    return render("card_privacy.md.j2", report=report, attack=report["attack"], checks=check_rows(report),
                  methods=[(name, report[key]["method"]) for key, (name, _) in ATTACKS.items()],
                  side_by_side=attacks_side_by_side(report), dcr=dcr)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"
