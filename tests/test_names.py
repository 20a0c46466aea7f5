"""Naming rules of the library that a reader can check: no module imports another module's
private (underscore) names."""

import ast
from pathlib import Path

import cxrlib

PACKAGE = Path(cxrlib.__file__).parent


def test_no_private_names_imported_across_modules():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cxrlib"):
                found += [f"{path.relative_to(PACKAGE.parent)}: {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "private names imported from another module: " + "; ".join(found)


def test_one_seed_per_stage_run(monkeypatch, tmp_path):
    from cxrlib.config import make_config
    from cxrlib.training import stages

    calls = []
    monkeypatch.setattr(stages, "seed_everything", lambda seed: calls.append(seed))
    monkeypatch.setattr(stages, "initialise", lambda model, config: "skipped")

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(stages, "stage_trainer", stop)
    config = make_config("stage1b", "smoke", run_dir=str(tmp_path), init_from="none", seed=7)
    data = type("Data", (), {"train": [], "val": []})()
    try:
        stages.run_stage(config, data, progress=False)
    except Stop:
        pass
    assert calls == [7]
