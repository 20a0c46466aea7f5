"""Class activation maps through pytorch-grad-cam, scored as saliency maps (docs/method.md section 7).

The paper shows Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep
Networks via Gradient-based Localization", ICCV) of the stage-1b DenseNet classifier next to the
gaze map and the predicted saliency, qualitatively only. Here every CAM is turned into a
distribution over pixels (non-negative, sums to 1, input resolution), the same form as the
predicted saliency, so that one scoreboard scores them all with the saliency metrics of
docs/method.md section 6. Methods: Grad-CAM; Grad-CAM++ (Chattopadhay et al. 2018, WACV); HiResCAM
(Draelos & Carin 2020, arXiv:2011.08891); LayerCAM (Jiang et al. 2021, IEEE TIP 30); EigenCAM
(Muhammad & Yeasin 2020, IJCNN); Score-CAM (Wang et al. 2020, CVPR workshops; slow: one forward
pass per channel). The layer is the model's own ``cam_target_layers`` (the last dense block).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import partial
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from cxrlib import metrics as M
from cxrlib.config import DEFAULT_CAMS
from cxrlib.evaluation.evaluate import SALIENCY_KEYS, saliency_table
from cxrlib.model import predicted_maps

__all__ = ["CAM_METHODS", "LogitsOnly", "cam_maps", "predicted_saliency",
           "standard_methods", "scoreboard", "compare_methods", "scoreboard_figure",
           "draw_comparison", "same_densenet", "inference_state", "class_targets"]

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM,
               "layercam": LayerCAM, "eigencam": EigenCAM, "scorecam": ScoreCAM}


class LogitsOnly(nn.Module):
    """``forward(x) -> model(x)["logits"]``: the single output tensor pytorch-grad-cam expects.

    The grey (B, 1, H, W) input goes in as is; the wrapped model does its own channel handling.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["logits"]  # (B, num_classes)

    @property
    def cam_target_layers(self) -> list[nn.Module]:
        return self.model.cam_target_layers


@contextmanager
def inference_state(model: nn.Module):
    """Eval mode and frozen parameters inside; on exit every module's train/eval flag and every
    parameter's ``requires_grad`` and ``.grad`` are put back as they were.

    Freezing keeps the CAM backward pass from touching parameter gradients (pytorch-grad-cam
    calls ``model.zero_grad()``, which would drop the caller's ``.grad``); the activations still
    get gradients because the input requires grad.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p, _, _ in params:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


def _numpy(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)


def _as_distributions(maps: np.ndarray) -> tuple[np.ndarray, int]:
    """(B, H, W) non-negative maps -> each summing to 1; all-zero (or non-finite) maps become
    uniform. Returns the maps and how many were replaced."""
    maps = np.nan_to_num(np.maximum(np.asarray(maps, dtype=np.float64), 0.0), posinf=0.0)
    totals = maps.sum(axis=(1, 2))
    empty = ~(totals > 0)
    maps[empty] = 1.0
    totals[empty] = maps[0].size
    return maps / totals[:, None, None], int(empty.sum())


def class_targets(target_classes, batch: int):
    if target_classes is None:
        return None
    scalar = np.ndim(target_classes) == 0
    classes = [int(target_classes)] * batch if scalar else [int(c) for c in target_classes]
    if len(classes) != batch:
        raise ValueError(f"{len(classes)} target classes for {batch} images")
    return classes


def cam_maps(model: nn.Module, images: torch.Tensor, *, method: str = "gradcam",
             target_classes=None, target_layers: Sequence[nn.Module] | None = None) -> np.ndarray:
    """CAMs of ``images`` (B, 1, H, W) as (B, H, W) float64 maps, each non-negative, summing to 1.

    ``method``: a key of ``CAM_METHODS``. Target: the predicted class (``ClassifierOutputTarget``
    on the logits, as in docs/method.md section 7) unless ``target_classes`` (one int or one per image)
    is given. ``target_layers`` defaults to ``model.cam_target_layers``. The package ReLUs each
    CAM, upsamples it bilinearly to the input size and min-max scales it to [0, 1]; here it is
    then divided by its sum. A CAM that is zero everywhere (no positive evidence for the class)
    has no distribution: it becomes the uniform map, with a warning giving the count.

    Hooks are released by the package's context manager; the model ends in the train/eval mode
    and requires_grad state it started in, and frozen models work (the input requires grad).
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(CAM_METHODS)}")
    layers = list(target_layers if target_layers is not None else model.cam_target_layers)
    x = images.detach().to(next(model.parameters()).device, torch.float32).requires_grad_(True)
    classes = class_targets(target_classes, len(x))
    targets = None if classes is None else [ClassifierOutputTarget(c) for c in classes]
    with inference_state(model), torch.enable_grad():
        with CAM_METHODS[method](model=LogitsOnly(model), target_layers=layers) as cam:
            raw = cam(input_tensor=x, targets=targets)  # (B, H, W) in [0, 1]
    maps, n_empty = _as_distributions(raw)
    if n_empty:
        warnings.warn(f"{method}: {n_empty} of {len(maps)} CAMs were all zero; replaced by "
                      "uniform maps", RuntimeWarning, stacklevel=2)
    return maps


@torch.no_grad()
def predicted_saliency(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """The model's predicted maps of ``images`` (:func:`cxrlib.model.predicted_maps`) as (B, H, W)
    float64, each summing to 1: float64, the CAMs' precision, for the scoreboard."""
    with inference_state(model):
        outputs = model(images.to(next(model.parameters()).device, torch.float32))
    return predicted_maps(outputs, dtype=torch.float64).cpu().numpy()


def standard_methods(final_model: nn.Module, *, encoder_model: nn.Module | None = None,
                     baseline_model: nn.Module | None = None,
                     cam_methods: Sequence[str] = DEFAULT_CAMS,
                     shape: tuple[int, int] | None = None) -> dict[str, Callable]:
    """The maps the scoreboard compares, by name (functions images -> (B, H, W) maps):

    ``predicted`` (the final model's saliency); ``gradcam``, ``gradcam++``, ... on the stage-1b
    DenseNet classifier ``encoder_model`` (the paper's Grad-CAM; skipped when None);
    ``final_gradcam``, ... on the final model's classification output; ``centre_bias``
    (``metrics.centre_bias_map`` of ``shape``, default the images' size); ``mtunet``, the
    baseline's saliency, when ``baseline_model`` is given.
    """
    def centre(images):
        h, w = shape or tuple(images.shape[-2:])
        return np.broadcast_to(M.centre_bias_map((h, w)), (len(images), h, w))

    out = {"predicted": partial(predicted_saliency, final_model)}
    if encoder_model is not None:
        out.update({m: partial(cam_maps, encoder_model, method=m) for m in cam_methods})
    out.update({f"final_{m}": partial(cam_maps, final_model, method=m) for m in cam_methods})
    out["centre_bias"] = centre
    if baseline_model is not None:
        out["mtunet"] = partial(predicted_saliency, baseline_model)
    return out


def scoreboard(data, methods: dict[str, Callable], *, batch_size: int = 8,
               progress: bool = True) -> pd.DataFrame:
    """Score every method's map of every image against the ground truth (docs/method.md section 6).

    ``data``: a sequence of samples (``image``, ``gaze_map``, ``fixations``, ``label``,
    ``dicom_id``), e.g. an ``EGDDataset``. ``methods``: name -> function of a (B, 1, H, W)
    batch returning (B, H, W) maps that sum to 1 (see ``standard_methods``). CC, KLD and SIM are
    against the gaze map; NSS and AUC-Judd against the fixations (NaN when there are none).
    One row per image and method: ``image`` (position in ``data``), ``dicom_id``, ``label``,
    ``method``, the five metrics, and ``uniform`` (the map is constant, e.g. an all-zero CAM).
    """
    from cxrlib.progress import progress_counter

    rows = []
    with progress_counter(total=len(data), desc="scoreboard", enabled=progress) as bar:
        for start in range(0, len(data), batch_size):
            samples = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            images = torch.stack([s["image"] for s in samples]).float()  # (B, 1, H, W)
            shape = tuple(images.shape[-2:])
            maps = {}
            for name, fn in methods.items():
                maps[name] = np.asarray(fn(images))
                if maps[name].shape != (len(samples), *shape):
                    raise ValueError(f"method {name!r} returned {maps[name].shape}, "
                                     f"expected {(len(samples), *shape)}")
            gaze_maps = np.stack([_numpy(s["gaze_map"]).reshape(shape) for s in samples])
            for name, m in maps.items():
                # the same per-image scoring as the test-split evaluation (cxrlib.evaluation.evaluate)
                table = saliency_table(m, gaze_maps, [s["fixations"] for s in samples])
                for k, s in enumerate(samples):
                    rows.append({"image": start + k, "dicom_id": s["dicom_id"], "label": int(s["label"]),
                                 "method": name, **{key: table[key].iloc[k] if key in table else np.nan
                                                    for key in SALIENCY_KEYS},
                                 "uniform": bool(np.ptp(m[k]) == 0)})
            bar.update(len(samples))
    return pd.DataFrame(rows)


def compare_methods(df: pd.DataFrame, *, reference: str | None = "predicted",
                         n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per method and metric: ``n`` images, ``mean`` with its 95% percentile-bootstrap CI
    (``low``, ``high``; ``metrics.bootstrap_ci``), and a paired t-test against ``reference`` on
    the same images (``mean_diff`` = method - reference, ``t``, ``p``; NaN for the reference
    itself, or when fewer than two pairs), plus ``n_uniform`` (constant maps, e.g. empty CAMs).
    """
    methods = list(dict.fromkeys(df["method"]))
    if reference is not None and reference not in methods:
        raise ValueError(f"reference {reference!r} not among methods {methods}")
    n_uniform = df.groupby("method")["uniform"].sum()
    rows = []
    for metric in SALIENCY_KEYS:
        table = df.pivot(index="image", columns="method", values=metric)
        for method in methods:
            x = table[method].dropna()
            row = {"method": method, "metric": metric, "n": len(x), "mean": x.mean(),
                   "low": np.nan, "high": np.nan, "mean_diff": np.nan, "t": np.nan, "p": np.nan,
                   "n_uniform": int(n_uniform[method])}
            if len(x) >= 2:
                _, row["low"], row["high"] = M.bootstrap_ci(np.mean, x.to_numpy(), n_boot=n_boot,
                                                            seed=seed)
            if reference is not None and method != reference:
                pair = table[[method, reference]].dropna()
                if len(pair) >= 2:
                    with warnings.catch_warnings():  # identical samples: t is NaN, not an error
                        warnings.simplefilter("ignore", RuntimeWarning)
                        test = M.paired_ttest(pair[method], pair[reference])
                    row.update(mean_diff=test["mean_diff"], t=test["t"], p=test["p"])
            rows.append(row)
    return pd.DataFrame(rows)


def scoreboard_figure(df: pd.DataFrame):
    """Per-image scores: one panel per metric, a box plot per method with the images on top."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    metrics = [m for m in SALIENCY_KEYS if df[m].notna().any()]
    order = list(dict.fromkeys(df["method"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 0.35 * len(order) + 1.2),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
            warnings.filterwarnings("ignore", "vert: bool", DeprecationWarning)
            sns.boxplot(data=df, x=metric, y="method", order=order, color="0.85", fliersize=0,
                        ax=ax)
        sns.stripplot(data=df, x=metric, y="method", order=order, size=2.5, alpha=0.6, ax=ax)
        ax.set_title(metric + (" (lower is better)" if metric == "kld" else ""), fontsize=9)
        if metric == "kld":  # a few near-empty CAMs reach KLD 20; clip the axis, count them
            values = df[metric].dropna()
            top = float(values.quantile(0.95)) * 1.1
            if values.max() > top:
                ax.set_xlim(left=min(0.0, float(values.min())), right=top)
                ax.set_title(f"kld (lower is better)\n{int((values > top).sum())} point(s) beyond {top:.1f} not shown",
                             fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("")
    fig.tight_layout()
    return fig


def draw_comparison(sample_image, gaze_map, maps: dict[str, np.ndarray], *, method: str,
                    alpha: float = 0.45, scores: dict | None = None):
    """Image | gaze map | predicted saliency | ``maps[method]``, side by side, for one image.

    ``maps``: name -> (H, W) map (``predicted`` and ``method`` must be there). Titles give CC,
    KLD and SIM against ``gaze_map``; pass ``scores`` (name -> dict of metrics, e.g. scoreboard rows)
    to reuse computed ones. Used by the notebook's interactive viewer.
    """
    import matplotlib.pyplot as plt

    from cxrlib.plots import overlay

    image = _numpy(sample_image).squeeze()
    gaze_map = _numpy(gaze_map).reshape(image.shape)
    shown = list(dict.fromkeys(["predicted", method]))
    fig, axes = plt.subplots(1, 2 + len(shown), figsize=(2.6 * (2 + len(shown)), 3.0))
    overlay(axes[0], image, title="image")
    overlay(axes[1], image, gaze_map, alpha=alpha, title="gaze (ground truth)")
    for ax, name in zip(axes[2:], shown):
        heat = _numpy(maps[name]).reshape(image.shape)
        s = (scores or {}).get(name) or {"cc": M.cc(heat, gaze_map), "kld": M.kld(heat, gaze_map),
                                         "sim": M.sim(heat, gaze_map)}
        overlay(ax, image, heat, alpha=alpha,
                title=f"{name}\nCC {s['cc']:.2f}  KLD {s['kld']:.2f}  SIM {s['sim']:.2f}")
    fig.tight_layout()
    return fig


def same_densenet(model_a: nn.Module, model_b: nn.Module) -> bool:
    """Whether two models hold identical DenseNet201 weights and buffers.

    A gradient-free CAM (EigenCAM: the first principal component of the target layer's
    activations) ignores the class and the head, so on identical DenseNets it gives identical
    maps: after a head-only stage 3 the final model's DenseNet is the frozen stage-1b one.
    """
    a, b = model_a.densenet.state_dict(), model_b.densenet.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
