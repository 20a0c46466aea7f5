"""The one training step written out for the stage notebooks (cxrlib.training.walkthrough)."""

import pytest
import torch

from cxrlib import losses
from cxrlib.config import make_config
from cxrlib.training import stages, walkthrough

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _Tiny(torch.utils.data.Dataset):
    """Six 32x32 samples of three classes with gaze maps: enough for one step of any stage."""

    def __init__(self, n=6):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, 32, 32, generator=g)
        self.maps = torch.rand(n, 1, 32, 32, generator=g) + 0.01
        self.labels = torch.arange(n) % 3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "gaze_map": self.maps[i], "label": self.labels[i]}


def _config(stage, tmp_path, **kw):
    return make_config(stage, "smoke", run_dir=str(tmp_path), image_size=(32, 32), densenet_arch="densenet121",
                       batch_size=6, **kw)


@pytest.mark.parametrize("stage,trains,frozen", [
    ("stage1a", {"densenet"}, set()),
    ("stage2", {"res_se", "decoder", "saliency_head"}, {"densenet", "classifier"}),
    ("stage3", {"classifier"}, {"densenet", "res_se", "decoder", "saliency_head"}),
])
def test_one_step_trains_only_the_stage_parts_and_leaves_the_model_alone(tmp_path, stage, trains, frozen):
    config = _config(stage, tmp_path)
    model = stages.build_stage_model(config)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    report = walkthrough.one_step(config, _Tiny(), model)
    assert {p for p, t in report.trained.items() if t} == trains
    assert {p for p, t in report.trained.items() if not t} >= frozen
    for part in trains:
        assert report.grad_norm[part] > 0 and report.weight_change[part] > 0, part
    for part in frozen:
        assert report.grad_norm[part] == 0 and report.weight_change[part] == 0, part
        assert report.frozen_batchnorm_eval.get(part, True), part  # parts without BatchNorm are not listed
    assert set(report.frozen_batchnorm_eval) == frozen - {"classifier"}  # the heads hold no BatchNorm
    assert report.input_shape == (6, 1, 32, 32) and report.loss > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items()), "the caller's model changed"
    text = str(report)
    assert f"loss = {report.loss:.4f}" in text and "BatchNorm layers in eval mode" in text.replace("TRAIN", "x") \
        or not frozen


def test_stage2_shapes_per_part(tmp_path):
    config = _config("stage2", tmp_path)
    report = walkthrough.one_step(config, _Tiny(), stages.build_stage_model(config))
    assert report.part_shapes["saliency_head"] == (6, 1, 32, 32)
    assert report.part_shapes["densenet"]["bottleneck"][2:] == (1, 1)  # 32 / 32
    assert report.part_shapes["res_se"][0] == (6, 8, 32, 32) and len(report.part_shapes["res_se"]) == 5
    assert report.part_shapes["classifier"] == (6, 3) and report.grad_norm["classifier"] == 0  # runs, not in the loss


def test_one_step_loss_equals_the_stage_loss(tmp_path):
    config = _config("stage1a", tmp_path)
    model = stages.build_stage_model(config)
    report = walkthrough.one_step(config, _Tiny(), model)
    batch = walkthrough.first_batch(_Tiny(), config)
    model.train()
    expected = losses.triplet_all(model.forward_features(batch["image"])["bottleneck"], batch["label"], reduction="sum")
    assert report.loss == pytest.approx(float(expected), rel=1e-5)


def test_triplet_count_and_per_triplet_loss(tmp_path):
    labels = torch.tensor([0, 0, 1, 2])
    # anchors 0 and 1 have one positive and two negatives each; 2 and 3 have no positive
    assert walkthrough.triplet_count(labels) == 4
    config = _config("stage1a", tmp_path)
    model = stages.build_stage_model(config)
    out = walkthrough.triplet_loss_per_triplet(model, _Tiny(), config)
    assert out["triplets_per_batch"] == walkthrough.triplet_count(torch.arange(6) % 3) == 24
    assert out["per_triplet"] == pytest.approx(out["sum_per_batch"] / 24)
    with pytest.raises(ValueError, match="needs loss='triplet'"):
        walkthrough.triplet_loss_per_triplet(model, _Tiny(), _config("stage1a", tmp_path, loss="supcon"))


def test_the_paper_code_freeze_shows_batchnorm_in_train_mode(tmp_path):
    config = _config("stage2", tmp_path, frozen_bn="train")
    report = walkthrough.one_step(config, _Tiny(), stages.build_stage_model(config))
    assert report.frozen_batchnorm_eval == {"densenet": False}
    assert "frozen densenet: BatchNorm layers in TRAIN mode" in str(report)
    assert report.grad_norm["densenet"] == 0  # still no gradient: only the statistics move
