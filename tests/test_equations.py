"""Every displayed loss or metric equation of notebooks 02-06 is followed by a code cell that
computes it by hand and asserts it equals the cxrlib function; every stage notebook runs one
training step by hand before run_stage. (nbmake executes those cells: a text that no longer
describes the code fails `make test`.)"""

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# chapter -> the cxrlib calls its hand-computed checks compare with
CHECKS = {
    "02": ("losses.triplet_all", "losses.supcon", "losses.nt_xent"),
    "03": ("losses.classification_ce",),
    "04": ("losses.saliency_kl", "metrics.cc", "metrics.kld", "metrics.sim", "se(x_toy)"),
    "05": ("losses.uncertainty_weighted",),
    "06": ("metrics.saliency_scores", "metrics.auc_judd", "explain.cam_maps"),
}
MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$", re.S)


def _notebook(prefix):
    (path,) = (ROOT / "notebooks").glob(f"{prefix}_*.ipynb")
    return nbformat.read(path, as_version=4).cells


def _asserts_closeness(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assert) and re.search(r"allclose|isclose", ast.unparse(node.test)):
            return True
    return False


@pytest.mark.parametrize("prefix", sorted(CHECKS))
def test_each_equation_is_computed_by_hand_and_compared(prefix):
    cells = _notebook(prefix)
    for call in CHECKS[prefix]:
        found = [i for i, c in enumerate(cells) if c.cell_type == "code" and call in c.source]
        assert found, f"notebook {prefix}: no code cell calls {call}"
        i = found[0]
        assert _asserts_closeness(cells[i].source), f"notebook {prefix}: the {call} cell asserts no allclose/isclose"
        assert "print(" in cells[i].source, f"notebook {prefix}: the {call} cell prints nothing for the reader"
        before = next(c for c in reversed(cells[:i]) if c.cell_type == "markdown")
        assert MATH.search(before.source), f"notebook {prefix}: the {call} check does not follow an equation"


@pytest.mark.parametrize("prefix", ["02", "03", "04", "05"])
def test_one_step_by_hand_before_run_stage(prefix):
    cells = _notebook(prefix)
    code = [c.source for c in cells if c.cell_type == "code"]
    step = [i for i, s in enumerate(code) if "walkthrough.one_step(" in s]
    train = [i for i, s in enumerate(code) if "stages.run_stage(" in s]
    assert step and train and step[0] < train[0], f"notebook {prefix}: one step by hand must come before run_stage"
    assert any("cxrlib/training/trainer.py" in c.source for c in cells if c.cell_type == "markdown"), \
        f"notebook {prefix}: point the reader to the training loop's source"


def test_the_check_finder_sees_a_missing_assert():
    assert _asserts_closeness("assert torch.allclose(a, b)")
    assert not _asserts_closeness("print(a, b)")
