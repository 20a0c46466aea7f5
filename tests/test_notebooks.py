"""Notebook structure: the shared skeleton, no method code, no outputs, one repository URL.

Execution itself is nbmake's job (``pytest`` collects ``notebooks/`` with ``--nbmake``).
"""

import ast
import re
import tomllib
from pathlib import Path

import nbformat
import pytest

from cxrlib.colab import NOTEBOOK_PARAMETERS
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
    valid = set(parameter_names(stage)) | set(NOTEBOOK_PARAMETERS) if stage in STAGE_CONFIGS else None
    for node in ast.parse(params).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        ast.literal_eval(node.value)  # literals only
        if valid is not None:
            assert node.targets[0].id in valid, f"{node.targets[0].id} is not a field of the {stage} config"
    if valid is not None:
        assert f'config = colab.start("{stage}", globals())' in [c.source for c in code_cells(nb)], \
            "the config comes from the one set-up cell every notebook shares"


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


# -- the notebooks as chapters (issue 14): goals, prose, equations, exercises, summaries ----------
CHAPTERS = [p for p in NOTEBOOKS if p.name[:2] in {"01", "02", "03", "04", "05", "06", "07", "08"}]
# the equations each chapter promises: every keyword must share a markdown cell with LaTeX
PROMISED_EQUATIONS = {
    "02": ("triplet", "SupCon", "NT-Xent"),
    "03": ("cross-entropy",),
    "04": ("softmax", "Kullback-Leibler"),
    "05": ("fusion classifier", "uncertainty"),
    "06": ("CC", "KLD", "SIM", "NSS", "AUC-Judd"),
    "07": ("bootstrap", "paired t-test"),
    "08": ("one degree of visual angle", "mean of the others", "paired difference"),
}
DIAGRAM_STAGES = {"02": "stage1a", "03": "stage1b", "04": "stage2", "05": "stage3"}
TRAINING_CALLS = re.compile(r"\b(run_stage|test_report|explain\.scoreboard|results\.compare_variants)\(")
MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$", re.S)
MIN_WORDS = 400


def markdown(nb):
    return [c for c in nb.cells if c.cell_type == "markdown"]


def prose_words(nb) -> int:
    """Words of prose: markdown without LaTeX, code spans, link targets and the badge."""
    words = 0
    for cell in markdown(nb):
        text = MATH.sub(" ", cell.source)
        text = re.sub(r"`[^`]*`", " ", text)
        text = re.sub(r"\]\([^)]*\)", "]", text)
        words += len(re.findall(r"[A-Za-z][A-Za-z'-]*", text))
    return words


def test_every_notebook_in_the_tables_exists():
    """The pipeline's table (cxrlib.run) and the README's table name only notebooks that exist."""
    present = {p.name for p in NOTEBOOKS}
    missing = [name for name in NOTEBOOK_STAGES if name not in present]
    assert not missing, f"notebooks in cxrlib.run.NOTEBOOK_STAGES but not in notebooks/: {missing}"
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"^\| `(\d\d_\w+)`", readme, re.M))
    assert named, "README.md has no notebook table"
    assert not {f"{n}.ipynb" for n in named} - present, "README names a notebook that does not exist"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_never_more_than_three_code_cells_in_a_row(path):
    run = 0
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        run = run + 1 if cell.cell_type == "code" else 0
        assert run <= 3, f"{path.name}: cell {i} is the 4th code cell in a row; say in markdown what they do"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_learning_goals_summary_and_next_link(path):
    nb = nbformat.read(path, as_version=4)
    goals = nb.cells[0].source.split("### Learning goals", 1)
    assert len(goals) == 2, f"{path.name}: the first cell needs a '### Learning goals' list"
    bullets = [line for line in goals[1].splitlines() if line.startswith("- ")]
    assert 3 <= len(bullets) <= 4, f"{path.name}: {len(bullets)} learning goals, expected 3-4"
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Summary"), f"{path.name}: end with ## Summary"
    names = [p.name for p in CHAPTERS]
    target = names[names.index(path.name) + 1] if path.name != names[-1] else names[0]
    assert f"]({target})" in last.source, f"{path.name}: the summary must link to {target}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_prose_exercise_and_promised_equations(path):
    nb = nbformat.read(path, as_version=4)
    assert prose_words(nb) >= MIN_WORDS, f"{path.name}: {prose_words(nb)} words of prose, expected {MIN_WORDS}+"
    assert any(c.source.startswith("## Try it") for c in markdown(nb)), f"{path.name}: no '## Try it' exercise"
    for keyword in PROMISED_EQUATIONS.get(path.name[:2], ()):
        assert any(keyword in c.source and MATH.search(c.source) for c in markdown(nb)), \
            f"{path.name}: no equation beside {keyword!r}"
    stage = DIAGRAM_STAGES.get(path.name[:2])
    if stage:
        assert any(f'diagram.draw_network("{stage}"' in c.source for c in code_cells(nb)), \
            f"{path.name}: draw the network of {stage} with cxrlib.diagram"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_what_you_should_see_reads_the_run(path):
    """After each training or evaluation cell: a 'What you should see' note, then a code cell
    that prints numbers from the run (no float literal standing in for a result)."""
    cells = nbformat.read(path, as_version=4).cells
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or not TRAINING_CALLS.search(cell.source):
            continue
        after = [j for j in range(i + 1, len(cells)) if cells[j].cell_type == "markdown"
                 and cells[j].source.startswith("### What you should see")]
        assert after, f"{path.name}: cell {i} trains or evaluates; add '### What you should see' after it"
        reader = cells[after[0] + 1]
        assert reader.cell_type == "code" and "print(" in reader.source
        floats = [n for n in ast.walk(ast.parse(reader.source))
                  if isinstance(n, ast.Constant) and isinstance(n.value, float)]
        assert not floats, f"{path.name}: 'What you should see' must read numbers from the run, not type them"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_imports_in_one_cell_and_no_literal_paths_or_class_names(path):
    cells = code_cells(nbformat.read(path, as_version=4))[2:]  # after the install and parameters cells
    importing = [c for c in cells if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(ast.parse(c.source)))]
    assert len(importing) == 1, f"{path.name}: imports are spread over {len(importing)} cells"
    for cell in cells:
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not re.search(r"(^|/)(ablation|runs|stage\w+)/", node.value), \
                    f"{path.name}: run-folder path {node.value!r}; ask cxrlib for it"
                assert node.value not in ("Normal", "CHF", "Pneumonia"), f"{path.name}: use cxrlib.CLASS_NAMES"


# -- executed in the smoke profile, headless (MPLBACKEND=Agg) --------------------------------------
FIGURE_CALL = re.compile(r"\b(plots\.(?!save_figure|gaze_rows|heat_colorbar|use_inline_backend)\w+|"
                         r"diagram\.draw_network|viewer\.(?:qualitative_figure|show_comparison|best_and_worst)|"
                         r"explain\.scoreboard_figure|results\.results_figure|external\.readers_figure)\(")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Every chapter executed once by ``cxrlib run`` (papermill) in the smoke profile, with the
    non-interactive Agg backend a server or CI would set: figures must survive it."""
    import os

    from cxrlib.run import run_pipeline

    run_dir = tmp_path_factory.mktemp("smoke-run")
    old = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"
    try:
        # a cell limit: a kernel that stops answering fails the suite instead of hanging CI
        run_pipeline("smoke", run_dir=str(run_dir), only=[p.name for p in CHAPTERS], progress=False,
                     cell_timeout=600)
    finally:
        os.environ.pop("MPLBACKEND") if old is None else os.environ.__setitem__("MPLBACKEND", old)
    return run_dir / "notebooks"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_executed_notebook_has_no_error_and_every_figure(executed, path):
    nb = nbformat.read(executed / path.name, as_version=4)
    drawn = 0
    for i, cell in enumerate(code_cells(nb)):
        assert not [o for o in cell.outputs if o.output_type == "error"], f"{path.name}: error in code cell {i}"
        expected = len(FIGURE_CALL.findall(cell.source))
        images = sum("image/png" in o.get("data", {}) for o in cell.outputs)
        assert images == expected, f"{path.name}, code cell {i}: {images} image output(s), {expected} figure(s) drawn"
        drawn += expected
    assert drawn, f"{path.name} draws no figure"
