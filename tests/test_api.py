"""The public Python API (``synthaug/__init__.py``): imported lazily, and the README's example run as written inside
a user's project that has packages of its own called ``models``, ``tasks`` and ``flows``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.markers import integration, slow
from tests.toy import TINY, digits_folder

REPO = Path(__file__).resolve().parents[1]


def readme_api_example() -> str:
    """The one ```python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no '## Python API' section"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    assert len(blocks) == 1, f"expected one python block in the Python API section, found {len(blocks)}"
    return blocks[0]


def test_import_synthaug_loads_nothing_heavy_and_names_its_api():
    script = ("import sys, synthaug\n"
              "print(sorted(m for m in ('torch', 'monai', 'prefect', 'pandas', 'dvc') if m in sys.modules))\n"
              "print(synthaug.__all__)\n"
              "try:\n    synthaug.nope\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    heavy, names, missing = out.strip().splitlines()
    assert heavy == "[]"
    assert names == str(["Params", "fetch_dataset", "load_params", "read_manifest", "sample_published"])
    assert "no attribute 'nope'" in missing and "sample_published" in missing


@slow
@integration
def test_the_readme_example_runs_in_a_project_with_its_own_models_and_tasks(tmp_path):
    """A user's ``models``/``tasks``/``flows`` packages sit first on sys.path (the script's folder): synthaug's
    code must never import them (it did when the wheel installed top-level ``models`` and ``tasks``)."""
    from synthaug.flows.augment import augment
    from synthaug.flows.params import dump_params, load_params

    project = tmp_path / "project"
    for package in ("models", "tasks", "flows"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f'"""The user\'s own {package} package."""\nOWNER = "user"\n')
    source = digits_folder(tmp_path / "digits")
    params = load_params(None, [*TINY, f"data.source={source}", "publish.name=digits-balanced",
                                f"publish.registry={project / 'registry' / 'repo'}",
                                f"publish.remote={project / 'registry' / 'remote'}"])
    records = augment(params, str(tmp_path / "work"))
    assert records["publish"]["generator_tag"] == "digits-balanced-generator/v1"
    (project / "params.yaml").write_text(dump_params(params))
    example = project / "example.py"
    example.write_text(readme_api_example() + "\nimport models, tasks\nassert models.OWNER == tasks.OWNER == 'user'\n"
                       "print('rows', len(rows), 'train', len(train), 'more', more)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(example)], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (project / "digits-v1" / "manifest.parquet").is_file()
    assert (project / "more" / "manifest.parquet").is_file()
    assert "rows " in done.stdout and not done.stdout.startswith("rows 0")
