"""Templates of the report and the card (``tasks/templates``), and the record of the run that made a dataset.

Rendering: one jinja2 environment; all the HTML and Markdown of report.html and of the dataset and generator cards
(their sections included) is in its templates, and the Python code passes plain data (numbers, rows, ``data:``
URIs). Templates named ``*.html.j2`` are autoescaped, so every value from the data (class names, paths, reasons) is
escaped; nothing is marked safe but the run block's markers (``Markup``). Markdown templates (``*.md.j2``) are not
HTML: their table cells go through the ``cell`` filter (``md_cell``) instead. One escape per format: autoescape for
HTML, ``md_cell`` for Markdown.

The run: ``run.json`` beside the report and the card names what made the dataset (dataset name and version tag,
generator family, pipeline code version, source repository and revision, publish date, the registry, the params
file). The report and the card show it in blocks between ``<!-- synthaug:<block> -->`` markers (``BLOCKS``: the run
table of both, the report's publish status at the top of its summary box, and the card's "how to load"). The version
tag and the date are known only under the registry lock, when ``tasks.publish`` decides the tag: it re-renders those
blocks (``stamp_run``) in the registry's copy and then in the workdir's, so both say the same. A version's identity
is its images and manifest (``tasks/publish/step.py``), so the tag and date never make an unchanged run a new version.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from synthaug.tasks.core.io.files import write_atomic

RUN_FILE = "run.json"
RUN_BEGIN = "<!-- synthaug:run -->"
RUN_END = "<!-- /synthaug:run -->"
# The files that show blocks of the run, each block's name and its template.
BLOCKS = (("report.html", "run", "run.html.j2"), ("report.html", "status", "status.html.j2"),
          ("card.md", "run", "run.md.j2"), ("card.md", "load", "card_load.md.j2"))
NOT_RECORDED = "not recorded"
NOT_PUBLISHED = "not published (publishing is an act: `synthaug publish`, `synthaug run` or a scheduled run)"


def begin(block: str) -> str:
    return f"<!-- synthaug:{block} -->"


def end(block: str) -> str:
    return f"<!-- /synthaug:{block} -->"


@dataclass(frozen=True)
class RunInfo:
    """What made a dataset; ``None``: not known (yet). ``tag`` and ``date`` are set by publish only.

    dataset: the published name (``publish.name``, or the release's name); family: the generator families that made
    the synthetic images (accepted or not); code_version: ``tasks.publish.code_version()``; source: the source
    location; source_repo / source_rev: its repository (``data.repo``; a local source has none) and resolved
    revision; source_hash: the source's content hash; params_file: the resolved params shipped beside the report and
    the card; registry: the data registry the version is in and artifact: the dataset's DVC artifact name there (set
    with the tag); unchanged: this run published nothing because its images and manifest equal version ``tag``.
    """

    dataset: str | None = None
    tag: str | None = None
    date: str | None = None
    family: str | None = None
    code_version: str | None = None
    source: str | None = None
    source_repo: str | None = None
    source_rev: str | None = None
    source_hash: str | None = None
    params_file: str = "params.yaml"
    registry: str | None = None
    artifact: str | None = None
    unchanged: bool = False

    def published(self, tag: str, date: str, *, registry: str | None = None, artifact: str | None = None,
                  unchanged: bool = False) -> RunInfo:
        return dataclasses.replace(self, tag=tag, date=date, registry=registry, artifact=artifact,
                                   unchanged=unchanged)

    @property
    def fetch(self) -> str | None:
        """The ``dvc get`` command that fetches the version (None before it is published)."""
        if self.tag is None or self.registry is None:
            return None
        return f"dvc get {self.registry} datasets/{self.tag.rpartition('/')[0]} --rev {self.tag} -o {self.dataset}"

    @property
    def version_number(self) -> int | None:
        return int(self.tag.rpartition("/v")[2]) if self.tag and self.tag.rpartition("/v")[2].isdigit() else None

    def version_text(self) -> str:
        if self.tag is None:
            return NOT_PUBLISHED
        if self.unchanged:
            return f"{self.tag} (nothing new published: this run's images and manifest are identical to it)"
        return self.tag

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) of the run block; a value not known is left out, the version says why it is missing."""
        rows = [("dataset", self.dataset), ("version", self.version_text()), ("published", self.date),
                ("registry", self.registry), ("generator family", self.family), ("pipeline code", self.code_version),
                ("source", self.source), ("source repository", self.source_repo),
                ("source revision", self.source_rev), ("source content hash", self.source_hash)]
        return [(label, value) for label, value in rows if value is not None]


def run_info(lineage: Mapping[str, Any], generators: Iterable[Any], *, dataset: str | None = None,
             code_version: str | None = None) -> RunInfo:
    """The run of a dataset from its ingest lineage (the manifest metadata) and its synthetic rows' ``generator``."""
    families = sorted({str(g) for g in generators if g is not None and g == g})  # g != g: NaN (no generator)
    return RunInfo(dataset=dataset, family=", ".join(families) or None, code_version=code_version,
                   source=lineage.get("source"), source_repo=lineage.get("repo"),
                   source_rev=lineage.get("resolved_rev") or lineage.get("rev"),
                   source_hash=lineage.get("content_hash"))


def read_run(folder: Path) -> RunInfo | None:
    """The ``run.json`` of a dataset folder; None when it has none (a dataset assembled by other tools)."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    fields = {f.name for f in dataclasses.fields(RunInfo)}
    return RunInfo(**{k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k in fields})


def write_run(folder: Path, run: RunInfo) -> None:
    write_atomic((json.dumps(dataclasses.asdict(run), indent=1) + "\n").encode(), Path(folder) / RUN_FILE)


def stamp_run(folder: Path, run: RunInfo) -> None:
    """Write ``run.json`` and re-render the run's blocks in the folder's report.html and card.md (where present)."""
    folder = Path(folder)
    write_run(folder, run)
    for file in dict.fromkeys(f for f, _, _ in BLOCKS):
        path = folder / file
        if path.is_file():
            write_atomic(stamp_text(path.read_text(encoding="utf-8"), file, run).encode("utf-8"), path)


def stamp_text(text: str, file: str, run: RunInfo) -> str:
    """``text`` (the content of ``file``: report.html or card.md) with its run blocks rendered for ``run``."""
    for name, block, template in BLOCKS:
        if name == file:
            text = replace_block(text, block, render(template, run=run))
    return text


def replace_block(text: str, name: str, block: str) -> str:
    """``text`` with what lies between the markers of block ``name`` replaced by ``block`` (unchanged without the
    markers: a page rendered by an older version of this code)."""
    start, stop = text.find(begin(name)), text.find(end(name))
    if start < 0 or stop < start:
        return text
    return text[:start] + block.rstrip("\n") + text[stop + len(end(name)):]


# ------------------------------------------------------------------------------------------------------ rendering


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("synthaug.tasks", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the render instead of printing nothing
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = md_cell
    env.filters["num"] = lambda value: "n/a" if value is None else f"{value:.3f}"
    env.globals.update(RUN_BEGIN=Markup(RUN_BEGIN), RUN_END=Markup(RUN_END), NOT_RECORDED=NOT_RECORDED,
                       begin=lambda name: Markup(begin(name)), end=lambda name: Markup(end(name)))
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")  # a Markdown code span: a ``<`` in one is shown, not read as a tag


def md_text(text: str) -> str:
    """Plain text as Markdown: outside code spans a backslash is doubled and a ``<`` cannot open an HTML tag."""
    return "".join(part if i % 2 else part.replace("\\", "\\\\").replace("<", "&lt;")
                   for i, part in enumerate(CODE_SPAN.split(text)))


def md_cell(value: Any) -> str:
    """A value as one Markdown table cell (``md_text``, and a ``|`` or newline cannot break the row: GitHub's tables
    split a row at an unescaped ``|`` even inside a code span)."""
    if value is None:
        return NOT_RECORDED
    return md_text(str(value)).replace("|", "\\|").replace("\n", " ")
