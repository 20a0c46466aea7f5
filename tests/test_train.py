"""The one training loop: freezing, resume, frozen-feature reuse, checkpoints, init_from."""

import warnings

import pytest
import torch

from cxrlib.training import stages
from cxrlib.config import make_config
from cxrlib.training.checkpoints import BEST, LAST, load_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run")


def config(stage, run_dir, **kw):
    kw.setdefault("synthetic_images", 18)
    kw.setdefault("epochs", 2)
    return make_config(stage, "smoke", run_dir=str(run_dir), **kw)


@pytest.fixture(scope="module")
def data(run_dir):
    return stages.prepare_data(config("stage1b", run_dir), progress=False)


@pytest.fixture(scope="module")
def stage1b(run_dir, data):
    return stages.run_stage(config("stage1b", run_dir, init_from="none"), data, progress=False)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stage_writes_checkpoints_history_and_config(stage1b, run_dir):
    stage_dir = run_dir / "stage1b"
    for name in (BEST, LAST, "history.csv", "history.json", "config.json"):
        assert (stage_dir / name).is_file(), name
    last = load_checkpoint(stage_dir / LAST)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "config", "history"} <= set(last)
    assert last["epoch"] == 1 and len(last["history"]) == 2 and last["config"]["stage"] == "stage1b"
    assert list(stage1b.history.columns[:3]) == ["epoch", "train_loss", "val_loss"]
    assert "val_auc_macro" in stage1b.history.columns


def test_frozen_parts_get_no_gradient_and_keep_batchnorm_statistics(stage1b, run_dir, data):
    cfg = config("stage2", run_dir, epochs=1)
    model = stages.build_stage_model(cfg)
    stages.initialise(model, cfg)
    before = _state(model.densenet)
    result = stages.run_stage(cfg, data, model=model, progress=False)
    after = _state(result.model.densenet)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and running stats
    assert not any(p.requires_grad for p in result.model.densenet.parameters())
    moved = _state(result.model.res_se)
    assert any(not torch.equal(moved[k], v) for k, v in _state(stages.build_stage_model(cfg).res_se).items())


def test_paper_code_batchnorm_drift_switch(stage1b, run_dir, data):
    cfg = config("stage2", run_dir / "drift", epochs=1, frozen_bn="train", init_from=str(run_dir / "stage1b" / BEST))
    model = stages.build_stage_model(cfg)
    stages.initialise(model, cfg)
    before = _state(model.densenet)
    result = stages.run_stage(cfg, data, model=model, progress=False)
    after = _state(result.model.densenet)
    drifted = [k for k in before if "running_mean" in k and not torch.equal(before[k], after[k])]
    assert drifted  # BatchNorm statistics moved although the weights were frozen
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))


def test_resume_ends_with_the_same_weights(stage1b, run_dir, data):
    full = stages.run_stage(config("stage2", run_dir / "full", epochs=3, init_from=str(run_dir / "stage1b" / BEST)),
                            data, progress=False)
    cut_cfg = config("stage2", run_dir / "cut", epochs=3, init_from=str(run_dir / "stage1b" / BEST))
    stages.run_stage(cut_cfg, data, progress=False, stop_after=1)  # "interrupted" after epoch 1
    assert load_checkpoint(run_dir / "cut" / "stage2" / LAST)["epoch"] == 0
    resumed = stages.run_stage(config("stage2", run_dir / "cut", epochs=3, resume=True,
                                      init_from=str(run_dir / "stage1b" / BEST)), data, progress=False)
    a, b = _state(full.model), _state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(resumed.history) == 3


def test_frozen_feature_reuse_trains_to_the_same_result(stage1b, run_dir, data):
    init = str(run_dir / "stage1b" / BEST)
    runs = {}
    for reuse in (True, False):
        cfg = config("stage3", run_dir / f"reuse{reuse}", epochs=2, init_from="none", reuse_frozen_features=reuse)
        torch.manual_seed(0)  # the same random Res-SE, decoder and classifier in both runs
        model = stages.build_stage_model(cfg)
        stages.initialise(model, config("stage2", run_dir, init_from=init))  # same DenseNet in both
        runs[reuse] = stages.run_stage(cfg, data, model=model, progress=False)
    a, b = _state(runs[True].model.classifier), _state(runs[False].model.classifier)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert runs[True].history["val_loss"].tolist() == pytest.approx(runs[False].history["val_loss"].tolist(), abs=1e-5)


def test_missing_upstream_checkpoint(run_dir, tmp_path):
    cfg = config("stage2", tmp_path / "alone")
    model = stages.build_stage_model(cfg)
    with pytest.warns(UserWarning, match="no upstream checkpoint"):
        assert "missing" in stages.initialise(model, cfg)
    demo = make_config("stage2", "demo", run_dir=str(tmp_path / "alone"))
    with pytest.raises(FileNotFoundError, match="run the previous notebook first"):
        stages.initialise(model, demo)


def test_init_from_loads_only_the_named_parts(stage1b, run_dir):
    cfg = config("stage2", run_dir)
    model = stages.build_stage_model(cfg)
    fresh = _state(model.classifier)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        message = stages.initialise(model, cfg)
    assert "densenet" in message
    source = load_checkpoint(run_dir / "stage1b" / BEST)["model"]
    assert torch.equal(model.densenet.features.conv0.weight, source["densenet.features.conv0.weight"])
    assert all(torch.equal(fresh[k], v) for k, v in _state(model.classifier).items())


def test_finetune_mode_trains_every_part(stage1b, run_dir, data):
    init = str(run_dir / "stage1b" / BEST)
    stages.run_stage(config("stage2", run_dir / "finetune", epochs=1, init_from=init), data, progress=False)
    cfg = config("stage3", run_dir / "finetune", epochs=1, mode="finetune", finetune_epochs=1)
    before = load_checkpoint(run_dir / "finetune" / "stage2" / BEST)["model"]
    result = stages.run_stage(cfg, data, progress=False)
    assert list(result.history["phase"]) == ["head", "finetune"]
    assert (run_dir / "finetune" / "stage3" / "finetune" / BEST).is_file()
    after = load_checkpoint(run_dir / "finetune" / "stage3" / BEST)["model"]
    for part, module in result.model.parts().items():
        weights = [f"{part}.{k}" for k, _ in module.named_parameters()]
        assert weights, part
        assert any(not torch.equal(before[k], after[k]) for k in weights), f"{part} did not change"


class _Constant(torch.nn.Module):
    """A model whose validation loss never improves after the first epoch: it is ``level``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(1, 1)

    def parts(self):
        return {"w": self.w}


def _constant_loss(model, batch, extra=None):
    return {"loss": model.w(batch["x"]).sum() * 0 + 1.0}


@pytest.mark.parametrize("patience, epochs, ran, end", [(0, 4, 4, "epochs"), (1, 6, 2, "early_stop"),
                                                         (3, 6, 4, "early_stop"), (5, 3, 3, "epochs")])
def test_early_stopping_and_the_recorded_end(tmp_path, patience, epochs, ran, end):
    from cxrlib.training.equal_stages import stage_complete
    from cxrlib.training.history import early_stop
    from cxrlib.training.trainer import Trainer

    cfg = make_config("stage1b", "smoke", run_dir=str(tmp_path), epochs=epochs, early_stopping=patience)
    samples = [{"x": torch.ones(1), "label": torch.tensor(0)} for _ in range(4)]
    history = Trainer(_Constant(), cfg, train_parts=("w",), loss_fn=_constant_loss, progress=False).fit(samples, samples)
    assert len(history) == ran  # the first epoch improves (from inf), none after it
    assert list(history["improved"]) == [True] + [False] * (ran - 1)
    assert history["end"].iloc[-1] == end and history["end"].iloc[:-1].isna().all()
    assert stage_complete(tmp_path / "stage1b")
    rows = history.drop(columns="end").to_dict("records")
    assert early_stop(rows, patience) == (end == "early_stop")


def test_an_interrupted_stage_is_not_complete_until_resumed(tmp_path):
    from cxrlib.training.equal_stages import stage_complete
    from cxrlib.training.trainer import Trainer

    samples = [{"x": torch.ones(1), "label": torch.tensor(0)} for _ in range(4)]
    cfg = make_config("stage1b", "smoke", run_dir=str(tmp_path), epochs=3)
    Trainer(_Constant(), cfg, train_parts=("w",), loss_fn=_constant_loss, progress=False).fit(
        samples, samples, stop_after=1)
    assert not stage_complete(tmp_path / "stage1b")
    cfg = make_config("stage1b", "smoke", run_dir=str(tmp_path), epochs=3, resume=True)
    history = Trainer(_Constant(), cfg, train_parts=("w",), loss_fn=_constant_loss, progress=False).fit(samples, samples)
    assert len(history) == 3 and history["end"].iloc[-1] == "epochs"
    assert stage_complete(tmp_path / "stage1b")


def test_a_rerun_with_the_same_settings_loads_the_finished_run(stage1b, run_dir, data, capsys):
    """A notebook run twice: the finished stage is loaded, not trained again; a new lr trains anew."""
    best = run_dir / "stage1b" / BEST
    written = best.stat().st_mtime_ns
    again = stages.run_stage(config("stage1b", run_dir, init_from="none"), data, progress=True)
    assert best.stat().st_mtime_ns == written and "loaded instead of training again" in capsys.readouterr().out
    assert again.history["val_loss"].tolist() == stage1b.history["val_loss"].tolist()
    assert all(torch.equal(a, b) for a, b in zip(_state(again.model).values(), _state(stage1b.model).values()))
    # the folder's config.json rewritten by a set-up cell does not count: the finished run's record does
    config("stage1b", run_dir, init_from="none", lr=5e-3).save(run_dir / "stage1b" / "config.json")
    assert not stages.finished_with(config("stage1b", run_dir, init_from="none", lr=5e-3))
    assert stages.finished_with(config("stage1b", run_dir, init_from="none"))
    assert not stages.finished_with(config("stage1b", run_dir, init_from="none", resume=True))
    # a resume that ended with other settings than best.pt's epoch: the record of the end counts
    import json

    record = run_dir / "stage1b" / "finished.json"
    ended = json.loads(record.read_text())
    record.write_text(json.dumps({**ended, "epochs": 5}))
    assert not stages.finished_with(config("stage1b", run_dir, init_from="none"))
    assert stages.finished_with(config("stage1b", run_dir, init_from="none", epochs=5))
    record.unlink()  # a folder from before the record: trained again, never taken as finished
    assert not stages.finished_with(config("stage1b", run_dir, init_from="none"))
