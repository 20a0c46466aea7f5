"""Imports point down: no cycle among cxrlib's modules, counting imports inside functions too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cxrlib"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known) -> set[str]:
    """The cxrlib modules ``name`` imports anywhere in its source (module level, functions, classes).

    ``from cxrlib import stages`` is an edge to ``cxrlib.stages``; ``from cxrlib import CLASS_NAMES``
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
    assert len(graph) > 20 and graph["cxrlib.stages"]  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_low_modules_stay_light():
    """The configs, the variants and the repository path import no torch and nothing above them."""
    known = modules()
    leaves = {"cxrlib.paths", "cxrlib.variants", "cxrlib.runfolder", "cxrlib.validation", "cxrlib.profiles"}
    configs = {"cxrlib.stage_configs": {"cxrlib.runfolder", "cxrlib.variants"},
               "cxrlib.config": leaves | {"cxrlib.stage_configs", "cxrlib.data.geometry"}}
    for name, allowed in [(leaf, set()) for leaf in sorted(leaves)] + list(configs.items()):
        assert imports_of(name, known[name], known) <= allowed, name
        source = known[name].read_text()
        assert "import torch" not in source and "from torch" not in source, name
