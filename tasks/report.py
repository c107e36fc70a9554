"""The ``report`` step: one self-contained ``report.html`` a person can read to judge the synthetic data.

Everything is inside the file: images are inlined as base64 ``data:`` URIs, the style sheet is inline, and there
is no script, font or CDN link, so the report opens offline, in an e-mail attachment or in a DVC registry alike.
All text from the data (labels, reasons, paths) is escaped with ``html.escape``.

Sections: a summary; downstream utility (the utility gate's verdict and rule, the chart from the evaluate step, a
table per classifier family, the paired difference to the best real baseline and the share of the best baseline ->
oracle gap closed, which choices were made on what data); per-class recall; class counts and acceptance;
set-quality tables (overall and per class); per class a row of real | accepted synthetic | rejected images with
their reasons; and a memorization audit: the accepted synthetic images most correlated with a training image
(``score_nn_pixel_corr``, from the filter), each shown beside that training image, found again with
``models.metrics.nearest_correlation``.

The report of an anonymized release (``privacy_dir`` given) embeds accepted synthetic images only: no real image
and no rejected one (a rejected image may be a copy of a training image). Its memorization audit is the privacy
section instead: the gate's checks, the distance-to-closest-record histogram and the attack's per-class AUCs.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.metrics import nearest_correlation
from tasks.dp import card_lines as dp_card_lines
from tasks.errors import UserError
from tasks.evaluate import (
    BASELINES,
    COMPARED,
    PLOT_COUNTS,
    PLOT_RECALL,
    PLOT_UTILITY,
    PROJECT_FAMILY,
    families,
    read_metrics,
    real_rows,
    synthetic_rows,
)
from tasks.images import load_images
from tasks.plan import natural_key
from tasks.privacy import ATTACKS, DCR_PLOT, PRIVACY_FILE, SPACES, attacks_side_by_side, check_rows
from tasks.tstr import utility_rows

REPORT_FILE = "report.html"
PIXEL_CORR = "score_nn_pixel_corr"
THUMB_PX = 48  # displayed thumbnail side; pixels are upscaled without smoothing (image-rendering: pixelated)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 24px auto;
       max-width: 1150px; padding: 0 16px; background: #fff; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 34px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.lead { color: #555; margin-top: 0; }
nav a { margin-right: 12px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
td.na { color: #999; }
.note { color: #666; font-size: 12px; margin: 2px 0 10px; }
.chart { max-width: 100%; border: 1px solid #eee; }
.grid { display: flex; flex-wrap: wrap; gap: 3px; align-items: flex-start; }
.thumb { margin: 0; text-align: center; }
.thumb img, .pair img { width: __PX__px; height: __PX__px; image-rendering: pixelated; image-rendering: crisp-edges;
                        border: 1px solid #ccc; background: #000; display: block; }
.reason { font-size: 11px; color: #b42318; margin: 4px 0 2px; }
table.samples td { vertical-align: top; text-align: left; }
table.samples td.cls { font-weight: bold; font-size: 16px; text-align: center; }
.pairs { display: flex; flex-wrap: wrap; gap: 12px; }
.pair { border: 1px solid #ddd; padding: 6px; font-size: 11px; }
.pair .imgs { display: flex; gap: 4px; }
.pair .imgs img { width: __BIG__px; height: __BIG__px; }
.good { color: #1a7f37; } .bad { color: #b42318; }
""".replace("__PX__", str(THUMB_PX)).replace("__BIG__", str(2 * THUMB_PX))


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(path: Path, alt: str, *, css: str = "", title: str | None = None) -> str:
    attrs = f' class="{css}"' if css else ""
    if title:
        attrs += f' title="{_esc(title)}"'
    return f'<img src="{_data_uri(path.read_bytes())}" alt="{_esc(alt)}"{attrs}>'


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool | str):
        return _esc(value)
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


def _cell(value: Any, reason: str | None = None, *, digits: int = 3) -> str:
    if value is None:
        return f'<td class="na" title="{_esc(reason or "not available")}">—</td>'
    return f"<td>{_num(value, digits)}</td>"


# --------------------------------------------------------------------------------------------------- sections


def _summary(metrics: Mapping[str, Any]) -> str:
    counts = metrics["counts"]
    before, after = sum(counts["before"].values()), sum(counts["after"].values())
    generated, accepted = sum(counts["synthetic_generated"].values()), sum(counts["synthetic_accepted"].values())
    minority = ", ".join(metrics["minority_classes"]) or "none"
    items = [
        f"{len(metrics['classes'])} classes; minority classes (real train count below half the largest, unless "
        f"set in params): <b>{_esc(minority)}</b>",
        f"real train images: <b>{before}</b>; synthetic generated: <b>{generated}</b>, accepted by the filter: "
        f"<b>{accepted}</b>; training set after: <b>{after}</b>",
        f"feature space of the set metrics: {_esc(metrics['feature_space']['extractor'])} "
        f"({metrics['feature_space']['dim']}-d); reference: {_esc(metrics['quality']['reference'])}",
    ]
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _paired_cell(d: Mapping[str, Any]) -> str:
    if d.get("mean") is None:
        return _cell(None, d.get("reason"))
    lo, hi = d["ci95"]
    verdict, css = ("better", "good") if lo > 0 else ("worse", "bad") if hi < 0 else ("no clear difference", "")
    return (f'<td>{d["mean"]:+.3f} <span class="note">[{lo:+.3f}, {hi:+.3f}]</span> '
            f'<span class="{css}">{verdict}</span></td>')


def _utility(metrics: Mapping[str, Any], evaluate_dir: Path) -> str:
    u = metrics["utility"]
    setup = u["setup"]
    fams = families(u)
    rows = []
    for c in setup["conditions"]:
        cells = "".join(
            f"<td>{_num(r[c][m]['mean'])} ± {_num(r[c][m]['std'])}</td>" if r[c][m]["mean"] is not None
            else _cell(None, r[c][m].get("reason"))
            for r in fams.values() for m in ("balanced_accuracy", "minority_recall"))
        n_train = sum(setup["train_per_class"].get(c, {}).values())
        label = f"{c} <span class='note'>(context only)</span>" if c == "real_only" else _esc(c)
        rows.append(f'<tr><td class="l">{label}</td>{cells}<td>{n_train}</td></tr>')
    head = "".join(f"<th>{_esc(f)}: balanced accuracy</th><th>{_esc(f)}: minority recall</th>" for f in fams)
    gate = u["gate"]
    out = ['<h2 id="utility">Downstream utility</h2>',
           f'<p class="{"good" if gate["passed"] else "bad"}"><b>{_esc(gate["verdict"])}</b></p>',
           f'<p class="note">Gate rule: {_esc(gate["rule"])}.</p>',
           f'<p class="note">Two independent classifier families, each trained from scratch on each training set, '
           f'{setup["seeds"]} seeds, scored on the {setup["test_size"]} real test images: {PROJECT_FAMILY} (the '
           f"project's network) and {_esc(u['independent']['family'])} (scikit-learn, on the raw pixels). Mean ± "
           "sample std over seeds. real_only, the untreated imbalanced set, is shown as context only: gains are "
           "measured from the best real baseline.</p>",
           _img(evaluate_dir / PLOT_UTILITY, "utility chart", css="chart"),
           f"<table><tr><th class='l'>condition</th>{head}<th>train images</th></tr>", *rows, "</table>"]
    for c, why in setup.get("skipped", {}).items():
        out.append(f'<p class="note">{_esc(c)} not run: {_esc(why)}</p>')
    out.append("<h3>Against the best real baseline</h3>"
               '<p class="note">Per metric and family, the best real baseline is the better mean of '
               f"{' and '.join(BASELINES)}. Δ: the difference paired by seed, with its 95% t-interval; gap closed: "
               "(condition − best real baseline) / (real_oracle − best real baseline), on the means.</p>"
               "<table><tr><th class='l'>family</th><th class='l'>condition</th><th class='l'>metric</th>"
               "<th class='l'>best real baseline</th><th>Δ [95% CI]</th><th>gap closed</th></tr>")
    for family, results in fams.items():
        for condition, paired in results["paired_difference"].items():
            for m in COMPARED:
                g = results["gap_closed"][condition][m]
                gap = f"<td>{g['value']:.0%}</td>" if g["value"] is not None else _cell(None, g["reason"])
                out.append(f'<tr><td class="l">{_esc(family)}</td><td class="l">{_esc(condition)}</td>'
                           f'<td class="l">{m.replace("_", " ")}</td><td class="l">{_esc(paired[m]["baseline"])}</td>'
                           f"{_paired_cell(paired[m])}{gap}</tr>")
    out.append("</table>")
    choices = "".join(f"<li><b>{_esc(c['choice'])}</b>: {_esc(c['made_on'])}</li>" for c in u.get("choices", []))
    out.append(f"<h3>Which choices were made on what data</h3><ul>{choices}</ul>")
    out.append('<h3 id="recall">Per-class recall</h3>'
               + _img(evaluate_dir / PLOT_RECALL, "per-class recall", css="chart"))
    return "\n".join(out)


def _counts(metrics: Mapping[str, Any], evaluate_dir: Path) -> str:
    counts, acc = metrics["counts"], metrics["acceptance"]["per_class"]
    rows = []
    for name in metrics["classes"]:
        a = acc.get(name, {})
        reasons = "; ".join(f"{_esc(r)} ×{n}" for r, n in a.get("reject_reasons", {}).items())
        passed = a.get("acceptance_rate", a.get("kept_rate"))
        short = a.get("shortfall")
        passed_text = "—" if passed is None else f"{passed:.0%}"
        rows.append(f'<tr><td class="l">{_esc(name)}</td><td>{counts["before"][name]}</td>'
                    f'<td>{counts["synthetic_generated"][name]}</td>'
                    f'<td>{passed_text}</td><td>{counts["synthetic_accepted"][name]}</td>'
                    f'<td>{counts["after"][name]}</td>'
                    f'<td class="{"bad" if short else ""}">{"—" if short is None else short}</td>'
                    f'<td class="l">{reasons}</td></tr>')
    return "\n".join([
        '<h2 id="counts">Class counts and acceptance</h2>',
        _img(evaluate_dir / PLOT_COUNTS, "class counts before and after", css="chart"),
        '<p class="note">passed: share of the generated images that passed every filter test; kept: accepted images '
        "(passing images beyond what the class needs are rejected as surplus); short: images the class still lacks "
        "after the filter's top-up.</p>",
        "<table><tr><th class='l'>class</th><th>real train (before)</th><th>generated</th><th>passed</th>"
        "<th>kept</th><th>after</th><th>short</th><th class='l'>rejection reasons</th></tr>", *rows, "</table>"])


_QUALITY_COLUMNS = (("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall"),
                    ("density", "density"), ("coverage", "coverage"))


def _quality_row(label: str, entry: Mapping[str, Any], notes: dict[str, int]) -> str:
    cells = []
    for key, _ in _QUALITY_COLUMNS:
        e = entry[key]
        value = e["mean"] if key == "kid" else e["value"]
        if value is None:
            # The counts are in their own columns: one footnote per kind of reason, not per class.
            note = notes.setdefault(f"{key}: {str(e['reason']).split('; got')[0]}", len(notes) + 1)
            cells.append(f'<td class="na" title="{_esc(e["reason"])}">—<sup>{note}</sup></td>')
        elif key == "kid":
            cells.append(f"<td>{value:.4f} ± {e['std']:.4f}</td>")
        else:
            cells.append(_cell(value, digits=4 if key == "fid" else 3))
    d = entry["within_class_diversity"]
    cells += [_cell(d["synthetic"], d["reason"]), _cell(d["real"], d["reason"])]
    n_real, n_syn = entry["precision"]["n_real"], entry["precision"]["n_synthetic"]
    return f'<tr><td class="l">{_esc(label)}</td>{"".join(cells)}<td>{n_real}</td><td>{n_syn}</td></tr>'


def _quality_table(block: Mapping[str, Any], title: str, anchor: str) -> str:
    notes: dict[str, int] = {}
    head = ("<tr><th class='l'>set</th>" + "".join(f"<th>{h}</th>" for _, h in _QUALITY_COLUMNS)
            + "<th>diversity synthetic</th><th>diversity real</th><th>n real</th><th>n synthetic</th></tr>")
    rows = [_quality_row("overall (pooled)", block["overall"], notes)]
    macro = block["macro"]
    macro_cells = "".join(_cell(macro[k]["value"], macro[k]["reason"], digits=4 if k in ("fid", "kid") else 3)
                          for k, _ in _QUALITY_COLUMNS)
    rows.append(f'<tr><td class="l">mean over classes</td>{macro_cells}<td></td><td></td><td></td><td></td></tr>')
    without = []
    for name in sorted(block["per_class"], key=natural_key):
        entry = block["per_class"][name]
        if entry["precision"]["n_synthetic"] == 0:
            without.append(name)
        else:
            rows.append(_quality_row(f"class {name}", entry, notes))
    listed = "".join(f"<li><sup>{i}</sup> {_esc(r)}</li>" for r, i in notes.items())
    extra = (f'<p class="note">Classes without accepted synthetic images (not in the table): '
             f'{_esc(", ".join(without))}.</p>' if without else "")
    return (f'<h3 id="{anchor}">{_esc(title)}</h3><table>{head}{"".join(rows)}</table>'
            + (f'<ul class="note">{listed}</ul>' if listed else "") + extra)


def _quality(metrics: Mapping[str, Any]) -> str:
    q = metrics["quality"]
    out = ['<h2 id="quality">Set quality (accepted synthetic vs real)</h2>',
           '<p class="note">FID/KID: lower is better (KID ≈ 0: indistinguishable; it can dip below 0 by chance). '
           "Precision: share of synthetic images inside the real manifold (k=3); recall: share of real images "
           "covered by the synthetic manifold. Density ≈ 1 and coverage near 1 when the sets match (k=5). "
           "Diversity: mean pairwise feature distance within a class. Small sets are noisy: read the counts.</p>",
           _quality_table(q, f"Reference: {q['reference']}", "quality-ref")]
    if "vs_heldback" in q:
        out.append(_quality_table(q["vs_heldback"], f"Reference: {q['vs_heldback']['reference']}", "quality-held"))
    return "\n".join(out)


def _thumbs(root: Path, rows: pd.DataFrame) -> str:
    """A grid of thumbnails (file path on hover)."""
    if rows.empty:
        return '<span class="note">none</span>'
    figs = "".join(f'<figure class="thumb">{_img(root / row["path"], str(row["label"]), title=str(row["path"]))}'
                   "</figure>" for _, row in rows.iterrows())
    return f'<div class="grid">{figs}</div>'


def _rejected(root: Path, rows: pd.DataFrame, n: int) -> str:
    """Up to ``n`` rejected images, grouped under their reason (with its count), every reason represented."""
    if rows.empty:
        return '<span class="note">none</span>'
    reasons = rows["reject_reason"].fillna("(none given)").astype(str)
    counts = reasons.value_counts()
    picked = _round_robin(rows.assign(_reason=reasons), "_reason", n)
    groups = []
    for reason, group in sorted(picked.groupby("_reason"), key=lambda kv: (-counts[kv[0]], kv[0])):
        groups.append(f'<div class="reason">{_esc(reason)} ×{int(counts[reason])}</div>{_thumbs(root, group)}')
    hidden = sorted(set(counts.index) - set(picked["_reason"]))
    if hidden:
        groups.append(f'<div class="note">also: {_esc(", ".join(f"{r} ×{counts[r]}" for r in hidden))}</div>')
    return "".join(groups)


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
             filter_dir: Path, n: int, *, accepted_only: bool = False) -> str:
    """Per class a row of real | accepted synthetic | rejected images; ``accepted_only``: the accepted column only."""
    train = real[real["split"] == "train"]
    syn = synthetic.sort_values("seed", kind="stable") if "seed" in synthetic else synthetic
    accepted, rejected = syn[syn["accepted"].astype(bool)], syn[~syn["accepted"].astype(bool)]
    rows = []
    for name in metrics["classes"]:
        r, a = train[train["label"] == name], accepted[accepted["label"] == name]
        j = rejected[rejected["label"] == name]
        cells = [f'<td>{_thumbs(filter_dir, a.head(n))}<div class="note">{len(a)} accepted</div></td>']
        if not accepted_only:
            cells = [f'<td>{_thumbs(ingest_dir, r.head(n))}<div class="note">{len(r)} real train</div></td>', *cells,
                     f'<td>{_rejected(filter_dir, j, n)}<div class="note">{len(j)} rejected</div></td>']
        rows.append(f'<tr><td class="cls">{_esc(name)}</td>{"".join(cells)}</tr>')
    head = ['<th class="l">accepted synthetic</th>']
    if not accepted_only:
        head = ['<th class="l">real (train)</th>', *head, '<th class="l">rejected, with reasons</th>']
    note = ("Accepted synthetic images only: this report belongs to an anonymized release." if accepted_only else
            "Rejected images are grouped by reason and picked across the reasons, so that each shows.")
    return "\n".join([
        '<h2 id="samples">Samples per class</h2>',
        f'<p class="note">Up to {n} images per cell (hover for the file). {note}</p>',
        f'<table class="samples"><tr><th>class</th>{"".join(head)}</tr>', *rows, "</table>"])


def _memorization(real: pd.DataFrame, synthetic: pd.DataFrame, ingest_dir: Path, filter_dir: Path, n: int) -> str:
    out = ['<h2 id="memorization">Memorization audit</h2>']
    train = real[real["split"] == "train"].reset_index(drop=True)
    accepted = synthetic[synthetic["accepted"].astype(bool)].reset_index(drop=True)
    if accepted.empty or train.empty:
        return out[0] + '<p class="note">No accepted synthetic images (or no training images) to audit.</p>'
    channels = int(train["channels"].iloc[0])
    syn_px = load_images(filter_dir, list(accepted["path"]), channels)
    train_px = load_images(ingest_dir, list(train["path"]), channels)
    nearest = nearest_correlation(syn_px, train_px)
    has_score = PIXEL_CORR in accepted.columns and accepted[PIXEL_CORR].notna().any()
    key = accepted[PIXEL_CORR].to_numpy(dtype=np.float64, na_value=-np.inf) if has_score else nearest.correlation
    order = np.argsort(-key, kind="stable")[:n]
    ranking = (f"the filter's <code>{PIXEL_CORR}</code>" if has_score else
               "the correlation recomputed here (the filter manifest has no pixel-correlation score)")
    out.append(f'<p class="note">The {len(order)} accepted synthetic images most similar to a training image, ranked '
               f"by {ranking}; the nearest real training image (any class, highest Pearson correlation of the pixels) "
               "is found again and shown on the right. Near-copies here mean the generator memorized.</p>")
    pairs = []
    for i in order:
        s, t = accepted.iloc[int(i)], train.iloc[int(nearest.index[i])]
        stored = f", filter score {float(s[PIXEL_CORR]):.3f}" if has_score and pd.notna(s[PIXEL_CORR]) else ""
        pairs.append(
            '<div class="pair"><div class="imgs">'
            f'{_img(filter_dir / s["path"], "synthetic", title=str(s["path"]))}'
            f'{_img(ingest_dir / t["path"], "nearest training image", title=str(t["path"]))}</div>'
            f'<div>synthetic class {_esc(s["label"])}, seed {_esc(s.get("seed"))} | train class {_esc(t["label"])}'
            f"</div><div>correlation <b>{nearest.correlation[i]:.3f}</b>{stored}</div></div>")
    out.append(f'<div class="pairs">{"".join(pairs)}</div>')
    return "\n".join(out)


def _privacy(report: Mapping[str, Any], privacy_dir: Path) -> str:
    """The privacy gate: verdict, checks, the DCR histogram and table, the attack's per-class AUCs."""
    verdict = ('<b class="good">passed</b>' if report["passed"] else '<b class="bad">failed</b>: '
               + "; ".join(_esc(f) for f in report["failures"]))
    checks = "".join(f'<tr><td class="l">{_esc(c)}</td><td>{_esc(m)}</td><td>{_esc(t)}</td>'
                     f'<td class="{"good" if ok else "bad"}">{"pass" if ok else "FAIL"}</td></tr>'
                     for c, m, t, ok in check_rows(report))
    dcr_rows, attack_rows = [], []
    for space in SPACES:
        for key, name in (("released_to_train", "released → train"), ("holdout_to_train", "held-out real → train")):
            st = report["dcr"][space][key]
            dcr_rows.append(f'<tr><td class="l">{space}</td><td class="l">{name}</td><td>{st["n"]}</td>'
                            + "".join(_cell(st[q], digits=4) for q in ("min", "p05", "median", "p95", "max"))
                            + "</tr>")
        for key, (name, _) in ATTACKS.items():
            for label, entry in report[key][space].get("per_class", {}).items():
                attack_rows.append(f'<tr><td class="l">{_esc(name)}</td><td class="l">{space}</td>'
                                   f'<td class="l">{_esc(label)}</td><td>{entry["auc"]:.3f}</td>'
                                   f'<td>[{entry["ci"][0]:.3f}, {entry["ci"][1]:.3f}]</td>'
                                   + (f'<td>{entry["p_value"]:.2g}</td>' if "p_value" in entry else _cell(None))
                                   + f'<td>{entry["members"]}</td><td>{entry["non_members"]}</td></tr>')
    attack = report["attack"]
    return "\n".join([
        *_release_utility(report.get("utility")),
        '<h2 id="privacy">Privacy</h2>',
        f"<p>Privacy gate: {verdict}. Feature space: {_esc(report['feature_space'])}.</p>",
        '<p id="dp">Differential privacy: ' + " ".join(_esc(line) for line in dp_card_lines(report["dp"])) + "</p>",
        "<table><tr><th class='l'>check</th><th>measured</th><th>threshold</th><th>result</th></tr>", checks,
        "</table>",
        "<table><tr><th class='l'>space</th><th>distance attack AUC</th><th>density-ratio attack AUC</th></tr>",
        *(f'<tr><td class="l">{space}</td><td>{distance}</td><td>{density}</td></tr>'
          for space, distance, density in attacks_side_by_side(report)), "</table>",
        '<p class="note">Membership attacks: '
        + "; ".join(f"{_esc(name)}: {_esc(report[key]['method'])}" for key, (name, _) in ATTACKS.items())
        + f'. Members: {_esc(attack["members"])}, '
        f'non-members: {_esc(attack["non_members"])}; {attack["confidence"]:.0%} bootstrap interval over '
        f'{attack["bootstrap"]} resamples. An AUC near 0.5: the release does not tell who was trained on.</p>',
        '<h3 id="dcr">Distance to the closest training record</h3>',
        _img(privacy_dir / DCR_PLOT, "distance to the closest training record", css="chart"),
        "<table><tr><th class='l'>measure</th><th class='l'>set</th><th>n</th><th>min</th><th>p05</th>"
        "<th>median</th><th>p95</th><th>max</th></tr>", *dcr_rows, "</table>",
        '<p class="note">pixel: highest Pearson correlation with a training image (1: a copy); feature: smallest '
        "feature distance to a training image (0: a copy). Released images should look like held-out real ones: "
        "no closer to the training images than real images that were never trained on.</p>",
        "<h3>Attack AUC per class</h3><table><tr><th class='l'>attack</th><th class='l'>space</th>"
        "<th class='l'>class</th><th>AUC</th><th>interval (Bonferroni)</th><th>one-sided p</th><th>members</th>"
        "<th>non-members</th></tr>",
        *attack_rows, "</table>"])


def _release_utility(release: Mapping[str, Any] | None) -> list[str]:
    """TSTR vs TRTR of an anonymized release, overall and per class (``tasks.tstr``)."""
    if release is None:
        return []
    rows = "".join("<tr><td class='l'>" + _esc(what) + "</td>" + "".join(f"<td>{_esc(v)}</td>" for v in values)
                   + "</tr>" for what, *values in utility_rows(release))
    return ['<h2 id="tstr">Utility of the release: TSTR vs TRTR</h2>',
            f'<p class="note">TSTR: {_esc(release["tstr"])}; TRTR: {_esc(release["trtr"])}; scored on the '
            f'{_esc(release["scored_on"])} over {release["seeds"]} seeds; {release["confidence"]:.0%} '
            f'{_esc(release["interval"])}.</p>',
            "<table><tr><th class='l'></th><th>TSTR</th><th>TRTR</th><th>TSTR − TRTR</th><th>TSTR / TRTR</th></tr>",
            rows, "</table>"]


def render_report(metrics: Mapping[str, Any], real: pd.DataFrame, synthetic: pd.DataFrame, ingest_dir: Path,
                  filter_dir: Path, evaluate_dir: Path, *, thumbs: int = 12, pairs: int = 12,
                  privacy_dir: Path | None = None) -> str:
    """The report as one HTML string (see the module docstring); ``privacy_dir``: an anonymized release's."""
    last = [("memorization", "memorization")] if privacy_dir is None else [("tstr", "TSTR vs TRTR"),
                                                                           ("privacy", "privacy")]
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("utility", "utility"), ("recall", "per-class recall"), ("counts", "counts"), ("quality", "quality"),
        ("samples", "samples"), *last))
    if privacy_dir is None:
        title = "synthaug report"
        lead = "Is the accepted synthetic data realistic, on-label, new, and useful to a classifier?"
        audit = _memorization(real, synthetic, ingest_dir, filter_dir, pairs)
    else:
        title, lead = ("synthaug anonymized release", "Synthetic images only, released after the privacy gate: "
                                                      "are they useful, and do they give away who was trained on?")
        audit = _privacy(json.loads((privacy_dir / PRIVACY_FILE).read_text()), privacy_dir)
    body: Iterable[str] = (
        f"<h1>{title}</h1>",
        f'<p class="lead">{lead}</p>',
        f"<nav>{nav}</nav>",
        _summary(metrics),
        _utility(metrics, evaluate_dir),
        _counts(metrics, evaluate_dir),
        _quality(metrics),
        _samples(metrics, real, synthetic, ingest_dir, filter_dir, thumbs, accepted_only=privacy_dir is not None),
        audit,
    )
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def report_step(ingest_dir: Path, filter_dir: Path, evaluate_dir: Path, out_dir: Path, *, thumbs: int = 12,
                pairs: int = 12, privacy_dir: Path | None = None) -> Path:
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
    page = render_report(metrics, real_rows(ingest_dir), synthetic_rows(filter_dir), ingest_dir, filter_dir,
                         evaluate_dir, thumbs=thumbs, pairs=pairs, privacy_dir=privacy_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
