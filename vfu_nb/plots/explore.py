"""Summaries and figures of a DeepFashion-C tree (notebook 01): splits, categories, attributes, landmarks."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import patches

from vfu_nb.conventions import (
    ATTRIBUTE_TYPE_COLORS, ATTRIBUTE_TYPE_NAMES, CLOTHES_TYPE_NAMES, LANDMARK_COLORS, LANDMARK_NAMES, SPLITS,
    VISIBILITY_MARKERS, VISIBILITY_NAMES,
)
from vfu_nb.data.annotations import Annotations
from vfu_nb.data.crops import crop_window, load_rgb
from vfu_nb.plots.draw import box_patch, landmark_handles


def split_table(ann: Annotations) -> pd.DataFrame:
    """Images per split and clothes type."""
    df = pd.DataFrame({"split": ann.split, "clothes type": [CLOTHES_TYPE_NAMES[t] for t in ann.clothes_type]})
    table = pd.crosstab(df["split"], df["clothes type"], margins=True, margins_name="total")
    return table.reindex(list(SPLITS) + ["total"])


def category_table(ann: Annotations) -> pd.DataFrame:
    """Images per category and split, all 50 categories (empty ones included), largest first."""
    counts = {s: np.bincount(ann.category[ann.split == s], minlength=len(ann.category_names)) for s in SPLITS}
    df = pd.DataFrame(counts, index=ann.category_names)
    df["type"] = [CLOTHES_TYPE_NAMES[t] for t in ann.category_types]
    df["total"] = df[list(SPLITS)].sum(axis=1)
    return df.sort_values("total", ascending=False)


def attribute_table(ann: Annotations) -> pd.DataFrame:
    """Positive count and frequency of every attribute, with its type."""
    positives = (ann.attributes == 1).sum(axis=0)
    return pd.DataFrame({
        "attribute": ann.attribute_names,
        "type": [ATTRIBUTE_TYPE_NAMES[t] for t in ann.attribute_types],
        "positives": positives,
        "frequency": positives / max(1, len(ann)),
    }).sort_values("positives", ascending=False, ignore_index=True)


def visibility_table(ann: Annotations) -> pd.DataFrame:
    """Counts of each visibility code per landmark slot."""
    rows = {name: [(ann.landmark_visibility[:, s] == v).sum() for v in VISIBILITY_NAMES]
            for s, name in enumerate(LANDMARK_NAMES)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(VISIBILITY_NAMES.values()))


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


def summary(ann: Annotations) -> dict:
    """Plain numbers about the tree, for ``metrics.json``."""
    positives = (ann.attributes == 1).sum(axis=1)
    return {
        "images": int(len(ann)),
        "images_per_split": {s: int((ann.split == s).sum()) for s in SPLITS},
        "categories": len(ann.category_names),
        "categories_used": int((np.bincount(ann.category, minlength=len(ann.category_names)) > 0).sum()),
        "attributes": len(ann.attribute_names),
        "positive_attributes_per_image": round(float(positives.mean()), 3),
        "visibility_fraction": {VISIBILITY_NAMES[v]: round(float((ann.landmark_visibility == v).mean()), 4)
                                for v in (0, 1, 2)},
    }


# ----------------------------------------------------------------------------------------------------------
# Baselines (vfu_nb.baselines): what chance, priors and geometry alone achieve on this tree


def baseline_table(results) -> pd.DataFrame:
    """Baselines (``{name: flat metrics}`` of :func:`vfu_nb.baselines.compute_baselines`) as rows, the key
    metrics of :data:`vfu_nb.baselines.TABLE_COLUMNS` as columns (nan where a baseline has no such number)."""
    from vfu_nb.baselines import TABLE_COLUMNS
    from vfu_nb.conventions import baseline_label

    rows = {baseline_label(name, m): {label: m.get(key, np.nan) for key, label in TABLE_COLUMNS.items()}
            for name, m in results.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    frame.index.name = "baseline"
    return frame


def _times(value: float, reference: float) -> str:
    return f"{value / reference:.1f} times" if reference > 0 else "n/a"


def _than(value: float, reference: float) -> str:
    return "above" if value > reference else "below" if value < reference else "equal to"


def baseline_sentences(results) -> list:
    """One plain sentence per baseline in ``results`` (:func:`vfu_nb.baselines.compute_baselines`), every
    number taken from ``results``."""
    chance = results.get("chance", {})
    prior = results.get("attribute_prior", {})
    class_prior = results.get("class_prior", {})
    nan = float("nan")
    out = []
    for name, m in results.items():
        c3, r3, mean_ap = m.get("category_top3", nan), m.get("attr_top3_all_grouped", nan), m.get("attr_map_all", nan)
        if name == "chance":
            out.append(f"Chance: random scores put the true category among the top 3 for {c3:.1%} of the "
                       f"{m['n_images']:.0f} test images, find {r3:.1%} of the positive attributes in the top 3 of "
                       f"their type and reach an attribute mAP of {mean_ap:.3f} (exact expectations, nothing sampled).")
        elif name == "class_prior":
            out.append(f"Class prior: always answering the three most frequent training categories gives a top-3 "
                       f"accuracy of {c3:.3f}, {_times(c3, chance.get('category_top3', nan))} chance.")
        elif name == "attribute_prior":
            out.append(f"Attribute prior: ranking the attributes by their training frequency, the same for every "
                       f"image, finds {r3:.1%} of the positives in the top 3 "
                       f"({_times(r3, chance.get('attr_top3_all_grouped', nan))} chance), but its mAP of "
                       f"{mean_ap:.3f} is {_than(mean_ap, chance.get('attr_map_all', nan))} chance's "
                       f"{chance.get('attr_map_all', nan):.3f}: scores that are the same for every image cannot rank "
                       f"images, which is what mAP measures.")
        elif name == "attribute_prior_given_category":
            out.append(f"Attribute prior given the true category: knowing only the category gives a top-3 recall of "
                       f"{r3:.3f} and an mAP of {mean_ap:.3f} ({mean_ap - prior.get('attr_map_all', nan):+.3f} over "
                       f"the attribute prior); an attribute model has to beat this to show it sees more than the "
                       f"category.")
        elif name == "geometry_knn":
            out.append(f"Geometry only: the {m.get('knn_k', nan):.0f} training images nearest in true-landmark "
                       f"geometry (k chosen on val) give a top-3 category accuracy of {c3:.3f} "
                       f"({c3 - class_prior.get('category_top3', nan):+.3f} over the class prior) and an attribute "
                       f"mAP of {mean_ap:.3f}: this much is in the garment's outline alone.")
        elif name == "mean_landmarks":
            out.append(f"Mean landmark positions: putting every landmark at its mean training position (in box "
                       f"units) gives a normalised error of {m.get('landmark_ne_mean', nan):.3f}; a landmark branch "
                       f"has to get below it.")
    return out
