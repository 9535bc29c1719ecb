"""Training-curve figures of one run (thesis section 3.2.1, figures 3.3-3.9), from ``history.json``.

Every function takes a run's history (the dict in ``<run_dir>/history.json``, or the run directory itself),
so the figures can be redrawn at any time without retraining. Reading the history, its frames, the epoch
selection and Table 3.1 are in :mod:`vfu_nb.history`.

Thesis figure                          function
-------------------------------------  ------------------------------------------------------------
3.3 category loss per batch            ``plot_batch_loss(h, "category")``
3.4 top-3 category accuracy per epoch  ``plot_category_accuracy(h)`` (val and test; the thesis had test only)
3.5 attribute loss per batch           ``plot_batch_loss(h, "attribute")``
3.6 top-3 attribute recall per type    ``plot_attribute_recall(h)``; beside it ``plot_attribute_map(h)`` (attribute
                                       mAP per type, no thesis figure); both panels: ``plot_attribute_curves(h)``
3.8 landmark loss per batch            ``plot_batch_loss(h, "landmark")``
3.9 landmark distance per epoch        ``plot_landmark_error(h)`` (normalised error, lower is better)

Baselines: every epoch figure takes ``baselines`` (``{name: flat metrics}``, as
:func:`vfu_nb.baselines.compute_baselines` returns them) and draws the ones that make its metric readable as
labelled horizontal lines (:data:`vfu_nb.conventions.REFERENCE_BASELINES`, :func:`reference_lines`): class prior
and geometry-only on category accuracy, the attribute prior given the true category on attribute recall and mAP,
the mean landmark positions on the landmark error. Every epoch figure marks the best val epoch
(:func:`vfu_nb.history.best_val_epoch`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vfu_nb.conventions import (
    ATTRIBUTE_TYPE_COLORS, ATTRIBUTE_TYPES, LOSS_TERMS, baseline_label, reference_baselines,
)
from vfu_nb.history import batch_frame, best_val_epoch, default_window, epoch_frame, load_history, moving_average
from vfu_nb.metrics import MAP_GROUPS

_FIGURE_OF_TERM = {"category": "3.3", "attribute": "3.5", "landmark": "3.8", "total": None}
_SPLIT_STYLE = {"val": dict(ls="--", marker="s"), "test": dict(ls="-", marker="o")}

#: Line style of each baseline's reference line.
BASELINE_STYLES = {"chance": (0, (1, 3)), "class_prior": "--", "attribute_prior": "--",
                   "attribute_prior_given_category": ":", "geometry_knn": "-.", "mean_landmarks": "--"}

# ----------------------------------------------------------------------------------------------------------
# Baselines as reference lines


def reference_lines(ax, baselines, metric: str, names=None, color="0.3", label_prefix: str = "") -> list:
    """Horizontal lines at each baseline's ``metric`` value, labelled "<prefix><baseline>: <value>".

    ``baselines``: ``{name: flat metrics}`` (None or {} draws nothing); ``names``: which ones (default
    :func:`vfu_nb.conventions.reference_baselines` of ``metric``). Baselines without a finite value are skipped. Returns the lines.
    """
    lines = []
    for name in (names if names is not None else reference_baselines(metric)):
        metrics = (baselines or {}).get(name) or {}
        value = metrics.get(metric)
        value = float("nan") if value is None else float(value)
        if math.isfinite(value):
            lines.append(ax.axhline(value, color=color, lw=1.2, ls=BASELINE_STYLES.get(name, "--"), zorder=1,
                                    label=f"{label_prefix}{baseline_label(name, metrics)}: {value:.3f}"))
    return lines


# ----------------------------------------------------------------------------------------------------------
# Figures


def _model_label(history, model: str | None) -> str:
    return (model or "model").upper()


def _mark_epochs(ax, epochs: int) -> None:
    for e in range(1, epochs):
        ax.axvline(e, color="0.85", lw=0.8, zorder=0)


def plot_batch_loss(history, term: str = "category", window: int | None = None, model: str | None = None,
                    ax=None):
    """Loss ``term`` of every mini-batch (thin) and its trailing moving average (thick), on an epoch axis.

    Thesis figures 3.3 (category cross-entropy), 3.5 (attribute loss) and 3.8 (landmark heatmap MSE). The loss
    values are unweighted (the weights apply only to ``total``). Returns the figure.
    """
    if term not in LOSS_TERMS:
        raise ValueError(f"term must be one of {LOSS_TERMS}")
    frame = batch_frame(history)
    window = window or default_window(history)
    ax = ax or plt.subplots(figsize=(7, 3.2))[1]
    y = frame[term].to_numpy()
    ax.plot(frame["epoch_pos"], y, lw=0.6, alpha=0.45, color="tab:blue", label="per batch")
    ax.plot(frame["epoch_pos"], moving_average(y, window), lw=2, color="tab:blue",
            label=f"moving average ({window} batches)")
    epochs = int(frame["epoch"].max()) if len(frame) else 1
    _mark_epochs(ax, epochs)
    ax.set_xlim(0, epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{term} loss")
    fig_no = _FIGURE_OF_TERM.get(term)
    ax.set_title(f"{_model_label(history, model)}: {term} loss per mini-batch"
                 + (f" (thesis Fig. {fig_no})" if fig_no else ""))
    if term == "landmark" and len(frame) and np.nanmax(np.abs(y)) == 0:
        ax.text(0.5, 0.5, "no landmark loss (model without landmark supervision)", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def _plot_epoch_metric(ax, frame: pd.DataFrame, metric: str, label: str, **style) -> None:
    if metric in frame:
        ax.plot(frame.index, frame[metric], label=label, **style)


def _mark_best(ax, history, y_of_epoch, color="k") -> None:
    epoch = best_val_epoch(history)
    if epoch is not None and np.isfinite(y_of_epoch(epoch)):
        ax.axvline(epoch, color=color, lw=0.8, ls=":")
        ax.annotate(f"best val epoch {epoch}", (epoch, y_of_epoch(epoch)), textcoords="offset points",
                    xytext=(4, -12), fontsize=8)


def _epoch_axis(ax, history) -> None:
    n = len(load_history(history)["epochs"])
    ax.set_xlim(0.5, max(1, n) + 0.5)
    ax.set_xticks(range(1, max(1, n) + 1))
    ax.set_xlabel("epoch")


def plot_category_accuracy(history, k: int = 3, splits: Sequence[str] = ("val", "test"), model: str | None = None,
                           ax=None, baselines=None):
    """Top-k category accuracy per epoch on val and test (thesis Fig. 3.4: test only), best val epoch marked;
    class prior and geometry-only ``baselines`` as reference lines."""
    ax = ax or plt.subplots(figsize=(6, 3.2))[1]
    metric = f"category_top{k}"
    for split in splits:
        _plot_epoch_metric(ax, epoch_frame(history, split), metric, split, color="tab:blue", **_SPLIT_STYLE[split])
    reference_lines(ax, baselines, metric)
    test = epoch_frame(history, "test")
    _mark_best(ax, history, lambda e: test.at[e, metric] if metric in test else float("nan"))
    _epoch_axis(ax, history)
    ax.set_ylabel(f"top-{k} category accuracy")
    ax.set_title(f"{_model_label(history, model)}: top-{k} category accuracy (thesis Fig. 3.4)")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


#: Legend entry of the per-type reference lines of the attribute panels.
_PER_TYPE_REFERENCE = "attribute prior given the true category, per type (in its colour)"


def _plot_attribute_groups(ax, history, split: str, keys: Mapping[str, str], all_label: str, baselines,
                           show_val: bool) -> None:
    """One curve per attribute type and a dashed black one for all types (``keys``: group -> metric key, the
    last group is "all"); each with its attribute-prior-given-category reference line in the same colour."""
    frame = epoch_frame(history, split)
    *types, all_group = keys
    per_type = []
    for t in types:
        color = ATTRIBUTE_TYPE_COLORS[t]
        _plot_epoch_metric(ax, frame, keys[t], t, color=color, marker="o")
        if show_val:
            _plot_epoch_metric(ax, epoch_frame(history, "val"), keys[t], None, color=color, ls=":", lw=1)
        per_type += reference_lines(ax, baselines, keys[t], color=color, label_prefix=f"{t}: ")
    _plot_epoch_metric(ax, frame, keys[all_group], all_label, color="k", ls="--")
    overall = reference_lines(ax, baselines, keys[all_group], color="k", label_prefix=f"{all_label}: ")
    _mark_best(ax, history, lambda e: frame.at[e, keys[all_group]] if keys[all_group] in frame else float("nan"))
    _epoch_axis(ax, history)
    handles = [line for line in ax.get_lines() if line.get_label() in (*types, all_label)] + overall
    if per_type:
        handles.append(plt.Line2D([], [], color="0.3", ls=per_type[0].get_linestyle(), label=_PER_TYPE_REFERENCE))
    ax.legend(handles=handles, fontsize=7, ncol=3 if per_type else 2, loc="upper center", bbox_to_anchor=(0.5, -0.2))


def plot_attribute_recall(history, split: str = "test", k: int = 3, model: str | None = None, ax=None,
                          show_val: bool = False, baselines=None):
    """Top-k attribute recall per attribute type per epoch (thesis Fig. 3.6), A1-group convention.

    Each type's recall is TP/GT pooled over the images, with the top-k taken within the type's attributes
    (``vfu_nb.metrics.attribute_topk_recall``). The pooled "all (grouped)" value is dashed black. With
    ``baselines``, the attribute prior given the true category of each type is a dotted line in its colour.
    """
    ax = ax or plt.subplots(figsize=(6.5, 4.4))[1]
    keys = {t: f"attr_top{k}_{t}" for t in (*ATTRIBUTE_TYPES, "all_grouped")}
    _plot_attribute_groups(ax, history, split, keys, "all (grouped)", baselines, show_val)
    ax.set_ylabel(f"top-{k} recall ({split})")
    ax.set_title(f"{_model_label(history, model)}: top-{k} attribute recall per type (thesis Fig. 3.6)")
    ax.figure.tight_layout()
    return ax.figure


def plot_attribute_map(history, split: str = "test", model: str | None = None, ax=None, show_val: bool = False,
                       baselines=None):
    """Attribute mAP per attribute type per epoch (``attr_map_<type>``), all attributes dashed black.

    mAP ranks the *images* for each attribute (``vfu_nb.metrics.average_precision``), so unlike top-k recall it
    does not reward ranking frequent attributes first. Reference lines as in :func:`plot_attribute_recall`.
    """
    ax = ax or plt.subplots(figsize=(6.5, 4.4))[1]
    keys = {g: f"attr_map_{g}" for g in MAP_GROUPS}
    _plot_attribute_groups(ax, history, split, keys, "all", baselines, show_val)
    ax.set_ylabel(f"attribute mAP ({split})")
    ax.set_title(f"{_model_label(history, model)}: attribute mAP per type")
    ax.figure.tight_layout()
    return ax.figure


def plot_attribute_curves(history, split: str = "test", k: int = 3, model: str | None = None, baselines=None):
    """Top-k recall per type (thesis Fig. 3.6) and, beside it, mAP per type: one figure of two panels."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    plot_attribute_recall(history, split, k, model, ax=left, baselines=baselines)
    plot_attribute_map(history, split, model, ax=right, baselines=baselines)
    return fig


def plot_landmark_error(history, splits: Sequence[str] = ("val", "test"), model: str | None = None, ax=None,
                        baselines=None):
    """Mean landmark normalised error per epoch (thesis Fig. 3.9 "average distance"; lower is better).

    NE: distance in crop units (x / box width, y / box height) over visible landmarks, averaged per landmark
    slot, then over the 8 slots (Liu & Lu's convention, ``vfu_nb.metrics.landmark_normalized_error``). With
    ``baselines``, the mean-position predictor (every landmark at its mean training position) is a reference line.
    """
    ax = ax or plt.subplots(figsize=(6, 3.2))[1]
    for split in splits:
        _plot_epoch_metric(ax, epoch_frame(history, split), "landmark_ne_mean", split, color="tab:green",
                           **_SPLIT_STYLE[split])
    reference_lines(ax, baselines, "landmark_ne_mean")
    test = epoch_frame(history, "test")
    _mark_best(ax, history, lambda e: test.at[e, "landmark_ne_mean"] if "landmark_ne_mean" in test else float("nan"))
    _epoch_axis(ax, history)
    ax.set_ylabel("landmark NE (lower is better)")
    ax.set_title(f"{_model_label(history, model)}: landmark normalised error (thesis Fig. 3.9)")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure
