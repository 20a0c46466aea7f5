"""Figures the notebooks show. Each function draws on new axes and returns the figure."""

from __future__ import annotations

import numpy as np

from cxrlib import CLASS_NAMES


def _plt():
    import matplotlib.pyplot as plt

    return plt


def class_balance(splits):
    """Images per class in each split (bar chart), from the ``splits.csv`` table."""
    import seaborn as sns

    plt = _plt()
    table = splits.assign(cls=splits["label"].map(dict(enumerate(CLASS_NAMES))))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.countplot(data=table, x="split", hue="cls", order=["train", "val", "test"], hue_order=list(CLASS_NAMES), ax=ax)
    ax.set_xlabel("")
    ax.set_ylabel("images")
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
        image, sal = s["image"][0].numpy(), s["saliency"][0].numpy()
        name = CLASS_NAMES[s["label"]]
        overlay(row[0], image, title=f"{name}  {s['dicom_id'][:8]}")
        overlay(row[1], image, sal, title="gaze map")
        overlay(row[2], image, points=s["fixations"].numpy(), scanpath=True,
                title=f"scanpath ({len(s['fixations'])} fixations)")
    fig.tight_layout()
    return fig


def map_row(image, maps: dict, *, points=None):
    """One image with several maps side by side (e.g. the effect of sigma)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.3 * (len(maps) + 1), 2.8))
    overlay(axes[0], image, points=points, title="image + fixations")
    for ax, (title, heat) in zip(axes[1:], maps.items()):
        overlay(ax, image, heat, title=title)
    fig.tight_layout()
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
    axes[0].legend()
    for ax, m in zip(axes[1:], shown):
        ax.plot(x, history[m], "o-", color="C2")
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
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
