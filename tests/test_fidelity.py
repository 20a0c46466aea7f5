"""The switches that select the paper code's behaviour (docs/reproduction-notes.md): each code
path against an independent computation written here from the definition."""

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pydicom.data
import pytest
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from torch import nn

from cxrlib import metrics
from cxrlib.evaluation import evaluate
from cxrlib.training import stages, steps
from cxrlib.synthetic import anatomy
from cxrlib.config import make_config
from cxrlib.data.dicom import load_image, read_dicom
from cxrlib.model import set_modes
from cxrlib.training.trainer import Trainer


# -- input intensity: the code's raw pixel_array, zero pad, stride, divide by max ---------------
def _code_pipeline(path, target):
    """Data/hzhu_data_raw.py written out: raw values, centred zero padding to k*(H, W), every
    k-th pixel, divided by the maximum of the subsampled image."""
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    h, w = raw.shape
    k = max(1, math.ceil(max(h / target[0], w / target[1])))
    canvas_h, canvas_w = k * target[0], k * target[1]
    top, left = int((canvas_h - h) / 2), int((canvas_w - w) / 2)
    canvas = np.zeros((canvas_h, canvas_w), np.float32)
    canvas[top:top + h, left:left + w] = raw
    sub = canvas[0:canvas_h + 1:k, 0:canvas_w + 1:k]
    return sub / sub.max()


def _write_dicom(path, pixels, *, photometric="MONOCHROME1", slope=2.0, intercept=-100.0):
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "DX", photometric, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def odd_dicom(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(30, 4000, size=(211, 173)).astype(np.uint16)  # odd sizes: uneven padding
    return _write_dicom(tmp_path / "odd.dcm", pixels)


@pytest.mark.parametrize("target", [(64, 64), (96, 64), (32, 32)])
def test_stride_max_raw_is_the_code_pipeline_on_a_synthetic_dicom(odd_dicom, target):
    image, geometry = load_image(odd_dicom, target, resize="stride", intensity="max", modality_lut=False)
    assert geometry.native == (211, 173)
    np.testing.assert_allclose(image, _code_pipeline(odd_dicom, target), rtol=1e-6, atol=1e-7)


def test_stride_max_raw_is_the_code_pipeline_on_a_real_cr():
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm")  # MONOCHROME1, 1955 x 1841
    image, _ = load_image(path, (640, 512), resize="stride", intensity="max", modality_lut=False)
    np.testing.assert_allclose(image, _code_pipeline(path, (640, 512)), rtol=1e-6, atol=1e-7)
    # The project's default reading differs: rescaled, MONOCHROME1 inverted, min-max scaled.
    default, _ = load_image(path, (640, 512), resize="stride")
    assert np.corrcoef(default[image > 0].ravel(), image[image > 0].ravel())[0, 1] < -0.9


def test_intensity_modes_on_the_stored_values(odd_dicom):
    raw = pydicom.dcmread(odd_dicom).pixel_array.astype(np.float64)
    rescaled = 2.0 * raw - 100.0
    np.testing.assert_allclose(read_dicom(odd_dicom, modality_lut=False, intensity="max"), raw / raw.max(), rtol=1e-6)
    expected = 1 - (rescaled - rescaled.min()) / (rescaled.max() - rescaled.min())  # MONOCHROME1: inverted
    np.testing.assert_allclose(read_dicom(odd_dicom), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="intensity"):
        read_dicom(odd_dicom, intensity="zscore")


def test_dataset_passes_intensity_and_lut_and_keys_the_cache_on_them(tmp_path):
    from cxrlib.data import EGDDataset
    from cxrlib.synthetic.egd import make_egd_like

    root = make_egd_like(tmp_path / "egd", n_images=6, seed=1, progress=False)
    kwargs = dict(image_size=(64, 64), sigma_frac=0.025, resize="stride", cache_dir=tmp_path / "cache")
    code = EGDDataset(root, intensity="max", modality_lut=False, **kwargs)
    default = EGDDataset(root, **kwargs)
    path = code.image_paths[0]
    np.testing.assert_allclose(code[0]["image"][0].numpy(), _code_pipeline(path, (64, 64)), atol=1 / 65535)
    assert not torch.allclose(code[0]["image"], default[0]["image"])  # a separate cache entry


# -- triplet loss in the stage-1a step ----------------------------------------------------------
class _StubDenseNet(nn.Module):
    def __init__(self, maps):
        super().__init__()
        self.maps = nn.Parameter(maps)

    def forward_features(self, image):
        return {"bottleneck": self.maps}

    def forward(self, image):
        return {"embedding": self.maps.mean(dim=(2, 3))}


@pytest.mark.parametrize("feature,reduction", [("map", "sum"), ("pooled", "mean"), ("map", "mean")])
def test_contrastive_step_feeds_the_chosen_feature_and_reduction(feature, reduction):
    g = torch.Generator().manual_seed(0)
    maps, labels = torch.randn(6, 5, 3, 2, generator=g), torch.tensor([0, 0, 1, 1, 2, 2])
    config = make_config("stage1a", "smoke", triplet_feature=feature, triplet_reduction=reduction)
    got = steps.contrastive_step(config)(_StubDenseNet(maps), {"image": None, "label": labels})["loss"]
    x = maps if feature == "map" else maps.mean(dim=(2, 3))
    module = torch.nn.TripletMarginLoss(margin=1.0, p=2)
    values = [module(x[a:a + 1], x[p:p + 1], x[n:n + 1]) for a in range(6) for p in range(6) for n in range(6)
              if a != p and labels[a] == labels[p] and labels[n] != labels[a]]
    expected = sum(values) if reduction == "sum" else sum(values) / len(values)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_defaults_are_the_code_where_the_notes_say_so():
    c1a, c1b = make_config("stage1a", "paper"), make_config("stage1b", "paper")
    assert (c1a.triplet_feature, c1a.triplet_reduction) == ("map", "sum")  # the code's
    assert not c1b.linear_probe and c1b.eval_split == "test" and c1b.frozen_bn == "eval"
    assert make_config("stage2", "demo").synthetic_difficulty == anatomy.DEFAULT_DIFFICULTY
    for field, bad in (("triplet_feature", "gap"), ("intensity", "zscore"), ("eval_split", "train")):
        stage = "stage1a" if field.startswith("triplet") else "stage2"
        with pytest.raises(ValueError, match=field):
            make_config(stage, "smoke", **{field: bad})
    with pytest.raises(ValueError, match="synthetic_difficulty"):
        make_config("stage2", "smoke", synthetic_difficulty=1.5)


# -- frozen DenseNet, linear probe: what the stage registry hands the Trainer --------------------
@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_frozen_bn_train_turns_feature_reuse_off(stage):
    assert stages.feature_reuse(make_config(stage, "smoke")) is stages.STAGES[stage].reuse is not None
    assert stages.feature_reuse(make_config(stage, "smoke", frozen_bn="train")) is None


@pytest.mark.parametrize("probe,parts", [(False, ("densenet", "linear_head")), (True, ("linear_head",))])
def test_linear_probe_trains_only_the_linear_head(probe, parts):
    config = make_config("stage1b", "smoke", linear_probe=probe)
    assert stages.STAGES["stage1b"].trained_parts(config) == parts


def test_frozen_bn_train_uses_batch_statistics_in_the_frozen_forward():
    """As the code's net.train(): a frozen BatchNorm normalises with the batch, so one image's
    output depends on the others in its batch, and the running statistics drift."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"frozen": nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)),
                           "head": nn.Linear(4, 2)})
    model.parts = lambda: dict(model.items())
    for p in model["frozen"].parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 1, 8, 8)
    for frozen_bn, batch_dependent in (("eval", False), ("train", True)):
        set_modes(model, ("head",), frozen_bn)
        before = model["frozen"][1].running_mean.clone()
        alone, in_batch = model["frozen"](x[:1]), model["frozen"](x)[:1]
        mean, var = model["frozen"][0](x).mean(dim=(0, 2, 3)), model["frozen"][0](x).var(dim=(0, 2, 3), unbiased=False)
        assert (not torch.allclose(alone, in_batch, atol=1e-5)) is batch_dependent
        assert (not torch.equal(before, model["frozen"][1].running_mean)) is batch_dependent
        if batch_dependent:  # exactly the batch normalisation of the definition
            z = (model["frozen"][0](x) - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5)
            bn = model["frozen"][1]
            assert torch.allclose(model["frozen"](x), z * bn.weight[None, :, None, None] + bn.bias[None, :, None, None],
                                  atol=1e-5)


# -- shuffle and drop_last ----------------------------------------------------------------------
@pytest.mark.parametrize("shuffle,drop_last", [(True, True), (False, False)])
def test_training_loader_order_and_last_batch(shuffle, drop_last):
    config = make_config("stage2", "smoke", shuffle=shuffle, drop_last=drop_last, batch_size=4)
    fake = SimpleNamespace(config=config, collate_fn=None, device=torch.device("cpu"), _loaders={})
    loader = Trainer._loader(fake, list(range(10)), shuffle=True)
    batches = [b.tolist() for b in loader]
    order = sum(batches, [])
    assert (order == sorted(order)) is (not shuffle)
    assert len(batches) == (2 if drop_last else 3)


# -- evaluation protocol -------------------------------------------------------------------------
def test_kld_eps_zero_is_the_codes_kl_div():
    rng = np.random.default_rng(0)
    pred, gt = rng.random((6, 5)), rng.random((6, 5))
    gt[0, :3] = 0  # 0 log 0 = 0
    p, g = pred / pred.sum(), gt / gt.sum()
    code = F.kl_div(torch.log(torch.tensor(p))[None], torch.tensor(g)[None], reduction="batchmean").item()
    assert metrics.kld(pred, gt, eps=0) == pytest.approx(code, rel=1e-10)
    # Where the prediction is 0 on a looked-at pixel the exact KL is infinite; the benchmark's
    # eps keeps it finite (that is the difference the switch selects).
    pred[1, 1] = 0.0
    assert metrics.kld(pred, gt, eps=0) == math.inf and math.isfinite(metrics.kld(pred, gt))


def test_eval_split_val_is_the_codes_protocol_and_labelled_optimistic():
    data = SimpleNamespace(test="T", val="V")
    assert evaluate.eval_dataset(data, make_config("stage3", "smoke"))[0] == "T"
    with pytest.warns(UserWarning, match="optimistic"):
        chosen, label = evaluate.eval_dataset(data, make_config("stage3", "smoke", eval_split="val"))
    assert chosen == "V" and "OPTIMISTIC" in label


def test_evaluation_records_its_split_and_the_comparison_reads_it():
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    probs = rng.dirichlet(np.ones(3), 12)
    gaze_maps = rng.random((12, 8, 8)) + 0.1
    predictions = {"probs": probs, "labels": labels, "predicted_map": gaze_maps[::-1].copy(), "gaze_map": gaze_maps,
                   "fixations": [np.array([[3.0, 4.0]])] * 12}
    result = evaluate.evaluate_predictions(predictions, n_boot=20, eval_split="val", kld_eps=0.0)
    assert result["eval_split"] == "val" and "OPTIMISTIC" in result["split"]
    table = evaluate.paper_comparison(result, data_label="synthetic").set_index("metric")
    assert "validation split" in table.loc["auc_micro", "this run's data"]
    exact = np.mean([metrics.kld(p, g, eps=0) for p, g in zip(predictions["predicted_map"], gaze_maps)])
    assert result["saliency"]["kld"] == pytest.approx(exact)


def test_paper_auc_sits_beside_micro_auc_with_its_split():
    result = {"classification": {"auc_micro": 0.9, "auc_micro_ci": [0.8, 0.95], "auc_macro": 0.85},
              "saliency": {"cc": 0.5}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = evaluate.paper_comparison(result, data_label="synthetic").set_index("metric")
    assert table.loc["auc_micro", "paper"] == 0.93 and table.loc["auc_micro", "this run"] == 0.9
    assert pd.isna(table.loc["auc_macro", "paper"]) and table.loc["auc_macro", "this run"] == 0.85
    assert "validation split" in table.loc["auc_micro", "paper's data"]
    assert "split by image" in table.loc["auc_micro", "paper's data"]
    assert "test split" in table.loc["auc_micro", "this run's data"]


# -- synthetic difficulty -------------------------------------------------------------------------
def test_difficulty_weakens_signatures_and_keeps_the_bodies():
    easy = [anatomy.draw_patient(np.random.default_rng([3, i]), i % 3, 0.0) for i in range(60)]
    hard = [anatomy.draw_patient(np.random.default_rng([3, i]), i % 3, 1.0) for i in range(60)]
    for e, h in zip(easy, hard):
        assert (e["T"], e["apex"], e["hilum"]) == (h["T"], h["apex"], h["hilum"])  # same body
    chf = [i for i in range(60) if i % 3 == 1]
    assert all(hard[i]["haze"][0] < easy[i]["haze"][0] for i in chf)
    assert max(easy[i]["ctr"] for i in range(60) if i % 3 != 1) < min(easy[i]["ctr"] for i in chf)  # no overlap
    lo, hi = anatomy.ctr_range(1, 1.0), anatomy.ctr_range(0, 1.0)
    assert lo[0] < hi[1]  # borderline normals and mild cardiomegaly overlap when hard
    pneumonia = [i for i in range(60) if i % 3 == 2]
    amps = {name: np.mean([s[i]["lesion"]["amp"] for i in pneumonia]) for name, s in (("easy", easy), ("hard", hard))}
    assert amps["hard"] < amps["easy"]
    with pytest.raises(ValueError, match="difficulty"):
        anatomy.draw_patient(np.random.default_rng(0), 0, 2.0)


def test_make_egd_like_passes_the_difficulty_through(tmp_path):
    from cxrlib.data import read_master_sheet
    from cxrlib.synthetic.egd import make_egd_like

    easy = make_egd_like(tmp_path / "easy", n_images=6, seed=2, progress=False, difficulty=0.0)
    hard = make_egd_like(tmp_path / "hard", n_images=6, seed=2, progress=False, difficulty=1.0)
    sheets = [read_master_sheet(root / "master_sheet.csv") for root in (easy, hard)]
    keys = ["dicom_id", "patient_id", "path", "label"]
    pd.testing.assert_frame_equal(sheets[0][keys], sheets[1][keys])  # the same ids, patients and labels
    is_chf = sheets[0]["label"] == 1
    assert (sheets[1]["synthetic_ctr"][is_chf] < sheets[0]["synthetic_ctr"][is_chf]).all()  # milder cardiomegaly
    chf = sheets[0][sheets[0]["label"] == 1]["path"].iloc[0]
    pixels = [pydicom.dcmread(root / chf).pixel_array for root in (easy, hard)]
    assert pixels[0].shape == pixels[1].shape and not np.array_equal(*pixels)
    with pytest.raises(ValueError, match="difficulty"):
        make_egd_like(tmp_path / "bad", n_images=6, progress=False, difficulty=1.5)
