"""report.html: one self-contained, escaped page; images inline and decodable; the memorization pairs; the sections of
an anonymized release (and its card's); no HTML or Markdown built in Python; and a render in headless Chromium
(a ``browser`` test: it fails where no Chromium is installed)."""

from __future__ import annotations

import ast
import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from markupsafe import escape
from PIL import Image
from rich.console import Console

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.evaluation.downstream import CONDITIONS, TREATED, families
from synthaug.tasks.core.io.images import write_png
from synthaug.tasks.core.io.manifest import read_manifest, write_manifest
from synthaug.tasks.core.privacy import dp, record, tstr
from synthaug.tasks.core.publishing.card import CARD_CHECKPOINT_ROW, GENERATOR_ROW, write_card
from synthaug.tasks.core.render import md_cell
from synthaug.tasks.evaluate.step import evaluate_step
from synthaug.tasks.report import report_step
from tests.markers import browser, require_tool
from tests.workdirs import NASTY_REASON, TRAIN, tiny_params

# One test process builds the evaluated tiny workdir (a session fixture) for both modules.
pytestmark = pytest.mark.xdist_group("evaluated-workdir")


def load_png(path: Path):
    """A stored 1-channel PNG as (H, W, 1) uint8."""
    import numpy as np

    return np.asarray(Image.open(path).convert("L"))[..., None]


IMG = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", re.IGNORECASE)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UTILITY_BAR = (103, 135, 188)  # the balanced-accuracy bar colour (#4C72B0 at alpha 0.85 on white) in utility.png
LOOK_AT = "SYNTHAUG_TEST_OUT"  # a folder: the browser and card tests leave their screenshot and card there to look at
# The verdict box's background per situation (tasks/templates/report.css.j2).
VERDICT_BACKGROUND = {"gain": (0xE9, 0xF6, 0xEC), "no_gain": (0xFF, 0xF6, 0xDB), "nothing_accepted": (0xFF, 0xF6, 0xDB),
                      "harm": (0xFD, 0xEC, 0xEA)}


@pytest.fixture(scope="module")
def workdir(evaluated_workdir: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {**evaluated_workdir, "report": tmp_path_factory.mktemp("report") / "report"}
    report_step(dirs["ingest"], dirs["filter"], dirs["evaluate"], dirs["report"], thumbs=6, pairs=4)
    return dirs


@pytest.fixture(scope="module")
def page(workdir: dict[str, Path]) -> str:
    return (workdir["report"] / "report.html").read_text(encoding="utf-8")


def test_report_is_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    lowered = page.lower()
    for needle in ("<script", "<link", "http://", "https://", "file:", "url(", "@import"):
        assert needle not in lowered, needle
    sources = IMG.findall(page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for src in sources:  # every inline image decodes as a PNG
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.verify()


def test_report_has_every_section(workdir: dict[str, Path], page: str) -> None:
    for anchor in ("utility", "recall", "counts", "quality", "novelty", "samples", "memorization"):
        assert f'id="{anchor}"' in page, anchor
    for condition in CONDITIONS:
        assert f'<td class="l">{condition}' in page, condition
    charts = [base64.b64encode((workdir["evaluate"] / n).read_bytes()).decode()
              for n in ("utility.png", "class_counts.png", "per_class_recall.png")]
    assert all(c in page for c in charts)
    assert "image-rendering: pixelated" in page
    assert "class 3" in page and "overall (pooled)" in page and "heldback" in page
    # The run block: what the inputs say before publish names the version (source, generator family, params).
    run = page[page.index('id="run"'):page.index("<nav>")]
    assert "not published (publishing is an act" in run and '<th class="l">generator family</th>' in run
    assert "None" not in run


def test_the_report_opens_with_the_verdict(workdir: dict[str, Path], page: str) -> None:
    """Right under the title, before anything else: whether it is published, the utility gate's result and rule,
    the accepted share, and the headline gain with its interval for both classifier families."""
    from synthaug.tasks.report import HEADLINES

    metrics = json.loads((workdir["evaluate"] / "metrics.json").read_text())
    gate = metrics["utility"]["gate"]
    start = page.index('<section class="verdict')
    assert page.index("</h1>") < start < page.index('class="lead"') < page.index('id="run"')
    box = page[start:page.index("</section>", start)]
    assert f'<section class="verdict {gate["situation"]}" id="verdict">' in box
    assert f'<p class="headline">{HEADLINES[gate["situation"]]}</p>' in box
    assert "<b>Not published.</b> Publishing is an act" in box  # the report step alone names no version
    rules = "; ".join(f'{rule} <b class="{"good" if ok else "bad"}">{"publishes" if ok else "refuses"}</b>'
                      for rule, ok in gate["passes"].items())
    assert f"Utility gate (<code>publish.utility_gate</code>): {rules}. " + str(escape(gate["verdict"])) in box
    assert gate["verdict"].startswith(f"utility evidence: {gate['evidence']} — ")
    assert "Rule: " + str(escape(gate["rule"])) in box
    accepted = sum(metrics["counts"]["synthetic_accepted"].values())
    generated = sum(metrics["counts"]["synthetic_generated"].values())
    assert f"Accepted synthetic images: <b>{accepted}</b> of {generated} generated" in box
    for family in families(metrics["utility"]):
        row = box[box.index(f'<td class="l">{family}</td>'):]
        row = row[:row.index("</tr>")]
        assert row.count(" vs real_") == 2 and row.count("[") == 2, row  # both metrics, each with its interval


def test_novelty_table_has_a_row_per_class_with_synthetic_images(workdir: dict[str, Path], page: str) -> None:
    """Scarce classes first, each with its counts and both spaces' medians and ratios, under a one-line
    explanation naming the reference split."""
    novelty = json.loads((workdir["evaluate"] / "metrics.json").read_text())["novelty"]
    section = page[page.index('id="novelty"'):page.index('id="samples"')]
    assert "Ratio = synthetic distance / real distance" in section and "real val images" in section
    rows = section.split("<tr>")[2:]
    assert [r[r.index(">") + 1:r.index("<", r.index(">") + 1)].strip() for r in rows] == ["3", "1"]
    scarce = novelty["per_class"]["3"]
    assert "(minority)" in rows[0] and f"<td>{scarce['pixel']['ratio']:.2f}</td>" in rows[0]
    assert f"<td>{scarce['feature']['synthetic_distance']:.3f}</td>" in rows[0]


def test_utility_is_measured_from_the_best_real_baseline(workdir: dict[str, Path], page: str) -> None:
    """The gate's verdict and rule, both classifier families, gains against the best real baseline, the choices;
    and no ratio measured from the untreated real_only baseline."""
    utility = json.loads((workdir["evaluate"] / "metrics.json").read_text())["utility"]
    section = page[page.index('id="utility"'):page.index('id="recall"')]
    assert html.escape(utility["gate"]["verdict"], quote=True) in section
    assert "Gate rule:" in section and "Which choices were made on what data" in section
    for family in ("cnn", "extra_trees", "logistic_regression"):
        assert f"{family}: minority recall" in section, family
    assert "real_oracle − best real baseline" in section
    assert "real_only → real_oracle" not in page and "real_only -&gt; real_oracle" not in page
    for family, results in families(utility).items():
        for condition in TREATED:
            baseline = results["paired_difference"][condition]["minority_recall"]["baseline"]
            assert (f'<td class="l">{family}</td><td class="l">{condition}</td><td class="l">minority recall</td>'
                    f'<td class="l">{baseline}</td>') in section


def test_text_is_escaped(page: str) -> None:
    assert NASTY_REASON not in page
    assert str(escape(NASTY_REASON)) in page  # jinja2's autoescape (markupsafe: quotes as &#34;)


def test_sample_rows_show_real_accepted_and_rejected(workdir: dict[str, Path], page: str) -> None:
    syn, _ = read_manifest(workdir["filter"] / "manifest.parquet")
    rejected = syn[~syn["accepted"]]
    for _, row in rejected.iterrows():  # every rejected image of the fixture is shown with its reason
        data = base64.b64encode((workdir["filter"] / row["path"]).read_bytes()).decode()
        assert data in page, row["path"]
    for reason in ("memorized_pixel", "unrealistic", "near_duplicate", str(escape(NASTY_REASON))):
        assert f'<div class="reason">{reason} ×1</div>' in page, reason  # grouped under the reason, with its count
    samples = page[page.index('id="samples"'):page.index('id="memorization"')]
    real_shown = sum(min(6, n) for n in TRAIN.values())
    assert samples.count("<img") == real_shown + 6 + 6 + len(rejected)  # accepted: 6 of "1", 6 of "3"


def test_memorization_pairs_show_the_nearest_training_image(workdir: dict[str, Path], page: str) -> None:
    syn, _ = read_manifest(workdir["filter"] / "manifest.parquet")
    real, _ = read_manifest(workdir["ingest"] / "manifest.parquet")
    accepted = syn[syn["accepted"]].sort_values("score_nn_pixel_corr", ascending=False)
    top = accepted.iloc[0]  # the exact copy of a training image, score 1
    assert top["score_nn_pixel_corr"] == pytest.approx(1.0)
    section = page[page.index('id="memorization"'):]
    assert section.count('class="pair"') == 4
    first = section[section.index('class="pair"'):]
    first = first[:first.index("</div></div>")]
    copied = real[(real["split"] == "train") & (real["image_id"] == top["image_id"])]
    assert len(copied) == 1  # same bytes as the training image it copies
    train_data = base64.b64encode((workdir["ingest"] / copied["path"].iloc[0]).read_bytes()).decode()
    assert train_data in first and "correlation <b>1.000</b>" in first


def test_missing_metrics_is_a_user_error(workdir: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="metrics"):
        report_step(workdir["ingest"], workdir["filter"], tmp_path, tmp_path / "out")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@browser
def test_report_renders_in_headless_chromium(workdir: dict[str, Path], tmp_path: Path) -> None:
    binary = _chromium() or require_tool("chromium", "apt-get install chromium (.ci/run does)")
    url = (workdir["report"] / "report.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    base = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,2000", url],
                   check=True, capture_output=True, timeout=90)
    dom = subprocess.run([*base, "--dump-dom", url], check=True, capture_output=True, timeout=90, text=True).stdout
    sources = IMG.findall(dom)
    page_sources = IMG.findall((workdir["report"] / "report.html").read_text(encoding="utf-8"))
    assert len(sources) == len(page_sources) > 10
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1200, 2000)
        colours = rgb.getcolors(maxcolors=1 << 22)
        assert colours is not None and len(colours) > 50  # not blank, not a single colour
        # The utility chart decoded and was drawn: its bar colour is on screen.
        hits = sum(n for n, c in colours if all(abs(a - b) <= 3 for a, b in zip(c, UTILITY_BAR, strict=True)))
        assert hits > 500, hits

    # The first screen (1280x900, as a person opens it) shows the verdict box: its background fills a band near
    # the top, under the title, and the DOM has it right after the title.
    top = Path(os.environ.get(LOOK_AT, tmp_path)) / "report-top.png"
    subprocess.run([*base, f"--screenshot={top}", "--window-size=1280,900", url], check=True, capture_output=True,
                   timeout=90)
    situation = json.loads((workdir["evaluate"] / "metrics.json").read_text())["utility"]["gate"]["situation"]
    with Image.open(top) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1280, 900)
        box = VERDICT_BACKGROUND[situation]
        rows = [y for y in range(rgb.height) if sum(rgb.getpixel((x, y)) == box for x in range(0, 1280, 8)) > 60]
        assert len(rows) > 80 and 30 < rows[0] < 200, (situation, rows[:3], len(rows))  # a box of > 80 px, on top
    body = dom[dom.index("<body>"):]
    assert re.match(r'<body>\s*<h1>[^<]*</h1>\s*<section class="verdict', body), body[:300]


def test_evaluate_and_report_read_the_filter_steps_own_output(workdir: dict[str, Path], tmp_path: Path) -> None:
    """The real filter step (no top-up) on perturbed heldback images; evaluate and report take its output as is."""
    filter_mod = pytest.importorskip("synthaug.tasks.filter.step")
    import json

    import pandas as pd

    from synthaug.models.config import JudgeConfig
    from synthaug.tasks.core.params.generate import GenerateParams

    real, _ = read_manifest(workdir["ingest"] / "manifest.parquet")
    held = real[real["split"] == "heldback"].head(12)
    gen = tmp_path / "generate"
    rows = []
    for seed, (_, row) in enumerate(held.iterrows()):
        pixels = (load_png(workdir["ingest"] / row["path"]).astype(int) + 8 * (seed % 3)).clip(0, 255)
        path = f"images/{row['label']}/{row['label']}_s{seed}.png"
        rows.append({**row.to_dict(), "path": path, "image_id": write_png(pixels.astype("uint8"), gen / path),
                     "split": "train", "source": "synthetic", "generator": "test", "checkpoint": "none",
                     "seed": seed})
    write_manifest(pd.DataFrame(rows).astype({"seed": "Int64"}), gen / "manifest.parquet")
    counts = real[real["split"] == "train"]["label"].value_counts()
    plan = pd.DataFrame([(c, int(counts[c]), int(counts[c]) + (8 if c == "3" else 0), 12 if c == "3" else 0)
                         for c in sorted(counts.index)], columns=["class", "real", "target", "to_generate"])
    plan.to_csv(tmp_path / "plan.csv", index=False)
    quiet = Console(file=io.StringIO())
    filter_mod.filter_step(workdir["ingest"], gen, workdir["judge"], tmp_path / "plan.csv", tmp_path / "none",
                           filter_mod.FilterParams(topup_rounds=0, device="cpu"), GenerateParams(device="cpu"),
                           tmp_path / "filter", console=quiet)
    fast = tiny_params(classifier=JudgeConfig(width=8, feature_dim=16, steps=5, batch_size=32))
    evaluate_step(workdir["ingest"], tmp_path / "filter", workdir["judge"], fast, tmp_path / "evaluate", console=quiet)
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    summary = json.loads((tmp_path / "filter" / "filter_summary.json").read_text())
    for c, v in summary["classes"].items():
        mine = metrics["acceptance"]["per_class"][c]
        assert (mine["generated"], mine["accepted"]) == (v["generated"], v["accepted"])
        assert mine["acceptance_rate"] == v["acceptance_rate"] and mine["shortfall"] == v["shortfall"]
        assert sum(mine["reject_reasons"].values()) == v["generated"] - v["accepted"]
        assert set(mine["reject_reasons"]) <= set(filter_mod.REJECT_REASONS)
    assert metrics["acceptance"]["thresholds"] == summary["thresholds"]
    page = report_step(workdir["ingest"], tmp_path / "filter", tmp_path / "evaluate", tmp_path / "report")
    assert IMG.findall(page.read_text(encoding="utf-8"))


def test_report_template_escapes_class_names_and_source_paths() -> None:
    """The templates autoescape: a class name and a file or source path carrying markup arrive as text."""
    from synthaug.tasks.core.render import RunInfo, environment, render

    nasty = '<script>alert(1)</script>"'
    sections = environment().get_template("report_sections.html.j2").module
    counts = str(sections.counts({"chart": "data:image/png;base64,AA==", "rows": [
        {"name": nasty, "before": 4, "generated": 3, "passed": 0.5, "accepted": 2, "after": 6, "short": None,
         "reasons": [(nasty, 1)]}]}))
    thumb = {"src": "data:image/png;base64,AA==", "label": nasty, "path": f"images/{nasty}/a.png"}
    samples = str(sections.samples({"n": 1, "accepted_only": False, "rows": [
        {"name": nasty, "accepted": [thumb], "n_accepted": 1, "real": [thumb], "n_real": 1, "hidden": [],
         "rejected": [{"reason": nasty, "count": 1, "images": [thumb]}], "n_rejected": 1}]}))
    block = render("run.html.j2", run=RunInfo(dataset=nasty, source=f"/data/{nasty}/digits", source_repo=nasty))
    for page in (counts, samples, block):
        assert "<script" not in page.lower() and str(escape(nasty)) in page
    assert f'<td class="l">{escape(nasty)}</td>' in counts and f'<td class="cls">{escape(nasty)}</td>' in samples
    assert f'title="{escape(thumb["path"])}"' in samples and f'<div class="reason">{escape(nasty)} ×1</div>' in samples
    assert str(escape(f"/data/{nasty}/digits")) in block and 'href="params.yaml"' in block
    assert '<th class="l">version</th><td class="l">not published (' in block


def test_templates_ship_as_package_data() -> None:
    """An installed wheel needs the templates: pyproject's package data covers every file in tasks/templates."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["synthaug.tasks"]
    templates = sorted(p.relative_to(root / "tasks").as_posix() for p in (root / "tasks" / "templates").iterdir())
    assert templates and all(any(fnmatch.fnmatch(t, pat) for pat in patterns) for t in templates), templates


def _privacy_record(nasty: str) -> dict:
    """A ``privacy.json`` with the fields the report and the card read, one class named ``nasty``; its failures
    name that class, as the gate's do."""
    def attack(auc: float | None, *, p_value: bool = True) -> dict:
        per_class = {"0": {"auc": 0.51, "ci": [0.40, 0.62], "members": 10, "non_members": 30},
                     nasty: {"auc": 0.77, "ci": [0.55, 0.91], "members": 6, "non_members": 20}}
        for entry in per_class.values():
            entry.update({"p_value": 0.0123} if p_value else {})
        return {"auc": auc, "ci": None if auc is None else [auc - 0.05, auc + 0.05], "per_class": per_class,
                "class_confidence": 0.99375, "members": 16, "non_members": 50, "passed": auc is not None}

    runs = {c: {"balanced_accuracy": {"values": v}, "macro_f1": {"values": v},
                "per_class_recall": {"0": {"values": v}, nasty: {"values": v}}}
            for c, v in (("synthetic_only", [0.5, 0.6, 0.7]), ("real_only", [0.9, 0.8, 0.9]))}
    dcr = {"n": 40, "min": 0.25, "p05": None, "median": 0.5, "p95": 0.75, "max": 1.0}
    return {"passed": False, "failures": [f"membership inference (pixel), class {nasty}: AUC 0.770"],
            "feature_space": "judge", "attack_feature_space": "a network trained on the released images alone",
            "dp": {"claimed": False, "reason": "model.dp.epsilon is null"},
            "memorization": {"thresholds": {"pixel_correlation": 0.9123, "feature_distance": 1.5, "n_calibration": 120,
                                            "quantile": 0.01},
                             "pixel": {"within": 0, "highest_correlation": 0.8765, "passed": True},
                             "feature": {"within": 0, "smallest_distance": 2.5, "passed": True}},
            "attack": {"method": "distance", "max_auc": 0.6, "members": "real train", "non_members": "real held-out",
                       "confidence": 0.95, "bootstrap": 100, "pixel": attack(0.55),
                       "feature": attack(None, p_value=False)},
            "density_attack": {"method": "density ratio", "max_auc": 0.6, "pixel": attack(0.58),
                               "feature": attack(0.49)},
            "dcr": {s: {"released_to_train": dcr, "holdout_to_train": dcr} for s in ("pixel", "feature")},
            "utility": tstr.release_utility(runs)}


def test_an_anonymized_release_shows_its_privacy_sections_escaped(workdir: dict[str, Path], tmp_path: Path) -> None:
    """The report of a release (privacy section, TSTR vs TRTR, no memorization audit) and the card's sections: a class
    name carrying markup arrives as text in both, and every Markdown table keeps its columns."""
    nasty = '<script>alert(1)</script> | "x"'
    report = _privacy_record(nasty)
    privacy_dir = tmp_path / "privacy"
    privacy_dir.mkdir()
    (privacy_dir / record.PRIVACY_FILE).write_text(json.dumps(report))
    shutil.copyfile(workdir["evaluate"] / "class_counts.png", privacy_dir / record.DCR_PLOT)
    page = report_step(workdir["ingest"], workdir["filter"], workdir["evaluate"], tmp_path / "report", thumbs=2,
                       pairs=1, privacy_dir=privacy_dir).read_text(encoding="utf-8")
    for anchor in ("tstr", "privacy", "dp", "dcr"):
        assert f'id="{anchor}"' in page, anchor
    assert 'id="memorization"' not in page and "<script" not in page.lower()
    assert (f'<b class="bad">failed</b>: {escape(report["failures"][0])}. Feature space: judge (memorization); the '
            "membership attacks': a network trained on the released images alone.") in page
    assert f"<td class='l'>recall, class {escape(nasty)}</td><td>0.600 [" in page
    assert f'<td class="l">pixel</td><td class="l">{escape(nasty)}</td><td>0.770</td><td>[0.550, 0.910]</td>' in page
    section = page[page.index('id="privacy"'):]
    assert section.count('<td class="na" title="not available">—</td>') == 4 + 2  # DCR p05; feature p-values
    assert "No differential-privacy guarantee: model.dp.epsilon is null." in section
    dcr_plot = base64.b64encode((privacy_dir / record.DCR_PLOT).read_bytes()).decode()
    assert IMG.findall(section) == [f"data:image/png;base64,{dcr_plot}"]

    sections = [("Utility of the release (TSTR vs TRTR)", tstr.card_section(report["utility"])),
                ("Privacy", record.card_section(report)), ("Differential privacy", dp.card_section(report["dp"]))]
    card = write_card(tmp_path / "card", source={}, params_yaml="a: 1\n", code_version="", checkpoint=None,
                      metrics={}, sections=sections).read_text()
    assert "<script" not in card and md_cell(nasty) in card
    assert f"| recall, class {md_cell(nasty)} | 0.600 [" in card
    assert ("## Differential privacy\n\nNo differential-privacy guarantee: model.dp.epsilon is null.\n\n"
            "## Lineage") in card
    for table in re.findall(r"(?m)(?:^\|.*\|\n)+", card):  # every row of a table has its header's columns
        widths = {len(re.findall(r"(?<!\\)\|", row)) for row in table.splitlines()}
        assert len(widths) == 1, table


HTML_TAG = re.compile(r"</?(?:html|head|body|style|meta|title|nav|div|span|table|tr|th|td|img|figure|p|b|ul|li|a|h[1-6]"
                      r"|sup|code)\b", re.IGNORECASE)
CSS_RULE = re.compile(r"[\w.#-]+\s*\{[^{}]*:[^{}]*;")
MARKDOWN = re.compile(r"(?m)^\s*\||\|\s*$|\|---|^#{1,6} |\*\*\S")  # a table row, a heading, bold text
MARKDOWN_MODULES = ("tasks/core/publishing/card.py", "tasks/core/publishing/generators.py", "tasks/publish/step.py",
                    "tasks/core/privacy/record.py", "tasks/core/privacy/dp.py", "tasks/core/privacy/tstr.py")


def _literals(path: Path) -> list[str]:
    """The string literals of a module, f-strings' literal parts included, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_no_html_or_markdown_is_built_in_python() -> None:
    """report.html (its style sheet included) and the cards' Markdown come from tasks/templates: tasks/report.py holds
    no tag and no CSS and marks nothing safe, no card module builds Markdown (a table row, a heading, bold text),
    and Markdown cells have one escape, the templates' ``cell`` filter."""
    root = Path(__file__).resolve().parents[2]
    source = (root / "tasks" / "report.py").read_text(encoding="utf-8")
    assert not HTML_TAG.findall(source), HTML_TAG.findall(source)
    assert not [s for s in _literals(root / "tasks" / "report.py") if CSS_RULE.search(s)]
    assert not re.search(r"\bMarkup\b|\bescape\(|^import html$", source, re.MULTILINE)  # autoescape does it all
    for module in MARKDOWN_MODULES:  # CARD_CHECKPOINT_ROW, GENERATOR_ROW find rows in a written card, build none
        rows = [s for s in _literals(root / module) if MARKDOWN.search(s)
                and s not in (CARD_CHECKPOINT_ROW, GENERATOR_ROW)]
        assert not rows, (module, rows)
    for path in (root / "tasks").rglob("*.py"):
        if path.name != "render.py":
            assert "md_cell" not in path.read_text(encoding="utf-8"), path


def _lines_not_measured(card: str) -> int:
    return sum(line.count("not measured") for line in card.splitlines())


def test_the_tiny_pipelines_card_is_short_parses_as_a_hub_card_and_leads_with_the_verdict(
        workdir: dict[str, Path], tmp_path: Path) -> None:
    """The card of a dataset assembled from the tiny pipeline: a Hugging Face header the Hub parses, the verdict
    first, under 120 lines (no flattened metrics.json), "not measured" only where a headline value was not measured,
    and the real test split said to be inside and not to be trained on."""
    from huggingface_hub import DatasetCard

    from synthaug.tasks.core.evaluation.gate import headline_gains
    from synthaug.tasks.publish.assemble import assemble

    out = assemble(workdir["ingest"], workdir["filter"], workdir["evaluate"], workdir["report"], "a: 1\n",
                   tmp_path / "dataset", name="tiny", license="cc-by-4.0")
    card = (out / "card.md").read_text()
    lines = card.splitlines()
    assert len(lines) < 120, len(lines)
    data = DatasetCard(card).data
    assert data.license == "cc-by-4.0" and data.pretty_name == "tiny" and data.task_categories == [
        "image-classification"]
    assert data.size_categories == ["n<1K"] and {"synthetic", "synthaug", "diffusion"} <= set(data.tags)
    assert data.source_datasets == ["not recorded"]  # the tiny workdir's manifest carries no source lineage
    if os.environ.get(LOOK_AT):
        shutil.copyfile(out / "card.md", Path(os.environ[LOOK_AT]) / "tiny-card.md")
    metrics = json.loads((workdir["evaluate"] / "metrics.json").read_text())
    gate = metrics["utility"]["gate"]
    body = card.split("\n---\n", 1)[1]
    assert body.lstrip().startswith("# tiny\n\n**Verdict: ")  # the verdict leads
    assert md_cell(gate["verdict"]) in body
    test_images = sum(metrics["counts"]["real_test"].values())
    assert f"The real test split ({test_images} images) is included" in card and "must not be trained" in card
    for section in ("## Intended use", "## Out-of-scope use", "## How to load", "## Headline numbers",
                    "## Contents", "## Generation", "## Limitations", "## Lineage"):
        assert section in card, section
    assert 'rows[rows["split"] != "test"]' in card and "dvc import" in card
    # No metrics.json dump, and "not measured" exactly where a headline value is missing.
    assert ".reason" not in card and ".value" not in card and "fid" not in card.lower()
    rows = headline_gains(metrics["utility"])
    missing = sum(r[k] is None for r in rows for k in ("baseline_mean", "mean", "gain"))
    for label in {r["label"] for r in rows}:  # a metric's gap row is there when some family measured it
        gaps = [r["gap_closed"] for r in rows if r["label"] == label]
        missing += sum(g is None for g in gaps) if any(g is not None for g in gaps) else 0
    assert _lines_not_measured(card) == missing


def test_a_card_without_accepted_synthetic_images_claims_none(workdir: dict[str, Path], tmp_path: Path) -> None:
    """0 accepted: the verdict says nothing was accepted (not that real_synthetic hurts), no "synthetic" tag, no
    synthetic row, and the summary says the version holds real images only."""
    from huggingface_hub import DatasetCard

    from synthaug.tasks.core.evaluation.gate import gate_verdict

    metrics = json.loads((workdir["evaluate"] / "metrics.json").read_text())
    generated = sum(metrics["counts"]["synthetic_generated"].values())
    metrics["counts"]["synthetic_accepted"] = dict.fromkeys(metrics["counts"]["synthetic_accepted"], 0)
    metrics["utility"]["gate"] = gate_verdict(metrics["utility"], 0.01, accepted=0, generated=generated)
    real, lineage = read_manifest(workdir["ingest"] / "manifest.parquet")
    real = real[real["split"] != "heldback"]
    folder = tmp_path / "real-only"
    for rel in real["path"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(workdir["ingest"] / rel, folder / rel)
    write_manifest(real, folder / "manifest.parquet", metadata=lineage)
    card = write_card(folder, source=lineage, params_yaml="", code_version="", checkpoint=None,
                      metrics=metrics).read_text()
    assert "synthetic" not in DatasetCard(card).data.tags
    assert "**Verdict: nothing was accepted.**" in card and "hurts" not in card
    assert f"the filter accepted none of the {generated} generated, so this version holds the real images only" in card
    assert "No synthetic image passed the filter: nothing in this version is synthetic" in card
    assert "Real images plus" not in card and "synthetic images of the classes" not in card


def test_a_refused_privacy_gate_writes_its_report_with_the_failed_checks_and_advice(
        workdir: dict[str, Path], tmp_path: Path) -> None:
    """Nothing is released, but the report says why: each failed check, what to change, the gate's tables and DCR
    histogram, and the accepted images closest to a training image beside it; text escaped."""
    from synthaug.tasks.report import privacy_report

    nasty = '<script>alert(1)</script> | "x"'
    record_ = {**_privacy_record(nasty), "advice": ["train with differential privacy (model.dp.epsilon)"],
               "release": {"images": 18, "generated": 23}}
    privacy_dir = tmp_path / "privacy"
    privacy_dir.mkdir()
    (privacy_dir / record.PRIVACY_FILE).write_text(json.dumps(record_))
    shutil.copyfile(workdir["evaluate"] / "class_counts.png", privacy_dir / record.DCR_PLOT)
    page = privacy_report(workdir["ingest"], workdir["filter"], privacy_dir, pairs=3).read_text(encoding="utf-8")
    box = page[page.index('<section class="verdict failed"'):page.index("</section>")]
    assert "Not released: the privacy gate failed" in box and "18 synthetic images of 23 generated" in box
    assert f'<li class="bad">{escape(record_["failures"][0])}</li>' in box
    assert "<b>What to change:</b>" in box and "<li>train with differential privacy (model.dp.epsilon)</li>" in box
    assert 'id="privacy"' in page and 'id="dcr"' in page and 'id="memorization"' in page
    assert page.count('<div class="pair">') == 3 and "<script" not in page.lower()
    # An empty release (the filter accepted nothing) has no audit to show, but still its failure and advice.
    empty = {"passed": False, "failures": ["release: no synthetic image to release"], "advice": ["train longer"],
             "release": {"images": 0, "generated": 5}}
    (privacy_dir / record.PRIVACY_FILE).write_text(json.dumps(empty))
    page = privacy_report(workdir["ingest"], workdir["filter"], privacy_dir).read_text(encoding="utf-8")
    assert "release: no synthetic image to release" in page and "<li>train longer</li>" in page
