"""The notebooks' first-cell set-up (cxrlib.colab), with Colab faked on a CPU.

Colab is faked by ``CXRLIB_COLAB=1`` or a ``google.colab`` module in ``sys.modules``; Google
Drive by a temporary folder (``CXRLIB_DRIVE_ROOT``) that a fake ``mount`` fills; the GPU by
replacing ``colab._gpu_name``.
"""

import json
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

from cxrlib import colab
from cxrlib.colab import check_install_cell, choose_profile, install_cell_source, start
from cxrlib.config import parameter_names

ROOT = Path(__file__).resolve().parents[1]
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


class FakeMount:
    """Stands for google.colab.drive.mount: creates MyDrive under the mount point."""

    def __init__(self):
        self.calls = []

    def __call__(self, mount_point):
        self.calls.append(mount_point)
        (Path(mount_point) / "MyDrive").mkdir(parents=True)


def refuse_mount(mount_point):
    raise AssertionError(f"Drive must not be mounted here ({mount_point})")


@pytest.fixture
def drive(tmp_path, monkeypatch):
    """A Colab runtime without a GPU whose Drive mounts at tmp_path/drive."""
    monkeypatch.setenv("CXRLIB_COLAB", "1")
    monkeypatch.setenv("CXRLIB_DRIVE_ROOT", str(tmp_path / "drive"))
    monkeypatch.delenv("CXRLIB_RUN_DIR", raising=False)
    monkeypatch.setattr(colab, "_gpu_name", lambda: None)
    return tmp_path / "drive"


@pytest.fixture
def not_colab(monkeypatch):
    monkeypatch.delenv("CXRLIB_COLAB", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(colab, "_gpu_name", lambda: None)


def params(**values):
    """A notebook's parameters cell as globals(), with the defaults the notebooks will have."""
    return {"profile": None, "run_dir": None, "egd_root": None, "image_root": None, **values}


def test_colab_detected_by_environment_or_module(monkeypatch):
    monkeypatch.delenv("CXRLIB_COLAB", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not colab.in_colab()
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert colab.in_colab()
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.setenv("CXRLIB_COLAB", "1")
    assert colab.in_colab()


@pytest.mark.parametrize("profile, colab_, gpu, egd_root, expected", [
    (None, False, False, None, "smoke"),
    (None, False, True, "/data/egd", "smoke"),  # CI and local runs keep the defaults
    (None, True, False, None, "demo"),
    (None, True, True, None, "demo"),  # a GPU alone: synthetic data, demo
    (None, True, False, "/data/egd", "demo"),  # the data without a GPU: demo
    (None, True, True, "/data/egd", "paper"),
    ("smoke", True, True, "/data/egd", "smoke"),  # explicit wins
    ("paper", False, False, None, "paper"),
])
def test_profile_choice(profile, colab_, gpu, egd_root, expected):
    chosen, why = choose_profile(profile, colab=colab_, gpu=gpu, egd_root=egd_root)
    assert chosen == expected and why


def test_colab_run_dir_goes_to_drive(drive, capsys):
    mount = FakeMount()
    namespace = params()
    config = start("data", namespace, mount=mount)
    expected = drive / "MyDrive" / "cxrlib" / "runs" / "demo"
    assert mount.calls == [str(drive)]
    assert config.profile == "demo" and Path(config.run_dir) == expected
    assert namespace["run_dir"] == str(expected) and namespace["profile"] == "demo"
    assert json.loads((expected / "data" / "config.json").read_text())["run_dir"] == str(expected)
    out = capsys.readouterr().out
    assert "Google Drive" in out and f"cache:        {expected / 'cache'}" in out
    assert "GPU:          none" in out and "T4 GPU" in out
    # A second notebook in the same runtime finds Drive mounted and does not mount again.
    start("data", params(), mount=mount)
    assert len(mount.calls) == 1


def test_colab_default_mount_goes_through_google_colab_drive(drive, monkeypatch):
    calls = []
    fake_drive = types.SimpleNamespace(mount=lambda point: (calls.append(point), Path(point, "MyDrive").mkdir(parents=True)))
    module = types.ModuleType("google.colab")
    module.drive = fake_drive
    monkeypatch.setitem(sys.modules, "google.colab", module)
    monkeypatch.delenv("CXRLIB_COLAB")
    config = start("data", params())
    assert calls == [str(drive)] and Path(config.run_dir).is_relative_to(drive / "MyDrive")


def test_drive_that_does_not_mount_says_so(drive):
    with pytest.raises(RuntimeError, match="did not mount"):
        start("data", params(), mount=lambda point: None)


def test_colab_paper_profile_with_gpu_and_data(drive, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(colab, "_gpu_name", lambda: "Tesla T4")
    egd = tmp_path / "egd-cxr" / "1.0.0"  # the config checks that egd_root holds a master sheet
    egd.mkdir(parents=True)
    (egd / "master_sheet.csv").write_text("dicom_id\n")
    config = start("data", params(egd_root=str(egd)), mount=FakeMount())
    assert config.profile == "paper"
    assert Path(config.run_dir) == drive / "MyDrive" / "cxrlib" / "runs" / "paper"
    out = capsys.readouterr().out
    assert "GPU:          Tesla T4" in out and "bf16 native:  no" in out and "fp16" in out


def test_paper_profile_without_gpu_warns(drive):
    with pytest.warns(UserWarning, match="paper profile without a CUDA GPU"):
        start("data", params(profile="paper"), mount=FakeMount())


def test_explicit_run_dir_is_kept_and_drive_left_alone(drive, tmp_path):
    config = start("data", params(run_dir=str(tmp_path / "mine")), mount=refuse_mount)
    assert Path(config.run_dir) == tmp_path / "mine" and config.profile == "demo"


def test_run_dir_env_is_kept_on_colab(drive, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRLIB_RUN_DIR", str(tmp_path / "env"))
    config = start("data", params(), mount=refuse_mount)
    assert Path(config.run_dir) == tmp_path / "env"


def test_missing_upstream_checkpoint_names_the_notebook(drive):
    with pytest.raises(FileNotFoundError, match="Run notebook 03_stage1_encoder.ipynb first") as error:
        start("stage2", params(), mount=FakeMount())
    assert str(drive / "MyDrive" / "cxrlib" / "runs" / "demo" / "stage1b" / "best.pt") in str(error.value)
    with pytest.raises(FileNotFoundError, match="05_stage3_fusion.ipynb"):
        start("explain", params())


def test_upstream_checkpoint_on_drive_is_found(drive, capsys):
    run_dir = drive / "MyDrive" / "cxrlib" / "runs" / "demo"
    (run_dir / "stage2").mkdir(parents=True)
    (run_dir / "stage2" / "best.pt").write_bytes(b"written by notebook 04 in another runtime")
    (run_dir / "stage3").mkdir()
    (run_dir / "stage3" / "last.pt").write_bytes(b"an interrupted run")
    config = start("stage3", params(), mount=FakeMount())
    out = capsys.readouterr().out
    assert f"reads:        {run_dir / 'stage2' / 'best.pt'}\n" in out
    assert f"writes:       {run_dir / 'stage3' / 'best.pt'}" in out
    assert "set resume = True" in out and config.init_from == "stage2"


def test_explicit_checkpoint_path_and_none(drive, tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from='none'"):
        start("stage2", params(init_from=str(tmp_path / "elsewhere.pt")), mount=FakeMount())
    assert start("stage2", params(init_from="none"), mount=FakeMount()).init_from == "none"


def test_outside_colab_smoke_and_run_dir_env(not_colab, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRLIB_RUN_DIR", str(tmp_path / "ci"))
    namespace = params()
    with pytest.warns(UserWarning, match="02_contrastive_pretraining.ipynb"):  # smoke: warn, go on
        config = start("stage1b", namespace, mount=refuse_mount)
    assert config.profile == "smoke" and Path(config.run_dir) == tmp_path / "ci"
    assert namespace["run_dir"] == str(tmp_path / "ci")
    assert (tmp_path / "ci" / "stage1b" / "config.json").is_file()


def test_outside_colab_missing_upstream_fails_in_demo(not_colab, tmp_path):
    with pytest.raises(FileNotFoundError, match="04_stage2_saliency.ipynb"):
        start("stage3", params(profile="demo", run_dir=str(tmp_path)))


@pytest.mark.parametrize("stage", list(colab.STAGE_NOTEBOOKS))
def test_every_notebook_stage_starts(stage, not_colab, tmp_path):
    upstream = {"init_from": "none"} if "init_from" in parameter_names(stage) else {}  # data, results: none
    config = start(stage, params(run_dir=str(tmp_path), **upstream))
    assert config.stage == stage and config.profile == "smoke"


def test_unknown_stage_and_profile_fail_clearly(not_colab, tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'stage9'.*stage2"):
        start("stage9", params())
    with pytest.raises(ValueError, match="profile.*'fast'"):
        start("data", params(profile="fast", run_dir=str(tmp_path)))


def test_unknown_parameter_still_caught(not_colab, tmp_path):
    with pytest.raises(TypeError, match="epoch"):
        start("stage2", params(run_dir=str(tmp_path), epoch=3))


# --- the install cell -----------------------------------------------------------------------

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_install_cell_is_the_generated_one(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert check_install_cell("".join(cells[0]["source"])) == []


def test_install_cell_uses_the_pyproject_url():
    assert colab.repository_url() == REPO_URL
    assert f'"git+{REPO_URL}@{{_ref}}"' in install_cell_source()
    problems = check_install_cell(install_cell_source("https://github.com/someone/else"))
    assert "it does not install from pyproject.toml's repository URL" in problems


def run_install_cell(monkeypatch, returncode):
    calls = []

    def fake_run(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, returncode, stdout="Successfully installed cxrlib-0.1.0",
                                           stderr="ERROR: repository not found")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    namespace = {}
    exec(install_cell_source(), namespace)
    return namespace, calls


def test_install_cell_installs_on_colab(monkeypatch, capsys, tmp_path):
    namespace, calls = run_install_cell(monkeypatch, 0)
    tag = "v" + tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert calls == [[sys.executable, "-m", "pip", "install", f"git+{REPO_URL}@{tag}"]]
    out = capsys.readouterr().out
    assert f"installed cxrlib from git+{REPO_URL}@{tag}" in out and "Restart" not in out
    # The names the cell leaves in globals() are not mistaken for notebook parameters.
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.delenv("CXRLIB_COLAB", raising=False)
    monkeypatch.setattr(colab, "_gpu_name", lambda: None)
    namespace.pop("__builtins__")
    assert {"IN_COLAB", "_pip", "_source", "_ref"} <= set(namespace)
    config = start("data", {**namespace, **params(run_dir=str(tmp_path))})
    assert config.profile == "smoke"


def test_install_cell_pins_pyproject_version_in_every_notebook():
    import nbformat

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert colab.install_ref() == f"v{version}"
    for path in NOTEBOOKS:
        install = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"][0].source
        assert f'_ref = "v{version}"' in install, path.name
        assert '_ref = "main"' in install, path.name  # says how to install main instead


def test_install_cell_says_restart_when_pip_changed_a_preinstalled_package(monkeypatch, capsys):
    from importlib import metadata

    versions = iter(["7.7.1", "8.1.9"])  # ipywidgets before and after pip

    class Dist:
        def __init__(self):
            self.metadata, self.version = {"Name": "ipywidgets"}, next(versions)

    monkeypatch.setattr(metadata, "distributions", lambda: [Dist()])
    run_install_cell(monkeypatch, 0)
    out = capsys.readouterr().out
    assert "Successfully installed" in out and "ipywidgets" in out and "Restart the runtime" in out


def test_failed_install_is_readable(monkeypatch, capsys):
    with pytest.raises(RuntimeError, match="pip could not install cxrlib from git\\+https://") as error:
        run_install_cell(monkeypatch, 1)
    assert "run this cell again" in str(error.value)
    assert "ERROR: repository not found" in capsys.readouterr().out


def test_install_cell_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran outside Colab"))
    exec(install_cell_source(), {})


def test_sync_rewrites_a_fork_url_into_install_cell_and_badge(tmp_path):
    copy = tmp_path / "04_stage2_saliency.ipynb"
    copy.write_text((ROOT / "notebooks" / "04_stage2_saliency.ipynb").read_text())
    fork = "https://github.com/student/my-fork"
    assert colab.sync_notebooks([copy], url=fork) == [copy]
    cells = json.loads(copy.read_text())["cells"]
    assert check_install_cell("".join(cells[1]["source"]), url=fork) == []
    assert "https://colab.research.google.com/github/student/my-fork/blob/main/notebooks/" in "".join(cells[0]["source"])
    assert REPO_URL not in copy.read_text()
    assert colab.sync_notebooks([copy], url=fork) == []  # nothing left to change
    with pytest.raises(ValueError, match="github.com"):
        colab.sync_notebooks([copy], url="https://gitlab.com/student/my-fork")


@pytest.mark.parametrize("profile", ["smoke", "demo", "paper"])
@pytest.mark.parametrize("form", ["file", "folder", "stage"])
def test_colab_and_training_read_init_from_alike(form, profile, not_colab, tmp_path):
    """A .pth file, a stage folder and a stage name: colab.start and training's resolve_init
    accept each, and point at the same checkpoint, in every profile."""
    from cxrlib.config import make_config
    from cxrlib.training.checkpoints import resolve_init

    run_dir = tmp_path / "run"
    (run_dir / "stage1b").mkdir(parents=True)
    (run_dir / "stage1b" / "best.pt").write_bytes(b"weights")
    (tmp_path / "model.pth").write_bytes(b"weights")
    init_from = {"file": str(tmp_path / "model.pth"), "folder": str(run_dir / "stage1b"), "stage": "stage1b"}[form]
    expected = tmp_path / "model.pth" if form == "file" else run_dir / "stage1b" / "best.pt"
    assert colab.check_upstream(make_config("stage2", profile, run_dir=str(run_dir), init_from=init_from)) == expected
    assert resolve_init(make_config("stage2", profile, run_dir=str(run_dir), init_from=init_from)) == expected


@pytest.mark.parametrize("profile", ["smoke", "demo"])
def test_colab_refuses_a_missing_file_init_from_like_training(profile, not_colab, tmp_path):
    from cxrlib.config import make_config
    from cxrlib.training.checkpoints import resolve_init

    config = make_config("stage2", profile, run_dir=str(tmp_path), init_from=str(tmp_path / "gone.pth"))
    with pytest.raises(FileNotFoundError):
        resolve_init(config)
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        colab.check_upstream(config)
