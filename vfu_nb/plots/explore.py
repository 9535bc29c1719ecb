"""Figures of a DeepFashion-C tree (notebook 01): categories, attributes, landmark visibility, samples with their
boxes and landmarks. The tables and numbers they draw are computed by :mod:`vfu_nb.data.summary`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patches

from vfu_nb.conventions import ATTRIBUTE_TYPE_COLORS, ATTRIBUTE_TYPE_NAMES, LANDMARK_COLORS, VISIBILITY_MARKERS
from vfu_nb.data.annotations import Annotations
from vfu_nb.data.crops import crop_window, load_rgb
from vfu_nb.data.summary import attribute_table, category_table, visibility_table
from vfu_nb.plots.draw import box_patch, landmark_handles


def plot_categories(ann: Annotations, ax=None):
    """Bar chart of images per category (log scale shows the long tail)."""
    df = category_table(ann)
    ax = ax or plt.subplots(figsize=(12, 3.5))[1]
    colors = {"upper": "tab:blue", "lower": "tab:orange", "full": "tab:green"}
    ax.bar(df.index, df["total"].clip(lower=0.8), color=[colors[t] for t in df["type"]])
    ax.set_yscale("log")
    ax.set_ylabel("images")
    ax.set_title("Images per category (colour = clothes type; empty categories have no bar)")
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.legend(handles=[patches.Patch(color=c, label=t) for t, c in colors.items()], fontsize=8)
    return ax


def plot_attribute_frequency(ann: Annotations, axes=None):
    """Attribute frequency per type, sorted: the long tail of each of the five groups."""
    df = attribute_table(ann)
    if axes is None:
        axes = plt.subplots(1, 5, figsize=(14, 3), sharey=True)[1]
    for ax, name in zip(axes, ATTRIBUTE_TYPE_NAMES.values()):
        part = df[df["type"] == name]
        ax.bar(np.arange(len(part)), part["frequency"], color=ATTRIBUTE_TYPE_COLORS[name])
        ax.set_title(f"{name} ({len(part)})")
        ax.set_xlabel("attribute rank")
    axes[0].set_ylabel("fraction of images positive")
    return axes


def plot_visibility(ann: Annotations, ax=None):
    """Stacked bars of visible / occluded / truncated per landmark slot (absent slots left out)."""
    df = visibility_table(ann).drop(columns="absent")
    ax = ax or plt.subplots(figsize=(8, 3))[1]
    df.plot.bar(stacked=True, ax=ax, color=["tab:green", "tab:orange", "tab:red"], width=0.75)
    ax.set_ylabel("images")
    ax.set_title("Landmark visibility per slot")
    ax.tick_params(axis="x", labelrotation=30)
    return ax


def draw_sample(ax, ann: Annotations, i: int, predicted=None, crop=False):
    """Draw image ``i`` with its box and landmarks (marker style = visibility); optional predictions.

    ``predicted``: 8x2 landmarks in crop units, drawn as white crosses joined to the ground truth.
    """
    image = load_rgb(ann.image_path(i))
    window = crop_window(ann.bbox[i], image.size, pad_to_square=False)
    x1, y1, x2, y2 = window
    if crop:
        image = image.crop(tuple(round(v) for v in window))
        offset, scale = np.array([x1, y1]), 1.0
    else:
        offset, scale = np.zeros(2), 1.0
    ax.imshow(image)
    if not crop:
        ax.add_patch(box_patch(window))
    for s in range(8):
        v = ann.landmark_visibility[i, s]
        if v < 0:
            continue
        x, y = (ann.landmarks[i, s] - offset) * scale
        ax.plot(x, y, VISIBILITY_MARKERS[v], color=LANDMARK_COLORS[s], ms=7, mew=2,
                mfc="none" if v else LANDMARK_COLORS[s])
        if predicted is not None:
            px, py = np.asarray(predicted[s]) * [x2 - x1, y2 - y1] + [x1, y1] - offset
            ax.plot([x, px], [y, py], "-", color="white", lw=1)
            ax.plot(px, py, "P", color="white", ms=7, mec=LANDMARK_COLORS[s])
    ax.set_title(f"{ann.category_names[ann.category[i]]} ({ann.split[i]})", fontsize=9)
    ax.set_axis_off()
    return ax


def plot_sample_grid(ann: Annotations, indices, ncols=4):
    """A grid of samples with boxes and landmarks, and a legend of slots and visibility markers."""
    indices = list(indices)
    nrows = max(1, int(np.ceil(len(indices) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(indices):]:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, indices):
        draw_sample(ax, ann, i)
    fig.legend(handles=landmark_handles(), loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def pick_samples(ann: Annotations, n: int, seed: int = 0, split: str | None = None) -> np.ndarray:
    """``n`` image rows drawn with a fixed seed, spread over clothes types."""
    rng = np.random.default_rng(seed)
    rows = np.arange(len(ann)) if split is None else ann.indices(split)
    by_type = [rng.permutation(rows[ann.clothes_type[rows] == t]) for t in (1, 2, 3)]
    picked = [r for group in zip(*[np.resize(g, n) if len(g) else np.full(n, -1) for g in by_type])
              for r in group if r >= 0]
    return np.array(list(dict.fromkeys(picked))[:n])
