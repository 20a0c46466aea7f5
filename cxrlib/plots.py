"""Figures the notebooks show. Each function draws on new axes and returns the figure.

Importing this module inside a Jupyter kernel selects matplotlib's inline backend when the
environment chose a non-interactive one (``MPLBACKEND=Agg`` on servers and in some CI): papermill,
nbmake and Colab then keep every figure in the executed notebook instead of dropping it.
"""

from __future__ import annotations

import numpy as np

from cxrlib import CLASS_NAMES

HEAT_LABEL = "map value / its maximum"


def use_inline_backend() -> bool:
    """In a Jupyter kernel with a non-interactive backend, switch to the inline one.

    Interactive choices (``%matplotlib widget``, a GUI backend) are left alone. Returns whether
    the inline backend is now active.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):  # plain Python or a terminal IPython
        return False
    import matplotlib

    backend = matplotlib.get_backend().lower()
    if "inline" in backend:
        return True
    if backend in ("agg", "pdf", "svg", "ps", "cairo", "template"):
        shell.run_line_magic("matplotlib", "inline")
        return True
    return False


use_inline_backend()


def _plt():
    import matplotlib.pyplot as plt

    return plt


def heat_colorbar(fig, axes, label: str = HEAT_LABEL, cmap: str = "jet"):
    """One colour bar for every heat-map panel of ``fig`` (they all share the 0-1 scale)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    axes = list(np.ravel(axes))
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=axes, fraction=0.025, pad=0.02)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def class_balance(splits):
    """Images per class in each split (bar chart), from the ``splits.csv`` table."""
    import seaborn as sns

    plt = _plt()
    table = splits.assign(cls=splits["label"].map(dict(enumerate(CLASS_NAMES))))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.countplot(data=table, x="split", hue="cls", order=["train", "val", "test"], hue_order=list(CLASS_NAMES), ax=ax)
    ax.set_xlabel("")
    ax.set_ylabel("images")
    ax.set_title("images per class in each split (grouped by patient)", fontsize=9)
    ax.legend(title="")
    fig.tight_layout()
    return fig


def overlay(ax, image, heat=None, *, points=None, alpha=0.45, title=None, cmap="jet", scanpath=False):
    """Grey image, optional heat map on top, optional fixations (numbered path if scanpath)."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    if heat is not None:
        ax.imshow(heat / (heat.max() + 1e-12), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    if points is not None and len(points):
        pts = np.asarray(points)
        if scanpath:
            ax.plot(pts[:, 0], pts[:, 1], "-", color="yellow", lw=0.6, alpha=0.8)
        ax.scatter(pts[:, 0], pts[:, 1], s=6, c=np.arange(len(pts)) if scanpath else "yellow",
                   cmap="autumn" if scanpath else None, edgecolors="none")
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_autoscale_on(False)  # points drawn later (e.g. off-image gaze) must not move the frame
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def examples_with_gaze(dataset, indices):
    """Per example: the image, its gaze map, and the scanpath of fixations."""
    plt = _plt()
    fig, axes = plt.subplots(len(indices), 3, figsize=(7.5, 2.6 * len(indices)), squeeze=False)
    for row, index in zip(axes, indices):
        s = dataset[index]
        image, sal = s["image"][0].numpy(), s["gaze_map"][0].numpy()
        name = CLASS_NAMES[s["label"]]
        overlay(row[0], image, title=f"{name}  {s['dicom_id'][:8]}")
        overlay(row[1], image, sal, title="gaze map")
        overlay(row[2], image, points=s["fixations"].numpy(), scanpath=True,
                title=f"scanpath ({len(s['fixations'])} fixations, yellow = late)")
    fig.tight_layout()
    heat_colorbar(fig, axes[:, 1], "gaze map / its maximum")
    return fig


def map_row(image, maps: dict, *, points=None):
    """One image with several maps side by side (e.g. the effect of sigma)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.3 * (len(maps) + 1), 2.8))
    overlay(axes[0], image, points=points, title="image + fixations")
    for ax, (title, heat) in zip(axes[1:], maps.items()):
        overlay(ax, image, heat, title=title)
    fig.tight_layout()
    heat_colorbar(fig, axes[1:], "gaze map / its maximum")
    return fig


def training_curves(history, metrics=("val_auc_macro", "val_cc")):
    """Train/validation loss per epoch, and any validation metric the history holds."""
    plt = _plt()
    shown = [m for m in metrics if m in history.columns and history[m].notna().any()]
    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(4 * (1 + len(shown)), 3), squeeze=False)
    axes = axes[0]
    x = np.arange(1, len(history) + 1)
    axes[0].plot(x, history["train_loss"], "o-", label="train")
    axes[0].plot(x, history["val_loss"], "o-", label="validation")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].set_title("loss per epoch", fontsize=9)
    axes[0].legend()
    for ax, m in zip(axes[1:], shown):
        ax.plot(x, history[m], "o-", color="C2")
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
        ax.set_title(f"{m.removeprefix('val_')} on the validation split", fontsize=9)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def roc_plot(probs, labels, title="ROC, one-vs-rest"):
    from cxrlib.metrics import classification_scores, roc_curves

    plt = _plt()
    scores = classification_scores(probs, labels)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for k, (fpr, tpr) in roc_curves(probs, labels).items():
        ax.plot(fpr, tpr, label=f"{CLASS_NAMES[k]} (AUC {scores['auc_per_class'][CLASS_NAMES[k]]:.2f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{title}; macro AUC {scores['auc_macro']:.2f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion(matrix, title="confusion matrix"):
    import seaborn as sns

    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    sns.heatmap(np.asarray(matrix), annot=True, fmt="d", cmap="Blues", cbar=False,
                xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def embedding_scatter(before, after, labels, titles=("before", "after")):
    """2-D PCA of two embedding sets of the same images, coloured by class."""
    from sklearn.decomposition import PCA

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, emb, title in zip(axes, (before, after), titles):
        xy = PCA(n_components=2).fit_transform(np.asarray(emb, dtype=np.float64))
        for k, name in enumerate(CLASS_NAMES):
            sel = np.asarray(labels) == k
            ax.scatter(xy[sel, 0], xy[sel, 1], s=10, label=name, alpha=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def saliency_grid(images, rows: list[dict], titles=None):
    """One row per image: columns are named maps (dict title -> (H, W) map or None for the image)."""
    plt = _plt()
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.2 * n_cols, 2.6 * len(rows)), squeeze=False)
    for r, (image, maps) in enumerate(zip(images, rows)):
        for c, (title, heat) in enumerate(maps.items()):
            overlay(axes[r, c], image, heat, title=title)
        for c in range(len(maps), n_cols):
            axes[r, c].axis("off")
        if titles:
            axes[r, 0].set_ylabel(titles[r], fontsize=8)
    fig.tight_layout()
    heat_colorbar(fig, axes[:, 1:])
    return fig


def gaze_rows(dataset, index: int, source: str = "fixations"):
    """The rows of ``eye_gaze.csv`` or ``fixations.csv`` for one image, in reading order, with
    ``x`` and ``y`` mapped onto the network's image (the same geometry as the gaze map)."""
    import pandas as pd

    from cxrlib.data.gaze import GAZE_SOURCES
    from cxrlib.data.geometry import Geometry

    sample = dataset[index]
    path = dataset.egd_root / GAZE_SOURCES[source]
    wanted = {"DICOM_ID", "Time (in secs)", "FPOGD", "X_ORIGINAL", "Y_ORIGINAL"}
    # chunks: the real eye_gaze.csv is large, and only one image's rows are needed
    parts = [c[c["DICOM_ID"].astype(str).str.strip() == sample["dicom_id"]]
             for c in pd.read_csv(path, usecols=lambda c: c.strip() in wanted, chunksize=200_000)]
    rows = pd.concat(parts).rename(columns=str.strip).reset_index(drop=True)
    geometry = Geometry.fit(sample["native_shape"], dataset.image_size, dataset.resize)
    rows[["x", "y"]] = geometry.apply_points(rows[["X_ORIGINAL", "Y_ORIGINAL"]].to_numpy(float))
    return rows


def gaze_vs_fixations(dataset, index: int):
    """Raw gaze samples (about 60 per second) beside the fixations an eye tracker derives from
    them (marker area ~ duration), and the gaze map the network learns, for one image."""
    plt = _plt()
    sample = dataset[index]
    image = sample["image"][0].numpy()
    raw, fix = gaze_rows(dataset, index, "eye_gaze"), gaze_rows(dataset, index, "fixations")
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    overlay(axes[0], image, title=f"raw gaze: {len(raw)} samples")
    axes[0].scatter(raw["x"], raw["y"], s=2, c="cyan", alpha=0.6, edgecolors="none")
    overlay(axes[1], image, title=f"fixations: {len(fix)} (area ~ duration)")
    if "FPOGD" in fix:
        axes[1].scatter(fix["x"], fix["y"], s=200 * fix["FPOGD"] / max(fix["FPOGD"].max(), 1e-9), c="yellow",
                        alpha=0.6, edgecolors="k", linewidths=0.3)
    overlay(axes[2], image, sample["gaze_map"][0].numpy(), title=f"gaze map ({dataset.gaze_source})")
    axes[0].set_ylabel(f"{CLASS_NAMES[sample['label']]} {sample['dicom_id'][:8]}", fontsize=8)
    fig.tight_layout()
    heat_colorbar(fig, axes[2], "gaze map / its maximum")
    return fig


def scanpath_in_time(dataset, index: int, *, panels: int = 4):
    """Small multiples of one reading: each panel a time window, its fixations in colour and the
    earlier ones faint, so the order in which the radiologist looked is visible."""
    plt = _plt()
    sample = dataset[index]
    image = sample["image"][0].numpy()
    fix = gaze_rows(dataset, index, "fixations")
    t = fix["Time (in secs)"].to_numpy(float) if "Time (in secs)" in fix else np.arange(len(fix), dtype=float)
    edges = np.linspace(t.min(), t.max() + 1e-9, panels + 1) if len(t) else np.zeros(panels + 1)
    fig, axes = plt.subplots(1, panels, figsize=(2.4 * panels, 2.9))
    for k, ax in enumerate(np.ravel(axes)):
        now = (t >= edges[k]) & (t < edges[k + 1])
        before = t < edges[k]
        overlay(ax, image, title=f"{edges[k]:.1f}-{edges[k + 1]:.1f} s: {int(now.sum())} fixations")
        ax.scatter(fix["x"][before], fix["y"][before], s=6, c="0.8", alpha=0.5, edgecolors="none")
        ax.plot(fix["x"][now], fix["y"][now], "-", color="yellow", lw=0.7)
        ax.scatter(fix["x"][now], fix["y"][now], s=12, c=t[now], cmap="autumn", vmin=edges[k], vmax=edges[k + 1],
                   edgecolors="none")
    fig.suptitle(f"scanpath in time: {CLASS_NAMES[sample['label']]} {sample['dicom_id'][:8]} "
                 "(grey: earlier fixations)", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, name: str, config) -> "Path | None":
    """Write a figure worth keeping to ``<run_dir>/figures/<name>``, with where it came from.

    A run never writes into the repository: a demo run that rewrote the tracked ``figures/``
    made a student's next ``git pull`` conflict. :func:`publish_figures` (``make figures``)
    copies the figures of a demo run on the synthetic data into ``figures/`` on purpose. The
    provenance file next to the figures (profile, synthetic or not) is what it checks, so a
    figure made from PhysioNet data can never be published by accident.
    """
    import json
    from pathlib import Path

    if fig is None:
        return None
    folder = Path(config.run_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    record = folder / PROVENANCE
    provenance = json.loads(record.read_text()) if record.is_file() else {}
    provenance[name] = {"profile": config.profile, "synthetic": config.egd_root is None, "stage": config.stage}
    record.write_text(json.dumps(provenance, indent=2))
    print(f"saved {path}")
    return path


PROVENANCE = "provenance.json"


def publish_figures(run_dir=None, dest=None) -> list:
    """Copy the figures of a demo run on the synthetic data into the repository's ``figures/``
    (``make figures``); return the copied paths.

    Only figures whose provenance says demo profile and synthetic data are copied: anything made
    from EGD-CXR / MIMIC-CXR must stay out of the repository. Others are named and skipped.
    """
    import json
    import shutil
    from pathlib import Path

    from cxrlib.paths import repository_root

    run_dir = Path(run_dir) if run_dir is not None else repository_root() / "runs" / "demo"
    dest = Path(dest) if dest is not None else repository_root() / "figures"
    record = run_dir / "figures" / PROVENANCE
    if not record.is_file():
        raise FileNotFoundError(f"no figures to publish: {record} is missing; run the demo first "
                                f"(make demo), which saves its figures under {run_dir / 'figures'}")
    copied = []
    for name, origin in sorted(json.loads(record.read_text()).items()):
        source = run_dir / "figures" / name
        if not (origin.get("profile") == "demo" and origin.get("synthetic")):
            print(f"not publishing {name}: made by a {origin.get('profile')} run "
                  f"{'on the synthetic data' if origin.get('synthetic') else 'on real data'}; "
                  f"only demo runs on the synthetic data go to {dest}")
            continue
        if not source.is_file():
            raise FileNotFoundError(f"{source} is listed in {record} but missing; rerun the notebook that draws it")
        dest.mkdir(parents=True, exist_ok=True)
        copied.append(Path(shutil.copy2(source, dest / name)))
        print(f"published {dest / name}")
    return copied
