"""Imports point down: no cycle among cxrlib's modules, counting imports inside functions too."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cxrlib"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known) -> set[str]:
    """The cxrlib modules ``name`` imports anywhere in its source (module level, functions, classes).

    ``from cxrlib import stages`` is an edge to ``cxrlib.training.stages``; ``from cxrlib import CLASS_NAMES``
    one to ``cxrlib`` (the package's ``__init__``). Parent packages a Python import runs first
    are not counted: every module has them."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..data import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # import cxrlib.data.egd.something -> the module
                target = target.rpartition(".")[0]
            if target.startswith("cxrlib") and target != name:
                out.add(target)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from cxrlib import stages, CLASS_NAMES\n    import cxrlib.data.egd\n")
    known = {"cxrlib", "cxrlib.stages", "cxrlib.data", "cxrlib.data.egd", "cxrlib.m"}
    assert imports_of("cxrlib.m", source, known) == {"cxrlib", "cxrlib.stages", "cxrlib.data.egd"}


def test_no_import_cycle_among_cxrlib_modules():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert len(graph) > 20 and graph["cxrlib.training.stages"]  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The layers, bottom first: a module may import its own layer and the ones before it, never one after.
# (Within a layer the cycle test above keeps imports acyclic.)
LAYERS = [
    ("cxrlib", "cxrlib.paths", "cxrlib.progress", "cxrlib.runfolder", "cxrlib.runtime"),
    ("cxrlib.config",),
    ("cxrlib.synthetic", "cxrlib.data"),
    ("cxrlib.model", "cxrlib.losses", "cxrlib.metrics"),
    ("cxrlib.training",),
    ("cxrlib.evaluation", "cxrlib.explain", "cxrlib.plots", "cxrlib.diagram"),
    ("cxrlib.bench", "cxrlib.run", "cxrlib.colab", "cxrlib.cli", "cxrlib.__main__"),
]


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix that names ``module`` or its package."""
    best, depth = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = index, name.count(".")
    assert best is not None, f"{module} is in no layer of LAYERS: add it"
    return best


def test_layer_of_takes_the_longest_prefix():
    assert layer_of("cxrlib.training.stages") == 4
    assert layer_of("cxrlib") == 0 and layer_of("cxrlib.config.variants") == 1
    assert layer_of("cxrlib.data.egd") == 2


def test_imports_point_down_across_packages():
    known = modules()
    upward = []
    for name, path in known.items():
        for target in imports_of(name, path, known):
            if layer_of(target) > layer_of(name):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that point up a layer: " + ", ".join(sorted(upward))


def test_the_layer_check_sees_an_upward_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from cxrlib.training import stages\n")
    known = {"cxrlib.training.stages": None, "cxrlib.data.m": None}
    assert layer_of("cxrlib.training.stages") > layer_of("cxrlib.data.m")
    assert imports_of("cxrlib.data.m", source, known) == {"cxrlib.training.stages"}


@pytest.mark.parametrize("module", ["cxrlib", "cxrlib.config", "cxrlib.config.variants",
                                    "cxrlib.config.profiles", "cxrlib.runfolder", "cxrlib.paths"])
def test_the_bottom_layer_loads_no_torch(module):
    """Imported in a fresh interpreter, the bottom layer and the configs leave torch (and numpy) unloaded."""
    code = (f"import sys, {module}; heavy = sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'torchvision', 'numpy', 'pandas')); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"import {module} loaded {out.stdout.strip()}"


def test_the_lazy_package_still_offers_its_helpers():
    code = "import sys, cxrlib; f = cxrlib.seed_everything; print('torch' in sys.modules, callable(f))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
