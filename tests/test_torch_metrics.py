"""The batched torch saliency metrics equal the NumPy reference functions (to 1e-5)."""

import numpy as np
import pytest
import torch

from cxrlib import metrics as M
from cxrlib.metrics.torch_saliency import batch_scores_torch


def _maps(shape, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    pred = rng.random(shape).astype(dtype)
    gt = (rng.random(shape) ** 4).astype(dtype)
    fix = (rng.random(shape) > 0.98).astype(np.uint8)
    fix[..., 0, 0] = 1  # at least one fixated pixel per map
    return pred, gt, fix


@pytest.mark.parametrize("shape, dtype", [((5, 7, 9), np.float64), ((3, 80, 64), np.float32),
                                          ((2, 1, 320, 256), np.float32)])  # the last: the paper's map size
@pytest.mark.parametrize("kld_eps", [M.EPS, 0.0])
def test_equal_to_numpy_reference(shape, dtype, kld_eps):
    pred, gt, fix = _maps(shape, seed=len(shape) + shape[-1])
    pred, gt = pred.astype(dtype), gt.astype(dtype)
    pred[1] = 0.5  # a constant map: CC and NSS 0, AUC-Judd 0.5
    fixations = [None] + [f for f in fix[1:]]  # image 0 has no fixations: NaN NSS / AUC-Judd
    fix[0] = 0
    ref = M.batch_saliency_scores(pred, gt, fixations, kld_eps=kld_eps)
    got = batch_scores_torch(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(fix), kld_eps=kld_eps)
    assert set(got) == set(ref.columns)
    for key in ref.columns:
        np.testing.assert_allclose(got[key].numpy(), ref[key].to_numpy(), atol=1e-5, rtol=0, err_msg=key)
    assert got["cc"][1] == 0 and got["nss"][1] == 0 and got["auc_judd"][1] == 0.5
    assert torch.isnan(got["nss"][0]) and torch.isnan(got["auc_judd"][0])


def test_softmax_maps_and_exact_kl_with_zeros():
    """Real-shaped model output (a softmax over 160x128 pixels) and gaze maps with zero pixels."""
    torch.manual_seed(0)
    pred = torch.randn(4, 1, 160, 128).flatten(1).softmax(1).view(4, 1, 160, 128)
    gt = torch.rand(4, 1, 160, 128).clamp(min=0.7) - 0.7  # many exact zeros
    for eps in (M.EPS, 0.0):
        ref = M.batch_saliency_scores(pred, gt, kld_eps=eps)
        got = batch_scores_torch(pred, gt, kld_eps=eps)
        for key in ("cc", "kld", "sim"):
            np.testing.assert_allclose(got[key].numpy(), ref[key].to_numpy(), atol=1e-5, rtol=0, err_msg=key)


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN or inf"), (-1.0, "predicted_map has negative values")])
def test_bad_maps_raise_like_the_reference(bad, message):
    pred, gt, _ = _maps((2, 6, 6), seed=3)
    pred[1, 2, 2] = bad
    with pytest.raises(ValueError, match=message):
        batch_scores_torch(torch.from_numpy(pred), torch.from_numpy(gt))
    with pytest.raises(ValueError, match="differ in shape"):
        batch_scores_torch(torch.zeros(2, 6, 6), torch.zeros(2, 6, 5))


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv2d(1, 1, 3, padding=1)

    def parts(self):
        return {"head": self.head}


def _toy_step(model, batch):
    z = model.head(batch["image"])
    log = torch.log_softmax(z.flatten(1), 1).view_as(z)
    return {"loss": -(batch["gaze_map"] * log).flatten(1).sum(1).mean(), "saliency_log": log}


def test_trainer_evaluate_reports_the_numpy_reference_means(tmp_path):
    from cxrlib.config import make_config
    from cxrlib.data import collate
    from cxrlib.training.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(1, 16, 12, generator=g), "label": i % 3,
             "gaze_map": (torch.rand(1, 16, 12, generator=g) ** 3)} for i in range(7)]
    cfg = make_config("stage2", "smoke", run_dir=str(tmp_path), eval_batch_size=3, max_steps_per_epoch=10)
    trainer = Trainer(_Toy(), cfg, train_parts=("head",), loss_fn=_toy_step, collate_fn=collate, progress=False)
    got = trainer.evaluate(data)
    with torch.no_grad():
        preds = torch.cat([_toy_step(trainer.model, collate(data[i:i + 3]))["saliency_log"].exp() for i in (0, 3, 6)])
    ref = M.batch_saliency_scores(preds, torch.stack([d["gaze_map"] for d in data]))
    for key in ("cc", "kld", "sim"):
        assert got[f"val_{key}"] == pytest.approx(ref[key].mean(), abs=1e-6), key


def test_report_saliency_table_equals_the_per_image_reference():
    from cxrlib.evaluation.evaluate import saliency_table

    pred, gt, _ = _maps((4, 20, 16), seed=7)
    points = [np.array([[3.0, 4.0], [10.2, 15.0]]), np.zeros((0, 2)), np.array([[100.0, 1.0]]), np.array([[0.0, 0.0]])]
    got = saliency_table(pred, gt, points)
    fix = [M.fixation_map_from_points(p, (20, 16)) if len(p) else None for p in points]
    ref = M.batch_saliency_scores(pred, gt, [f if f is not None and f.any() else None for f in fix])
    assert list(got.columns) == list(ref.columns)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), atol=1e-5, rtol=0)
    assert got["nss"].isna().tolist() == [False, True, True, False]


def test_cached_features_are_indexed_by_batch_with_the_same_batches():
    """Stage 3's head loop: one index per cached tensor, the batches per-sample collation gave."""
    from torch.utils.data import DataLoader

    from cxrlib.data import collate
    from cxrlib.training.frozen_features import CachedFeatures, FeatureBatch

    feats = {"fused": torch.randn(11, 5), "label": torch.arange(11) % 3}
    data = CachedFeatures(None, feats)
    batches = list(DataLoader(data, batch_size=4, shuffle=True, collate_fn=collate,
                              generator=torch.Generator().manual_seed(1)))
    orders = DataLoader(range(11), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
    by_sample = [collate([data[int(i)] for i in idx]) for idx in orders]
    assert all(isinstance(b, FeatureBatch) for b in batches) and [len(b["label"]) for b in batches] == [4, 4, 3]
    for got, ref in zip(batches, by_sample, strict=True):
        assert torch.equal(got["fused"], ref["fused"]) and torch.equal(got["label"], ref["label"])
