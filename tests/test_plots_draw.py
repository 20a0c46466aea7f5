"""Every figure function of ``cxrlib.plots`` draws on tiny inputs without error (Agg backend)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cxrlib import CLASS_NAMES, plots  # noqa: E402
from cxrlib.config import make_config  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def sample(label):
    image = torch.rand(1, 32, 32)
    gaze = torch.rand(1, 32, 32)
    return {"image": image, "gaze_map": gaze / gaze.sum(), "label": label, "dicom_id": f"id{label}-0000",
            "fixations": torch.tensor([[4.0, 5.0], [20.0, 10.0], [16.0, 16.0]])}


def probs_labels():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2] * 4)
    probs = rng.dirichlet(np.ones(3), len(labels)) + np.eye(3)[labels]
    return probs / probs.sum(1, keepdims=True), labels


def test_every_plot_function_draws():
    image, heat = np.random.rand(32, 32), np.random.rand(32, 32)
    splits = pd.DataFrame({"label": [0, 1, 2, 0, 1, 2], "split": ["train", "train", "train", "val", "test", "test"]})
    history = pd.DataFrame({"train_loss": [1.0, 0.8], "val_loss": [1.1, 0.9], "val_auc_macro": [0.6, 0.7]})
    probs, labels = probs_labels()
    figures = [
        plots.class_balance(splits),
        plots.examples_with_gaze([sample(k) for k in range(3)], [0, 2]),
        plots.map_row(image, {"a": heat, "b": heat}, points=np.array([[3, 4]])),
        plots.training_curves(history),
        plots.roc_plot(probs, labels),
        plots.confusion(np.array([[2, 1, 0], [0, 3, 0], [1, 0, 2]])),
        plots.embedding_scatter(np.random.rand(12, 5), np.random.rand(12, 5), labels),
        plots.saliency_grid([image, image], [{"image": None, "map": heat}, {"image": None}], titles=["x", "y"]),
    ]
    for fig in figures:
        assert isinstance(fig, matplotlib.figure.Figure) and fig.axes
    fig, ax = plt.subplots()
    plots.overlay(ax, image, heat, points=np.array([[1, 2], [3, 4]]), scanpath=True, title="t")
    assert ax.get_title() == "t" and len(ax.images) == 2
    assert [t.get_text() for t in figures[5].axes[0].get_xticklabels()] == list(CLASS_NAMES)


def test_save_figure_writes_into_the_run_folder(tmp_path):
    fig, _ = plt.subplots()
    config = make_config("results", "smoke", run_dir=str(tmp_path))
    assert plots.save_figure(fig, "x.png", config) == tmp_path / "figures" / "x.png"
    assert (tmp_path / "figures" / "x.png").stat().st_size > 0
    assert plots.save_figure(None, "y.png", config) is None


@pytest.fixture(scope="module")
def egd(tmp_path_factory):
    from cxrlib.training import stages

    config = make_config("data", "smoke", run_dir=str(tmp_path_factory.mktemp("plots")), synthetic_images=18)
    return stages.prepare_data(config, progress=False).train


def test_plots_of_one_reading_draw(egd):
    rows = plots.gaze_rows(egd, 0, "fixations")
    assert len(rows) and {"x", "y"} <= set(rows.columns)
    for fig in (plots.gaze_vs_fixations(egd, 0), plots.scanpath_in_time(egd, 0, panels=3)):
        assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) >= 3
    fig, axes = plt.subplots(1, 2)
    assert plots.heat_colorbar(fig, axes) is not None
