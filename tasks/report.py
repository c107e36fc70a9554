"""The ``report`` step: one self-contained ``report.html`` a person can read to judge the synthetic data.

Everything is inside the file: images are inlined as base64 ``data:`` URIs, the style sheet is inline, and there
is no script, font or CDN link, so the report opens offline, in an e-mail attachment or in a DVC registry alike.
The page is the template ``tasks/templates/report.html.j2`` with the run block of ``run.html.j2`` at the top, its style
sheet ``report.css.j2`` and its sections the macros of ``report_sections.html.j2`` (and ``report_privacy.html.j2`` for
an anonymized release). This module computes their data only (numbers, rows, ``data:`` URIs); the templates are
autoescaped (tasks/core/render.py), so all text from the data (labels, reasons, paths) arrives as text.

Sections: a summary; downstream utility (the utility gate's verdict and rule, the chart from the evaluate step, a
table per classifier family, the paired difference to the best real baseline and the share of the best baseline ->
oracle gap closed, which choices were made on what data); per-class recall; class counts and acceptance;
set-quality tables (overall and per class); per-class novelty (``tasks/evaluate/set_metrics.py``); per class a row of
real | accepted synthetic | rejected images with their reasons; and a memorization audit: the accepted synthetic
images most correlated with a training image (``score_nn_pixel_corr``, from the filter), each shown beside that
training image, found again with ``models.metrics.nearest_correlation``.

The report of an anonymized release (``privacy_dir`` given) embeds accepted synthetic images only: no real image
and no rejected one (a rejected image may be a copy of a training image). Its memorization audit is the privacy
section instead: the gate's checks, the distance-to-closest-record histogram and the attack's per-class AUCs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthaug.models.metrics import nearest_correlation
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.evaluation.downstream import BASELINES, COMPARED, PROJECT_FAMILY, families
from synthaug.tasks.core.evaluation.gate import headline_gains
from synthaug.tasks.core.io.files import write_atomic
from synthaug.tasks.core.io.images import load_images
from synthaug.tasks.core.io.manifest import read_manifest
from synthaug.tasks.core.io.results import (
    PLOT_COUNTS,
    PLOT_RECALL,
    PLOT_UTILITY,
    read_metrics,
    real_rows,
    synthetic_rows,
)
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.privacy.dp import card_section as dp_card_section
from synthaug.tasks.core.privacy.record import ATTACKS, DCR_PLOT, PRIVACY_FILE, SPACES, attacks_side_by_side, check_rows
from synthaug.tasks.core.privacy.tstr import utility_rows
from synthaug.tasks.core.render import RunInfo, render, run_info

REPORT_FILE = "report.html"
PIXEL_CORR = "score_nn_pixel_corr"
THUMB_PX = 48  # displayed thumbnail side; pixels are upscaled without smoothing (image-rendering: pixelated)
DCR_QUANTILES = ("min", "p05", "median", "p95", "max")


def _uri(path: Path, mime: str = "image/png") -> str:
    """A file as a ``data:`` URI: the report embeds every image."""
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _num(value: Any, digits: int = 3) -> str:
    """A table number as text (the template's ``cell`` macro); ``digits`` decimals for a float."""
    if value is None:
        return "—"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


# --------------------------------------------------------------------------------------------------- sections


def _summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of the summary list (template ``report.html.j2``)."""
    counts = metrics["counts"]
    return {"classes": len(metrics["classes"]), "minority": ", ".join(metrics["minority_classes"]) or "none",
            "before": sum(counts["before"].values()), "after": sum(counts["after"].values()),
            "generated": sum(counts["synthetic_generated"].values()),
            "accepted": sum(counts["synthetic_accepted"].values()),
            "extractor": metrics["feature_space"]["extractor"], "dim": metrics["feature_space"]["dim"],
            "reference": metrics["quality"]["reference"]}


HEADLINES = {"nothing_accepted": "Nothing was accepted: this dataset holds real images only",
             "harm": "Hurts: the synthetic images measurably hurt",
             "gain": "Helps: the synthetic images measurably help",
             "no_gain": "No measurable effect of the synthetic images"}


def _verdict(metrics: Mapping[str, Any], privacy: Mapping[str, Any] | None) -> dict[str, Any]:
    """The verdict box at the top (template ``verdict.html.j2``): the situation the utility gate names
    (``tasks/core/evaluation/gate.py``), its rule, the accepted share and the headline gains of every classifier
    family; for an anonymized release, the privacy gate's verdict, failed checks and advice instead."""
    u = metrics["utility"]
    gate = u["gate"]
    counts = metrics["counts"]
    generated = sum(counts["synthetic_generated"].values())
    accepted = sum(counts["synthetic_accepted"].values())
    shortfall = sum(int(v) for v in (metrics["acceptance"].get("shortfall") or {}).values() if v)
    if privacy is not None:
        return _privacy_verdict(privacy)
    situation = gate["situation"]
    rows = headline_gains(u)
    gains = [(family, [r for r in rows if r["family"] == family])
             for family in dict.fromkeys(r["family"] for r in rows)]
    if situation == "nothing_accepted":  # real_synthetic is the oversampled real set: no gain to show
        gains = []
    return {"css": situation, "privacy": None, "headline": HEADLINES[situation], "passes": gate["passes"],
            "verdict": gate["verdict"], "rule": gate["rule"], "accepted": accepted, "generated": generated,
            "share": accepted / generated if generated else None, "shortfall": shortfall,
            "metrics": list(dict.fromkeys(r["label"] for r in rows)), "gains": gains}


def _privacy_verdict(record: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict box of a release's report, or of a refused privacy gate's: the gate, its failed checks, advice."""
    passed = bool(record["passed"])
    release = record.get("release") or {}
    return {"css": "passed" if passed else "failed",
            "headline": "Released: the privacy gate passed" if passed else "Not released: the privacy gate failed",
            "privacy": {"passed": passed, "failures": record.get("failures") or [],
                        "advice": record.get("advice") or [], "released": release.get("images", 0),
                        "generated": release.get("generated")}}


def _utility(metrics: Mapping[str, Any], evaluate_dir: Path) -> dict[str, Any]:
    """The utility section's data (macro ``utility`` of ``report_sections.html.j2``)."""
    u = metrics["utility"]
    setup = u["setup"]
    fams = families(u)
    rows = [{"condition": c, "context_only": c == "real_only",
             "cells": [r[c][m] for r in fams.values() for m in ("balanced_accuracy", "minority_recall")],
             "n_train": sum(setup["train_per_class"].get(c, {}).values())} for c in setup["conditions"]]
    paired = [{"family": family, "condition": condition, "metric": m.replace("_", " "), "paired": by_metric[m],
               "gap": results["gap_closed"][condition][m]}
              for family, results in fams.items()
              for condition, by_metric in results["paired_difference"].items() for m in COMPARED]
    return {"gate": u["gate"], "setup": setup, "project_family": PROJECT_FAMILY,
            "independent": [f for f in fams if f != PROJECT_FAMILY], "families": list(fams), "rows": rows,
            "skipped": list(setup.get("skipped", {}).items()), "baselines": BASELINES, "paired": paired,
            "choices": u.get("choices", []), "chart": _uri(evaluate_dir / PLOT_UTILITY),
            "recall_chart": _uri(evaluate_dir / PLOT_RECALL)}


def _novelty(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The novelty table's data (macro ``novelty``): per class with accepted synthetic images, scarce ones first."""
    block = metrics["novelty"]
    names = sorted(block["per_class"], key=lambda n: (not block["per_class"][n]["minority"], natural_key(n)))
    return {"reference": block["reference"], "rows": [{"name": n, **block["per_class"][n]} for n in names]}


def _counts(metrics: Mapping[str, Any], evaluate_dir: Path) -> dict[str, Any]:
    counts, acc = metrics["counts"], metrics["acceptance"]["per_class"]
    rows = []
    for name in metrics["classes"]:
        a = acc.get(name, {})
        rows.append({"name": name, "before": counts["before"][name], "generated": counts["synthetic_generated"][name],
                     "passed": a.get("acceptance_rate", a.get("kept_rate")),
                     "accepted": counts["synthetic_accepted"][name], "after": counts["after"][name],
                     "short": a.get("shortfall"), "reasons": list(a.get("reject_reasons", {}).items())})
    return {"chart": _uri(evaluate_dir / PLOT_COUNTS), "rows": rows}


_QUALITY_COLUMNS = (("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall"),
                    ("density", "density"), ("coverage", "coverage"))


def _quality_row(label: str, entry: Mapping[str, Any], notes: dict[str, int]) -> dict[str, Any]:
    cells = []
    for key, _ in _QUALITY_COLUMNS:
        e = entry[key]
        value = e["mean"] if key == "kid" else e["value"]
        note = None
        if value is None:
            # The counts are in their own columns: one footnote per kind of reason, not per class.
            note = notes.setdefault(f"{key}: {str(e['reason']).split('; got')[0]}", len(notes) + 1)
        cells.append({"value": value, "reason": e.get("reason"), "note": note, "digits": 4 if key == "fid" else 3,
                      "std": e["std"] if key == "kid" and value is not None else None})
    d = entry["within_class_diversity"]
    cells += [{"value": d[k], "reason": d["reason"], "note": None, "digits": 3, "std": None}
              for k in ("synthetic", "real")]
    return {"label": label, "cells": cells,
            "tail": [entry["precision"]["n_real"], entry["precision"]["n_synthetic"]]}


def _quality_table(block: Mapping[str, Any], title: str, anchor: str) -> dict[str, Any]:
    notes: dict[str, int] = {}
    rows = [_quality_row("overall (pooled)", block["overall"], notes)]
    macro = block["macro"]
    rows.append({"label": "mean over classes", "tail": ["", "", "", ""],
                 "cells": [{"value": macro[k]["value"], "reason": macro[k]["reason"], "note": None, "std": None,
                            "digits": 4 if k in ("fid", "kid") else 3} for k, _ in _QUALITY_COLUMNS]})
    without = []
    for name in sorted(block["per_class"], key=natural_key):
        entry = block["per_class"][name]
        if entry["precision"]["n_synthetic"] == 0:
            without.append(name)
        else:
            rows.append(_quality_row(f"class {name}", entry, notes))
    return {"title": title, "anchor": anchor, "columns": [h for _, h in _QUALITY_COLUMNS], "rows": rows,
            "notes": list(notes.items()), "without": without}


def _quality(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    q = metrics["quality"]
    tables = [_quality_table(q, f"Reference: {q['reference']}", "quality-ref")]
    if "vs_heldback" in q:
        tables.append(_quality_table(q["vs_heldback"], f"Reference: {q['vs_heldback']['reference']}", "quality-held"))
    return tables


def _thumbs(root: Path, rows: pd.DataFrame) -> list[dict[str, str]]:
    """Thumbnails of ``rows`` (file path on hover)."""
    return [{"src": _uri(root / row["path"]), "label": str(row["label"]), "path": str(row["path"])}
            for _, row in rows.iterrows()]


def _rejected(root: Path, rows: pd.DataFrame, n: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Up to ``n`` rejected images, grouped under their reason (with its count), every reason represented; and the
    reasons left without a picture (``reason ×count``)."""
    if rows.empty:
        return [], []
    reasons = rows["reject_reason"].fillna("(none given)").astype(str)
    counts = reasons.value_counts()
    picked = _round_robin(rows.assign(_reason=reasons), "_reason", n)
    groups = [{"reason": reason, "count": int(counts[reason]), "images": _thumbs(root, group)}
              for reason, group in sorted(picked.groupby("_reason"), key=lambda kv: (-counts[kv[0]], kv[0]))]
    hidden = [f"{r} ×{counts[r]}" for r in sorted(set(counts.index) - set(picked["_reason"]))]
    return groups, hidden


def _round_robin(rows: pd.DataFrame, key: str, n: int) -> pd.DataFrame:
    """Up to ``n`` rows taking one of each ``key`` value in turn, so every rejection reason gets shown."""
    groups = [g for _, g in sorted(rows.groupby(key, dropna=False), key=lambda kv: str(kv[0]))]
    picked: list[int] = []
    depth = 0
    while len(picked) < min(n, len(rows)):
        for g in groups:
            if depth < len(g) and len(picked) < n:
                picked.append(g.index[depth])
        depth += 1
    return rows.loc[picked]


def _samples(metrics: Mapping[str, Any], real: pd.DataFrame, synthetic: pd.DataFrame, ingest_dir: Path,
             filter_dir: Path, n: int, *, accepted_only: bool = False) -> dict[str, Any]:
    """Per class a row of real | accepted synthetic | rejected images; ``accepted_only``: the accepted column only."""
    train = real[real["split"] == "train"]
    syn = synthetic.sort_values("seed", kind="stable") if "seed" in synthetic else synthetic
    accepted, rejected = syn[syn["accepted"].astype(bool)], syn[~syn["accepted"].astype(bool)]
    rows = []
    for name in metrics["classes"]:
        r, a = train[train["label"] == name], accepted[accepted["label"] == name]
        j = rejected[rejected["label"] == name]
        row = {"name": name, "accepted": _thumbs(filter_dir, a.head(n)), "n_accepted": len(a)}
        if not accepted_only:
            groups, hidden = _rejected(filter_dir, j, n)
            row.update(real=_thumbs(ingest_dir, r.head(n)), n_real=len(r), rejected=groups, hidden=hidden,
                       n_rejected=len(j))
        rows.append(row)
    return {"n": n, "accepted_only": accepted_only, "rows": rows}


def _memorization(real: pd.DataFrame, synthetic: pd.DataFrame, ingest_dir: Path, filter_dir: Path,
                  n: int) -> dict[str, Any]:
    train = real[real["split"] == "train"].reset_index(drop=True)
    accepted = synthetic[synthetic["accepted"].astype(bool)].reset_index(drop=True)
    if accepted.empty or train.empty:
        return {"pairs": []}
    channels = int(train["channels"].iloc[0])
    syn_px = load_images(filter_dir, list(accepted["path"]), channels)
    train_px = load_images(ingest_dir, list(train["path"]), channels)
    nearest = nearest_correlation(syn_px, train_px)
    has_score = PIXEL_CORR in accepted.columns and accepted[PIXEL_CORR].notna().any()
    key = accepted[PIXEL_CORR].to_numpy(dtype=np.float64, na_value=-np.inf) if has_score else nearest.correlation
    pairs = []
    for i in np.argsort(-key, kind="stable")[:n]:
        s = accepted.iloc[int(i)]
        pairs.append({"synthetic": _thumbs(filter_dir, accepted.iloc[[int(i)]])[0],
                      "train": _thumbs(ingest_dir, train.iloc[[int(nearest.index[i])]])[0],
                      "seed": s.get("seed"), "correlation": float(nearest.correlation[i]),
                      "stored": float(s[PIXEL_CORR]) if has_score and pd.notna(s[PIXEL_CORR]) else None})
    return {"pairs": pairs, "has_score": has_score, "score": PIXEL_CORR}


def _privacy(report: Mapping[str, Any], privacy_dir: Path) -> dict[str, Any]:
    """The privacy section's data (macros of ``report_privacy.html.j2``): the gate's verdict and checks, the attacks
    side by side and per class, the DCR histogram and table, and the release's TSTR vs TRTR."""
    dcr = [{"space": space, "set": name, "n": report["dcr"][space][key]["n"],
            "quantiles": [report["dcr"][space][key][q] for q in DCR_QUANTILES]}
           for space in SPACES
           for key, name in (("released_to_train", "released → train"), ("holdout_to_train", "held-out real → train"))]
    per_class = [{"attack": name, "space": space, "label": label, "auc": entry["auc"], "ci": entry["ci"],
                  "p_value": entry.get("p_value"), "members": entry["members"], "non_members": entry["non_members"]}
                 for space in SPACES for key, (name, _) in ATTACKS.items()
                 for label, entry in report[key][space].get("per_class", {}).items()]
    release = report.get("utility")
    return {"passed": report["passed"], "failures": report["failures"], "feature_space": report["feature_space"],
            "attack_feature_space": report.get("attack_feature_space"),
            "dp": dp_card_section(report["dp"]).strip("\n").replace("\n", " "),  # the card's words, on one line
            "checks": check_rows(report), "side_by_side": attacks_side_by_side(report),
            "methods": [(name, report[key]["method"]) for key, (name, _) in ATTACKS.items()],
            "attack": report["attack"], "dcr_chart": _uri(privacy_dir / DCR_PLOT), "dcr": dcr, "per_class": per_class,
            "utility": None if release is None else {**release, "rows": utility_rows(release)}}


def render_report(metrics: Mapping[str, Any], real: pd.DataFrame, synthetic: pd.DataFrame, ingest_dir: Path,
                  filter_dir: Path, evaluate_dir: Path, *, thumbs: int = 12, pairs: int = 12,
                  privacy_dir: Path | None = None, run: RunInfo | None = None) -> str:
    """The report as one HTML string (see the module docstring); ``privacy_dir``: an anonymized release's;
    ``run``: the run block (``tasks/core/render.py``), re-rendered by publish with the version tag and date."""
    last = [("memorization", "memorization")] if privacy_dir is None else [("tstr", "TSTR vs TRTR"),
                                                                           ("privacy", "privacy")]
    nav = [("utility", "utility"), ("recall", "per-class recall"), ("counts", "counts"), ("quality", "quality"),
           ("novelty", "novelty"), ("samples", "samples"), *last]
    if privacy_dir is None:
        title = "synthaug report"
        lead = "Is the accepted synthetic data realistic, on-label, new, and useful to a classifier?"
        memorization, privacy = _memorization(real, synthetic, ingest_dir, filter_dir, pairs), None
    else:
        title, lead = ("synthaug anonymized release", "Synthetic images only, released after the privacy gate: "
                                                      "are they useful, and do they give away who was trained on?")
        memorization = None
        privacy = _privacy(json.loads((privacy_dir / PRIVACY_FILE).read_text()), privacy_dir)
    record = None if privacy_dir is None else json.loads((privacy_dir / PRIVACY_FILE).read_text())
    return render("report.html.j2", title=title, lead=lead, thumb_px=THUMB_PX, nav=nav, summary=_summary(metrics),
                  verdict=_verdict(metrics, record),
                  utility=_utility(metrics, evaluate_dir), counts=_counts(metrics, evaluate_dir),
                  quality=_quality(metrics), novelty=_novelty(metrics), num=_num, run=run or RunInfo(),
                  samples=_samples(metrics, real, synthetic, ingest_dir, filter_dir, thumbs,
                                   accepted_only=privacy_dir is not None), memorization=memorization, privacy=privacy)


def report_step(ingest_dir: Path, filter_dir: Path, evaluate_dir: Path, out_dir: Path, *, thumbs: int = 12,
                pairs: int = 12, privacy_dir: Path | None = None, run: RunInfo | None = None) -> Path:
    """Write ``out_dir/report.html`` from the ingest, filter and evaluate steps' outputs.

    Args:
        ingest_dir: the ingest step's folder (real images and ``manifest.parquet``).
        filter_dir: the filter step's folder (synthetic images, ``manifest.parquet`` with scores and reasons).
        evaluate_dir: the evaluate step's folder (``metrics.json`` and its charts).
        out_dir: where ``report.html`` goes (created when absent).
        thumbs: images per cell of the per-class sample rows.
        pairs: synthetic/training pairs in the memorization audit.
        privacy_dir: the privacy step's folder (``privacy.json``, ``dcr.png``): the report of an anonymized release,
            with a privacy section and no real or rejected image.
        run: the run block; None: what the inputs say (source lineage, generator families), before publish names
            the version.

    Returns:
        The path of ``report.html``.

    Raises:
        UserError: an input folder lacks its manifest, metrics or charts.
    """
    if thumbs < 1 or pairs < 1:
        raise ValueError(f"thumbs and pairs must be >= 1, got thumbs={thumbs}, pairs={pairs}")
    metrics = read_metrics(evaluate_dir)
    missing = [p for p in (PLOT_UTILITY, PLOT_COUNTS, PLOT_RECALL) if not (evaluate_dir / p).is_file()]
    if missing:
        raise UserError(f"{evaluate_dir}: charts {missing} are missing; rerun `synthaug evaluate`")
    synthetic = synthetic_rows(filter_dir)
    if run is None:
        _, lineage = read_manifest(ingest_dir / "manifest.parquet")
        run = run_info(lineage, synthetic["generator"])  # the run's family, whether or not its images passed
    page = render_report(metrics, real_rows(ingest_dir), synthetic, ingest_dir, filter_dir,
                         evaluate_dir, thumbs=thumbs, pairs=pairs, privacy_dir=privacy_dir, run=run)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    write_atomic(page, path)
    return path


def privacy_report(ingest_dir: Path, filter_dir: Path, privacy_dir: Path, *, pairs: int = 12) -> Path:
    """Write ``privacy_dir/report.html`` for a privacy gate that failed (nothing is released, the page stays in the
    workdir): the verdict with each failed check and what to change, the gate's checks, attacks and DCR histogram,
    and the accepted synthetic images closest to a training image beside that image (the pictures of a
    memorization failure). It needs no evaluation: the anonymize flow evaluates only after the gate passes."""
    record = json.loads((privacy_dir / PRIVACY_FILE).read_text())
    synthetic = synthetic_rows(filter_dir)
    audited = "attack" in record and (privacy_dir / DCR_PLOT).is_file()  # an empty release has no audit
    page = render("report_refused.html.j2", title="synthaug privacy gate: nothing released", thumb_px=THUMB_PX,
                  num=_num, verdict=_privacy_verdict(record), run=RunInfo(),
                  privacy=_privacy(record, privacy_dir) if audited else None,
                  memorization=_memorization(real_rows(ingest_dir), synthetic, ingest_dir, filter_dir, pairs))
    path = privacy_dir / REPORT_FILE
    write_atomic(page, path)
    return path
