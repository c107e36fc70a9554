"""docs/params.md: generated from the params classes, complete, and in step with the code."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from synthaug.flows.cli import app
from synthaug.flows.params import Params
from synthaug.flows.params_doc import DOC_PATH, params_reference

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference() -> str:
    return params_reference()


def _rows(text: str) -> dict[str, list[str]]:
    """Dotted key -> its table cells (type, default, description), from the rendered Markdown."""
    rows = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\| `([\w.]+)` \| (.*) \|", line)
        if match:
            rows[match[1]] = [cell.strip() for cell in re.split(r"(?<!\\)\|", match[2])]
    return rows


def _leaves_and_sections(node: dict[str, Any], prefix: str = "") -> tuple[list[str], list[str]]:
    """Every key of the default params' dump: (leaf keys, nested-section keys), dotted."""
    leaves, sections = [], []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            sections.append(dotted)
            sub_leaves, sub_sections = _leaves_and_sections(value, f"{dotted}.")
            leaves += sub_leaves
            sections += sub_sections
        else:
            leaves.append(dotted)
    return leaves, sections


def test_committed_reference_is_current(reference):
    committed = (REPO / DOC_PATH).read_text()
    assert committed == reference, f"{DOC_PATH} is stale: run `synthaug params-doc --write`"


def test_output_is_deterministic(reference):
    assert params_reference() == reference


def test_every_field_has_a_row_or_a_section_with_a_description(reference):
    leaves, sections = _leaves_and_sections(Params().model_dump(mode="json"))
    assert len(leaves) > 150 and "model.diffusion" in sections and "evaluate.recipe" in sections
    rows = _rows(reference)
    assert set(rows) == set(leaves), "keys not in the reference (or not in Params): " + str(set(rows) ^ set(leaves))
    blank = [key for key, (_, _, description) in rows.items() if not description]
    assert not blank, f"keys without a description: {blank}"
    for section in sections:
        level = "#" * (section.count(".") + 2)
        match = re.search(rf"^{level} {re.escape(section)}\n\n(.+)\n", reference, re.MULTILINE)
        assert match and match[1].strip(), f"no `{level} {section}` heading with a description"
    top = [line[3:] for line in reference.splitlines() if line.startswith("## ")]
    assert top == list(Params.model_fields), "one ## section per params section, in Params order"


def test_defaults_types_and_bounds_come_from_the_classes(reference):
    rows, params = _rows(reference), Params()
    for key, value in {"data.image_size": params.data.image_size, "publish.name": params.publish.name,
                       "filter.judge.steps": params.filter.judge.steps,  # Params' 500, not JudgeConfig's 1000
                       "evaluate.classifier.width": params.evaluate.classifier.width,
                       "model.diffusion.channels": list(params.model.diffusion.channels),
                       "privacy.name": params.privacy.name, "tune.guidance": params.tune.guidance}.items():
        assert rows[key][1] == f"`{json.dumps(value)}`", key
    assert rows["data.image_size"][0] == "`int` (`>= 4, <= 1024`)"
    assert rows["model.device"][0] == '`"auto" \\| "cpu" \\| "cuda"`'
    assert rows["generate.guidance_scale"][0] == "`float \\| None` (`>= 0.0`)"
    assert rows["model.diffusion.channels"][0] == "`list[int]`"
    assert rows["data.window_width"][2] == rows["data.window_center"][2] != ""  # one line, `a, b: text`
    assert "<" not in rows["privacy.memorization_quantile"][2].split("`")[0]  # `<` outside code: no stray tag


class _Documented(BaseModel):
    """A section for the test.

    kept: described, over two
      lines.
    gone: a line naming no field.
    """

    kept: int = Field(1, ge=0)
    forgotten: Literal["a", "b"] | None = None


class _Root(BaseModel):
    """The root."""

    part: _Documented = _Documented()


def test_a_missing_or_stale_description_line_is_an_error():
    with pytest.raises(ValueError) as raised:
        params_reference(_Root)
    message = str(raised.value)
    assert "part.forgotten: no description" in message and "'gone', which is no field" in message
    assert "part.kept" not in message


def test_cli_prints_and_writes_the_reference(reference, tmp_path, monkeypatch):
    runner = CliRunner()
    printed = runner.invoke(app, ["params-doc"])
    assert printed.exit_code == 0 and printed.output == reference
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["params-doc", "--write"]).exit_code == 0
    assert (tmp_path / DOC_PATH).read_text() == reference


def test_generator_imports_no_heavy_library():
    script = ("import sys\nfrom synthaug.flows.params_doc import params_reference\nparams_reference()\n"
              "print(sorted(m for m in ('torch', 'pandas', 'prefect', 'monai') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1:] == ["[]"], done.stdout[-2000:] + done.stderr[-2000:]
