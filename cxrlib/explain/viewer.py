"""Comparison figures: the paper's qualitative layout and an interactive viewer (notebook 06),
and a good predicted map next to a bad one (notebook 04).

The viewer's drawing function is an ordinary function, called once statically so that
papermill and nbmake execute it without a browser; the ipywidgets controls only re-call it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from cxrlib import CLASS_NAMES
from cxrlib.explain import cams
from cxrlib.config import DEFAULT_CAMS
from cxrlib import metrics as M


def _image_batch(sample, model) -> torch.Tensor:
    device = next(model.parameters()).device
    return sample["image"][None].to(device)


def comparison_maps(sample, final_model, *, encoder_model=None, baseline_model=None, method="gradcam",
                    target_class=None) -> dict:
    """Maps of one sample: ``predicted``, and ``method`` (a CAM on the stage-1b classifier, a
    ``final_<cam>`` on the final model, ``centre_bias`` or ``mtunet``), for ``target_class``
    (None: the predicted class)."""
    images = _image_batch(sample, final_model)
    maps = {"predicted": cams.predicted_saliency(final_model, images)[0]}
    shape = tuple(images.shape[-2:])
    if method == "centre_bias":
        maps[method] = M.centre_bias_map(shape)
    elif method == "mtunet":
        if baseline_model is None:
            raise ValueError("method 'mtunet' needs the MT-UNet checkpoint (notebook 07 trains it)")
        maps[method] = cams.predicted_saliency(baseline_model, images)[0]
    else:
        final = method.startswith("final_")
        cam = method[len("final_"):] if final else method
        if cam not in cams.CAM_METHODS:
            raise ValueError(f"unknown method {method!r}; CAMs: {list(cams.CAM_METHODS)}")
        model = final_model if final else encoder_model
        if model is None:
            raise ValueError(f"method {method!r} needs the stage-1b classifier (encoder_model)")
        maps[method] = cams.cam_maps(model, images, method=cam, target_classes=target_class)[0]
    return maps


def show_comparison(data, index: int, final_model, *, method="gradcam", target_class=None, alpha=0.45,
                    encoder_model=None, baseline_model=None):
    """Image | gaze | predicted | chosen map for one image, with the metrics in the titles."""
    sample = data[index]
    maps = comparison_maps(sample, final_model, encoder_model=encoder_model, baseline_model=baseline_model,
                           method=method, target_class=target_class)
    fig = cams.draw_comparison(sample["image"], sample["gaze_map"], maps, method=method, alpha=alpha)
    target = "predicted class" if target_class is None else CLASS_NAMES[target_class]
    fig.suptitle(f"#{index} {CLASS_NAMES[sample['label']]} ({sample['dicom_id'][:8]}); CAM target: {target}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def interactive_comparison(data, final_model, *, encoder_model=None, baseline_model=None,
                           cam_methods=DEFAULT_CAMS):
    """ipywidgets controls (class, image, method, target class, opacity) over :func:`show_comparison`."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    labels = np.asarray([data[i]["label"] for i in range(len(data))])
    methods = ([m for m in cam_methods] if encoder_model is not None else []) + [f"final_{m}" for m in cam_methods]
    methods += ["centre_bias"] + (["mtunet"] if baseline_model is not None else [])
    klass = widgets.Dropdown(options=[("any", -1)] + [(n, k) for k, n in enumerate(CLASS_NAMES)], description="class")
    index = widgets.Dropdown(options=list(range(len(data))), description="image")
    method = widgets.Dropdown(options=methods, value=methods[0], description="method")
    target = widgets.Dropdown(options=[("predicted", None)] + [(n, k) for k, n in enumerate(CLASS_NAMES)],
                              description="CAM target")
    alpha = widgets.FloatSlider(value=0.45, min=0.0, max=1.0, step=0.05, description="opacity")
    out = widgets.Output()

    def restrict(change=None):
        chosen = klass.value
        index.options = [int(i) for i in range(len(data)) if chosen == -1 or labels[i] == chosen]

    def redraw(change=None):
        if index.value is None:
            return
        with out:
            out.clear_output(wait=True)
            fig = show_comparison(data, index.value, final_model, method=method.value, target_class=target.value,
                                  alpha=alpha.value, encoder_model=encoder_model, baseline_model=baseline_model)
            display(fig)
            plt.close(fig)

    klass.observe(restrict, names="value")
    for w in (index, method, target, alpha):
        w.observe(redraw, names="value")
    if not os.environ.get("CXRLIB_HEADLESS"):
        # Headless (cxrlib run, nbmake) nobody can use the controls, and drawing into an Output
        # widget there once left the executing client waiting forever: the controls come
        # without a first drawing; show_comparison draws the same view statically.
        restrict()
        redraw()
    return widgets.VBox([widgets.HBox([klass, index, method]), widgets.HBox([target, alpha]), out])


def qualitative_figure(data, indices, final_model, *, encoder_model=None, baseline_model=None, cam="gradcam"):
    """The paper's qualitative layout: Original | gaze | predicted | MT-UNet | Grad-CAM, CC in titles."""
    from cxrlib.plots import saliency_grid

    images, rows, titles = [], [], []
    for i in indices:
        sample = data[i]
        gaze_map = sample["gaze_map"][0].numpy()
        row = {"original": None, "gaze (ground truth)": gaze_map}
        maps = comparison_maps(sample, final_model, method="centre_bias")
        row[f"predicted  CC {M.cc(maps['predicted'], gaze_map):.2f}"] = maps["predicted"]
        if baseline_model is not None:
            m = comparison_maps(sample, final_model, baseline_model=baseline_model, method="mtunet")["mtunet"]
            row[f"MT-UNet  CC {M.cc(m, gaze_map):.2f}"] = m
        if encoder_model is not None:
            m = comparison_maps(sample, final_model, encoder_model=encoder_model, method=cam)[cam]
            row[f"{cam} (stage 1b)  CC {M.cc(m, gaze_map):.2f}"] = m
        images.append(sample["image"][0].numpy())
        rows.append(row)
        titles.append(CLASS_NAMES[sample["label"]])
    return saliency_grid(images, rows, titles=titles)


def mtunet_baseline(config):
    """The MT-UNet baseline that ``cxrlib ablate`` (notebook 07) trains at this run's model seed,
    or None if it has not been trained; the run folder comes from the config, never a literal."""
    from cxrlib.evaluation import ablation
    from cxrlib.training import stages

    folder = ablation.variant_dir(config.run_dir, "mtunet", config.seed) / "joint"
    return stages.trained_model(config, folder.relative_to(config.run_dir).as_posix(), model_name="mtunet",
                                required=False)


def class_examples(data, per_class: int) -> list[int]:
    """The first ``per_class`` indices of each class in ``data``, class by class."""
    labels = [data[i]["label"] for i in range(len(data))]
    return [i for k in range(len(CLASS_NAMES)) for i in [j for j, y in enumerate(labels) if y == k][:per_class]]


def best_and_worst(data, predictions: dict, *, metric: str = "cc"):
    """The predicted maps of ``data`` (``predictions``: ``stages.predict`` on it) that score best
    and worst against the gaze (``metric``: ``cc`` or ``sim``, higher is better), side by side with
    the gaze. Returns the figure and the per-image scores, so a notebook can print what it shows."""
    from cxrlib.plots import saliency_grid

    score = {"cc": M.cc, "sim": M.sim}[metric]
    scores = np.array([score(predicted_map, gaze_map)
                       for predicted_map, gaze_map in zip(predictions["predicted_map"], predictions["gaze_map"])])
    best, worst = int(np.argmax(scores)), int(np.argmin(scores))
    rows, images, titles = [], [], []
    for name, i in (("best", best), ("worst", worst)):
        images.append(data[i]["image"][0].numpy())
        rows.append({"gaze (ground truth)": predictions["gaze_map"][i],
                     f"predicted  {metric.upper()} {scores[i]:.2f}": predictions["predicted_map"][i]})
        titles.append(f"{name}: {CLASS_NAMES[int(predictions['labels'][i])]}")
    return saliency_grid(images, rows, titles=titles), scores
