"""Running a notebook's set-up again in the same kernel, as a student does after a "Try it".

The namespace stands for the kernel's globals; ``In`` for IPython's input history (start reads it
to find the parameters cell run since its last call).
"""

import json
import sys
import warnings
from pathlib import Path

import pytest

from cxrlib import colab
from cxrlib.colab import start

PARAMS_CELL = 'profile = None\nrun_dir = None\negd_root = None\nimage_root = None\nepochs = None\ninit_from = "none"'


@pytest.fixture
def kernel(monkeypatch, tmp_path):
    monkeypatch.delenv("CXRLIB_COLAB", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(colab, "_gpu_name", lambda: None)
    monkeypatch.setenv("CXRLIB_RUN_DIR", str(tmp_path / "runs"))
    ns = {"In": [""]}

    def run(source):  # one cell: its text joins the history, then it runs
        ns["In"].append(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(source, "<cell>", "exec"), ns)
        return ns

    ns["start"] = start
    return run


SETUP = 'config = start("stage1b", globals())'
LATER = "data = [1, 2]\ndistance = 0.5\nprobe_before = {'auc': 0.5}"


def test_rerun_in_the_same_kernel_ignores_later_cells_names(kernel, tmp_path):
    kernel(PARAMS_CELL)
    first = kernel(SETUP)["config"]
    kernel(LATER)
    kernel(PARAMS_CELL)
    ns = kernel(SETUP)  # fails today with "unknown parameter(s) ['config', 'data', ...]"
    assert ns["config"].to_dict() == first.to_dict()
    ns = kernel(SETUP)  # the set-up cell alone, run again
    assert ns["config"].to_dict() == first.to_dict()


def test_a_changed_parameter_is_used_everywhere(kernel, tmp_path):
    kernel(PARAMS_CELL)
    kernel(SETUP)
    kernel(LATER)
    ns = kernel(PARAMS_CELL.replace("epochs = None", "epochs = 3"))
    ns = kernel(SETUP)
    assert ns["config"].epochs == 3
    saved = json.loads((Path(ns["config"].run_dir) / "stage1b" / "config.json").read_text())
    assert saved["epochs"] == 3


def test_a_misspelt_parameter_still_fails_on_a_rerun_and_not_after_its_fix(kernel):
    kernel(PARAMS_CELL)
    kernel(SETUP)
    kernel(LATER)
    kernel(PARAMS_CELL + "\nepoch = 3")
    with pytest.raises(TypeError, match="epoch"):
        kernel(SETUP)
    kernel(PARAMS_CELL)  # corrected; `epoch` is still defined in the kernel
    assert kernel(SETUP)["config"].stage == "stage1b"


def test_changing_profile_does_not_reuse_the_earlier_profiles_run_dir(kernel, monkeypatch, tmp_path):
    monkeypatch.delenv("CXRLIB_RUN_DIR")
    monkeypatch.setattr("cxrlib.config.repository_root", lambda: tmp_path)
    kernel(PARAMS_CELL)
    smoke = kernel(SETUP)["config"]
    kernel(LATER)
    kernel('profile = "demo"')  # a new cell, the parameters cell not rerun
    demo = kernel(SETUP)["config"]
    assert smoke.profile == "smoke" and demo.profile == "demo"
    assert Path(demo.run_dir).name == "demo" and demo.run_dir != smoke.run_dir


def test_an_explicit_run_dir_is_kept_on_a_rerun(kernel, tmp_path):
    kernel(PARAMS_CELL.replace("run_dir = None", f"run_dir = {str(tmp_path / 'mine')!r}"))
    kernel(SETUP)
    kernel('profile = "demo"')
    assert kernel(SETUP)["config"].run_dir == str(tmp_path / "mine")


@pytest.mark.parametrize("finished", [True, False])
def test_the_report_says_interrupted_only_for_a_stage_that_did_not_finish(kernel, tmp_path, capsys, finished):
    stage = tmp_path / "runs" / "stage1b"
    stage.mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (stage / name).write_bytes(b"weights")
    (stage / "config.json").write_text(json.dumps({"stage": "stage1b"}))
    (stage / "history.json").write_text(json.dumps([{"epoch": 1, **({"end": "epochs"} if finished else {})}]))
    kernel(PARAMS_CELL)
    kernel(SETUP)
    said = "interrupted" in capsys.readouterr().out
    assert said is not finished


def test_train_upstream_follows_the_registry_and_trains_only_what_is_missing(kernel, monkeypatch, capsys):
    from cxrlib.training import stages

    trained = []
    monkeypatch.setattr(stages, "prepare_data", lambda config, progress=True: "data")

    def fake_run_stage(config, data, progress=True):  # a finished stage, as the trainer leaves it
        trained.append((config.stage, config.profile, config.run_dir))
        config.stage_dir.mkdir(parents=True, exist_ok=True)
        (config.stage_dir / "best.pt").write_bytes(b"w")
        config.save(config.stage_dir / "config.json")
        (config.stage_dir / "history.json").write_text(json.dumps([{"epoch": 1, "end": "epochs"}]))

    monkeypatch.setattr(stages, "run_stage", fake_run_stage)
    kernel(PARAMS_CELL.replace('init_from = "none"', "init_from = None") + "\ntrain_upstream = True")
    ns = kernel('config = start("stage3", globals())')
    run_dir = ns["config"].run_dir
    assert trained == [(s, "smoke", run_dir) for s in ("stage1a", "stage1b", "stage2")]
    out = capsys.readouterr().out
    assert "train_upstream 1/3: stage1a (notebook 02_contrastive_pretraining.ipynb)" in out
    assert "train_upstream 3/3: stage2 done" in out
    trained.clear()
    kernel('config = start("stage3", globals())')  # all there now: nothing trains again
    assert trained == []


def test_without_train_upstream_the_message_offers_it(kernel):
    kernel(PARAMS_CELL.replace('profile = None', 'profile = "demo"').replace('init_from = "none"', "init_from = None"))
    with pytest.raises(FileNotFoundError, match="train_upstream = True"):
        kernel('config = start("stage2", globals())')


def test_a_variant_run_writes_its_own_folder_and_leaves_the_main_stage_alone(kernel, tmp_path, capsys):
    main = tmp_path / "runs" / "stage1b"
    main.mkdir(parents=True)
    (main / "config.json").write_text('{"stage": "stage1b", "lr": 0.001}')
    (tmp_path / "runs" / "stage1a").mkdir()
    (tmp_path / "runs" / "stage1a" / "best.pt").write_bytes(b"")  # the main run's upstream (only its place counts here)
    kernel(PARAMS_CELL.replace('init_from = "none"', "init_from = None") + '\nvariant = "try-lr"\nlr = 0.5')
    config = kernel(SETUP)["config"]
    assert config.run_dir == str(tmp_path / "runs" / "variants" / "try-lr") and config.lr == 0.5
    assert config.init_from == str(tmp_path / "runs" / "stage1a" / "best.pt")  # the main run's upstream
    assert json.loads((config.stage_dir / "config.json").read_text())["lr"] == 0.5
    assert json.loads((main / "config.json").read_text())["lr"] == 0.001  # untouched
    assert f"this run writes {config.stage_dir}" in capsys.readouterr().out
    kernel('variant = "../x"')
    with pytest.raises(ValueError, match="parameter 'variant'"):
        kernel(SETUP)
