"""Notebook structure: the skeleton of style.md, no method code, no outputs, one repository URL.

Execution itself is nbmake's job (``pytest`` collects ``notebooks/`` with ``--nbmake``).
"""

import ast
import re
import tomllib
from pathlib import Path

import nbformat
import pytest

from cxrlib.config import STAGE_CONFIGS, parameter_names
from cxrlib.run import NOTEBOOK_STAGES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_every_pipeline_notebook_exists_and_is_numbered():
    names = [p.name for p in NOTEBOOKS]
    assert names == sorted(names) and all(re.match(r"\d\d_", n) for n in names)
    assert set(names) <= set(NOTEBOOK_STAGES)
    assert {"01_data_exploration.ipynb", "05_stage3_fusion.ipynb", "06_saliency_gradcam_comparison.ipynb"} <= set(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_skeleton(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    badge = f"https://colab.research.google.com/github/{REPO_URL.removeprefix('https://github.com/')}/blob/main/notebooks/{path.name}"
    assert badge in first.source, "Colab badge must point at this notebook in the repository of pyproject.toml"
    assert "**Reads:**" in first.source and "**Writes:**" in first.source
    install = code_cells(nb)[0].source
    assert 'IN_COLAB = "google.colab" in sys.modules' in install and "if IN_COLAB:" in install
    assert f"git+{REPO_URL}" in install
    params = [c for c in code_cells(nb) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code_cells(nb)[1], "the second code cell is the tagged parameters cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_are_literals_and_config_fields(path):
    nb = nbformat.read(path, as_version=4)
    params = code_cells(nb)[1].source
    stage = NOTEBOOK_STAGES[path.name]
    valid = set(parameter_names(stage)) if stage in STAGE_CONFIGS else None
    for node in ast.parse(params).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        ast.literal_eval(node.value)  # literals only
        if valid is not None:
            assert node.targets[0].id in valid, f"{node.targets[0].id} is not a field of the {stage} config"
    if valid is not None:
        code = "\n".join(c.source for c in code_cells(nb))
        assert f'config_from_namespace("{stage}", globals())' in code or f'start("{stage}", globals())' in code


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_method_code_in_notebooks(path):
    """Notebooks orchestrate, cxrlib implements: no def, class or lambda in code cells."""
    nb = nbformat.read(path, as_version=4)
    for cell in code_cells(nb):
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{path.name}: {type(node).__name__} in a code cell; move it to cxrlib"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in code_cells(nb):
        assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"
