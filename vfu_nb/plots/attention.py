"""Landmark heat maps and attention maps over test images (notebook 04; thesis section 3.2.1, Figure 3.2).

The MTL network predicts 8 landmark heat maps at input resolution, average-pools them to the conv4_3 grid,
and turns them, together with the conv4_3 features F, into an attention tensor A (tanh, one value per channel
and cell); the categorization branch sees (1 + A) * F. This module draws those maps over the input crops, each
reduced to one grid by :mod:`vfu_nb.maps` (heat maps: max over landmarks; attention: mean over channels; feature
energy for models without attention, such as CAT):

* :func:`plot_cases` -- one row per image (chosen with :func:`vfu_nb.training.runs.select_cases`): the crop with
  true (o) and predicted (+) landmarks, the heat maps, the attention (or feature energy) map;
* :func:`side_by_side` -- the same images under several models.

Pixel convention (:mod:`vfu_nb.conventions`): crop unit u sits at continuous pixel position u*S; matplotlib's
``imshow`` puts pixel i's centre at i, so a point is drawn at u*S - 0.5. Colour maps: magma for heat maps, viridis
for feature energy (both perceptually uniform), and for the signed attention coolwarm, a diverging map whose
lightness falls symmetrically towards 0 (Moreland, ISVC 2009).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np

from vfu_nb.conventions import LANDMARK_COLORS
from vfu_nb.maps import attention_strength, feature_energy, heatmap_strength
from vfu_nb.plots.draw import draw_overlay, draw_predicted_landmarks

HEATMAP_CMAP, FEATURE_CMAP, ATTENTION_CMAP = "magma", "viridis", "coolwarm"


def _draw_points(ax, predictions, pos: int, size: int) -> None:
    """The visible true landmarks as dots and, when predicted, each prediction joined to its true point."""
    gt, vis = predictions.landmarks[pos], predictions.visibility[pos]
    pred = None if predictions.landmarks_pred is None else predictions.landmarks_pred[pos]
    shown = vis == 0
    for s in np.flatnonzero(shown):
        x, y = gt[s] * size - 0.5
        ax.plot(x, y, "o", color=LANDMARK_COLORS[s], ms=5, mec="white", mew=0.8)
        if pred is not None:
            px, py = pred[s] * size - 0.5
            ax.plot([x, px], [y, py], "-", color="white", lw=0.7)
    if pred is not None:                               # the prediction marker of every figure (NaN: not drawn)
        draw_predicted_landmarks(ax, np.where(shown[:, None], pred * size - 0.5, np.nan))


def _overlay(ax, image: np.ndarray, grid: np.ndarray, cmap: str, vmin=None, vmax=None, alpha: float = 0.55):
    s = image.shape[0]
    return draw_overlay(ax, image, grid, (-0.5, s - 0.5, s - 0.5, -0.5), cmap, alpha, vmin, vmax)


def plot_cases(predictions, images: np.ndarray, positions: Sequence[int], category_names: Sequence[str],
               title: str = "", row_labels: Optional[Sequence[str]] = None):
    """One row per image: crop with landmarks, heat maps, attention (or feature energy) -- all from ``maps``.

    ``images``: uint8 (n, S, S, 3) crops of ``positions`` (:func:`vfu_nb.training.runs.images_of`); ``predictions.maps``
    must hold these positions (``vfu_nb.training.runs.predict(..., keep_maps=positions)``).
    """
    positions = [int(p) for p in positions]
    has_heat = any("heatmaps" in predictions.maps.get(p, {}) for p in positions)
    has_att = any("attention" in predictions.maps.get(p, {}) for p in positions)
    cols = 1 + int(has_heat) + 1
    fig, axes = plt.subplots(max(1, len(positions)), cols, figsize=(2.6 * cols, 2.6 * max(1, len(positions))),
                             squeeze=False)
    probs = predictions.category_prob
    top1 = predictions.category_logits.argmax(axis=1)
    for r, (pos, image) in enumerate(zip(positions, images)):
        size = image.shape[0]
        maps = predictions.maps.get(pos, {})
        ax = axes[r, 0]
        ax.imshow(image)
        _draw_points(ax, predictions, pos, size)
        ax.set_axis_off()
        true, guess = category_names[predictions.category[pos]], category_names[top1[pos]]
        label = (row_labels[r] + ": ") if row_labels else ""
        ax.set_title(f"{label}{true}\npred {guess}, p(true)={probs[pos]:.2f}", fontsize=8)
        c = 1
        if has_heat:
            if "heatmaps" in maps:
                _overlay(axes[r, c], image, heatmap_strength(maps["heatmaps"]), HEATMAP_CMAP, 0, 1)
                _draw_points(axes[r, c], predictions, pos, size)
            axes[r, c].set_axis_off()
            axes[r, c].set_title("landmark heat maps (max of 8)", fontsize=8)
            c += 1
        if has_att and "attention" in maps:
            a = attention_strength(maps["attention"])
            lim = max(1e-6, float(np.abs(a).max()))
            _overlay(axes[r, c], image, a, ATTENTION_CMAP, -lim, lim)
            axes[r, c].set_title(f"attention A, channel mean (±{lim:.2f})", fontsize=8)
        elif "features" in maps:
            _overlay(axes[r, c], image, feature_energy(maps["features"]), FEATURE_CMAP, 0, 1)
            axes[r, c].set_title("conv4_3 feature energy (no attention)", fontsize=8)
        axes[r, c].set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def side_by_side(predictions: Mapping[str, object], images: np.ndarray, positions: Sequence[int],
                 category_names: Sequence[str], title: str = ""):
    """The same images under several models: per model, its attention (or feature-energy) map and p(true)."""
    labels = list(predictions)
    fig, axes = plt.subplots(max(1, len(positions)), 1 + len(labels),
                             figsize=(2.6 * (1 + len(labels)), 2.6 * max(1, len(positions))), squeeze=False)
    for r, (pos, image) in enumerate(zip(positions, images)):
        first = predictions[labels[0]]
        axes[r, 0].imshow(image)
        axes[r, 0].set_axis_off()
        axes[r, 0].set_title(category_names[first.category[pos]], fontsize=8)
        for c, label in enumerate(labels, start=1):
            p = predictions[label]
            maps = p.maps.get(pos, {})
            if "attention" in maps:
                a = attention_strength(maps["attention"])
                lim = max(1e-6, float(np.abs(a).max()))
                _overlay(axes[r, c], image, a, ATTENTION_CMAP, -lim, lim)
                kind = "attention"
            elif "features" in maps:
                _overlay(axes[r, c], image, feature_energy(maps["features"]), FEATURE_CMAP, 0, 1)
                kind = "feature energy"
            else:
                axes[r, c].set_axis_off()
                kind = "no map"
            axes[r, c].set_title(f"{label.upper()} {kind}\np(true)={p.category_prob[pos]:.2f}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
