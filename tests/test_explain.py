"""CAMs, scoreboard and faithfulness on tiny models (64 x 64 inputs, base_width 8, densenet121)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cxrlib.explain import cams as E  # noqa: E402
from cxrlib.explain import road  # noqa: E402
from cxrlib.metrics import centre_bias_map  # noqa: E402
from cxrlib.model import DenseNetClassifier, DualEncoderMTUNet, MTUNet  # noqa: E402

FAST_CAMS = ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam")
METRIC_COLUMNS = ["cc", "kld", "sim", "nss", "auc_judd"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two threads on two shared cores run these tiny models ~10x slower than one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def dual():
    torch.manual_seed(0)
    return DualEncoderMTUNet(base_width=8, densenet_arch="densenet121")


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(1)
    return DenseNetClassifier(densenet_arch="densenet121")


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))


def _samples(n=5, size=64):
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        sal = torch.rand(1, size, size, generator=g)
        n_fix = 0 if i == n - 1 else 6  # the last sample has no fixations
        out.append({"image": torch.rand(1, size, size, generator=g), "gaze_map": sal / sal.sum(),
                    "fixations": torch.rand(n_fix, 2, generator=g) * (size - 1),
                    "label": i % 3, "dicom_id": f"dcm{i}"})
    return out


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
               for m in model.modules())


def _check_maps(maps, shape):
    assert maps.shape == shape
    assert np.isfinite(maps).all() and (maps >= 0).all()
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-9)


@pytest.mark.parametrize("method", FAST_CAMS)
@pytest.mark.parametrize("model_name", ["dual", "densenet"])
def test_cam_maps_are_distributions(request, images, method, model_name):
    model = request.getfixturevalue(model_name)
    _check_maps(E.cam_maps(model, images, method=method), (2, 64, 64))


@pytest.mark.filterwarnings("ignore:gradcam. .* all zero")  # a random net may have no evidence
def test_explicit_targets_and_layers(densenet, images):
    maps = E.cam_maps(densenet, images, target_classes=[0, 2],
                      target_layers=[densenet.densenet.features.denseblock3])
    _check_maps(maps, (2, 64, 64))
    with pytest.raises(ValueError):
        E.cam_maps(densenet, images, target_classes=[0])
    with pytest.raises(ValueError):
        E.cam_maps(densenet, images, method="nope")


def test_scorecam_runs(images):
    # one forward pass per channel of the layer: the small MT-UNet's 128, not DenseNet's 1024
    torch.manual_seed(4)
    _check_maps(E.cam_maps(MTUNet(base_width=8), images[:1], method="scorecam"), (1, 64, 64))


def test_logits_only_wraps_dict_output(dual, images):
    dual.eval()
    with torch.no_grad():
        out = E.LogitsOnly(dual)(images)
        assert torch.is_tensor(out) and out.shape == (2, 3)
        torch.testing.assert_close(out, dual(images)["logits"])
    assert E.LogitsOnly(dual).cam_target_layers == dual.cam_target_layers


def test_no_hooks_left_and_state_restored(dual, images):
    dual.train()
    dual.res_se.eval()  # a mixed-mode model must come back mixed
    dual.classifier.requires_grad_(False)
    probe = dual.decoder.blocks[0][0][0].weight
    probe.grad = torch.ones_like(probe)
    modes = [m.training for m in dual.modules()]
    flags = [p.requires_grad for p in dual.parameters()]
    before = _hook_count(dual)
    for method in ("gradcam", "eigencam", "gradcam", "layercam", "hirescam"):
        E.cam_maps(dual, images, method=method)
        assert _hook_count(dual) == before
    road.faithfulness(dual, images, E.predicted_saliency(dual, images), percentiles=(50,))
    assert _hook_count(dual) == before == 0
    assert [m.training for m in dual.modules()] == modes
    assert [p.requires_grad for p in dual.parameters()] == flags
    assert torch.equal(probe.grad, torch.ones_like(probe))
    dual.requires_grad_(True)
    probe.grad = None


def test_frozen_model(densenet, images):
    densenet.requires_grad_(False)
    try:
        for method in ("gradcam", "eigencam"):
            _check_maps(E.cam_maps(densenet, images, method=method), (2, 64, 64))
        assert not any(p.requires_grad for p in densenet.parameters())
    finally:
        densenet.requires_grad_(True)


def test_empty_cam_becomes_uniform():
    raw = np.zeros((2, 4, 4))
    raw[0, 1, 1] = 2.0
    maps, n_empty = E._as_distributions(raw)
    assert n_empty == 1
    np.testing.assert_allclose(maps[1], 1 / 16)
    assert maps[0, 1, 1] == 1.0


def test_predicted_saliency(dual, images):
    _check_maps(E.predicted_saliency(dual, images), (2, 64, 64))


@pytest.fixture(scope="module")
def board(dual, densenet):
    torch.manual_seed(2)
    baseline = MTUNet(base_width=8)
    methods = E.standard_methods(dual, encoder_model=densenet, baseline_model=baseline,
                                 cam_methods=("gradcam", "eigencam"))
    assert list(methods) == ["predicted", "gradcam", "eigencam", "final_gradcam",
                             "final_eigencam", "centre_bias", "mtunet"]
    return E.scoreboard(_samples(5), methods, batch_size=2, progress=False)


def test_scoreboard_rows(board):
    assert len(board) == 5 * 7
    assert {"dicom_id", "label", "method", *METRIC_COLUMNS} <= set(board.columns)
    assert board.groupby("method").size().eq(5).all()
    assert np.isfinite(board["cc"]).all() and np.isfinite(board["kld"]).all()
    no_fix = board["dicom_id"] == "dcm4"
    assert board.loc[no_fix, ["nss", "auc_judd"]].isna().all().all()
    assert np.isfinite(board.loc[~no_fix, ["nss", "auc_judd"]]).all().all()
    assert not board["uniform"].any()


def test_centre_bias_method_matches_metrics():
    centre = E.standard_methods(MTUNet(base_width=8), cam_methods=())["centre_bias"]
    maps = centre(torch.zeros(3, 1, 64, 32))
    assert maps.shape == (3, 64, 32)
    np.testing.assert_allclose(maps[2], centre_bias_map((64, 32)))


def test_compare_methods(board):
    summary = E.compare_methods(board, n_boot=200)
    assert list(summary.columns) == ["method", "metric", "n", "mean", "low", "high", "mean_diff",
                                     "t", "p", "n_uniform"]
    assert len(summary) == 7 * 5
    assert (summary["low"] <= summary["mean"] + 1e-12).all()
    assert (summary["mean"] <= summary["high"] + 1e-12).all()
    ref = summary["method"] == "predicted"
    assert summary.loc[ref, ["t", "p"]].isna().all().all()
    assert np.isfinite(summary.loc[~ref & (summary["metric"] == "cc"), "p"]).all()
    assert (summary.loc[summary["metric"] == "nss", "n"] == 4).all()
    with pytest.raises(ValueError):
        E.compare_methods(board, reference="missing")


def test_figures(board, images):
    fig = E.scoreboard_figure(board)
    assert len(fig.axes) == 5
    plt.close(fig)
    img, gt = images[0], torch.full((1, 64, 64), 1 / 64**2)
    maps = {"predicted": np.full((64, 64), 1 / 64**2), "gradcam": np.random.rand(64, 64)}
    fig = E.draw_comparison(img, gt, maps, method="gradcam")
    assert len(fig.axes) == 4 and "CC" in fig.axes[3].get_title()
    plt.close(fig)


def test_faithfulness(densenet, images):
    cams = E.cam_maps(densenet, images)
    df = road.faithfulness(densenet, images, cams, percentiles=(10, 50, 90))
    assert len(df) == 2 * 3
    columns = {"image", "target", "removed_pct", "prob", "drop_most", "drop_least", "road"}
    assert columns <= set(df.columns)
    assert np.isfinite(df[["prob", "drop_most", "drop_least", "road"]].to_numpy()).all()
    again = road.faithfulness(densenet, images, cams, percentiles=(10, 50, 90))
    np.testing.assert_allclose(df["road"], again["road"])  # seeded imputation noise


def test_rank_map_removes_exact_share():
    cam = np.zeros((10, 10))
    cam[:2] = 1.0  # large tie at zero, as after a CAM's ReLU
    ranks = road._rank_map(cam, np.random.default_rng(0))
    assert len(np.unique(ranks)) == 100
    assert (ranks[:2] > ranks[2:].max()).all()  # order kept between distinct values
    threshold = np.percentile(ranks, 70)  # the package's percentile 70: keeps values below
    assert (ranks < threshold).sum() == 70


def test_eigencam_is_the_same_map_on_the_same_densenet(dual, densenet, images):
    """Why notebook 06 drops final_eigencam after a head-only stage 3: same DenseNet, same map."""
    final = DualEncoderMTUNet(base_width=8, densenet_arch="densenet121")
    final.densenet.load_state_dict(densenet.densenet.state_dict())
    assert E.same_densenet(final, densenet) and not E.same_densenet(dual, densenet)
    a = E.cam_maps(final.eval(), images, method="eigencam")
    b = E.cam_maps(densenet.eval(), images, method="eigencam")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_scoreboard_figure_clips_the_kld_axis_and_counts_outliers():
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [{"image": i, "method": m, "cc": rng.random(), "kld": rng.random() + (20.0 if (m, i) == ("cam", 0) else 1),
             "sim": rng.random(), "nss": rng.random(), "auc_judd": rng.random()}
            for m in ("predicted", "cam") for i in range(30)]
    fig = E.scoreboard_figure(pd.DataFrame(rows))
    kld_ax = fig.axes[1]
    assert kld_ax.get_xlim()[1] < 5 and "1 point(s) beyond" in kld_ax.get_title()
    plt.close(fig)
