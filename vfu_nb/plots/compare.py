"""MTL versus CAT figures (thesis sections 3.3 and 3.5): metric curves of both models and per-class views.

* :func:`plot_metric_curves` -- thesis figures 3.11 (top-3 category accuracy per epoch, both models) and 3.12
  (top-3 texture recall per epoch).
* :func:`plot_confusion`, :func:`plot_per_attribute_recall`, :func:`plot_per_attribute_ap`,
  :func:`plot_per_attribute` -- need predictions of the best checkpoint on the test split
  (:func:`vfu_nb.training.runs.predict`) and the per-attribute frames of :mod:`vfu_nb.class_metrics`.

Baselines (``{name: flat metrics}`` of :func:`vfu_nb.baselines.compute_baselines`) are an optional argument of the
curves, drawn as in :mod:`vfu_nb.plots.curves`. The tables and sentences of the comparison are in
:mod:`vfu_nb.comparison`.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vfu_nb.class_metrics import ap_differences, confusion_matrix
from vfu_nb.conventions import ATTRIBUTE_TYPES, ATTRIBUTE_TYPE_COLORS, metric_label, model_color
from vfu_nb.history import best_val_epoch, epoch_frame, load_history
from vfu_nb.plots.curves import reference_lines

# ----------------------------------------------------------------------------------------------------------
# Curves (thesis figures 3.11, 3.12)


def plot_metric_curves(histories: Mapping[str, object], metric: str = "category_top3", split: str = "test",
                       show_val: bool = True, ax=None, title: Optional[str] = None, baselines=None):
    """``metric`` per epoch for several runs (``{label: history or run dir}``); each run's best val epoch starred.

    Thesis Fig. 3.11 is ``metric="category_top3"``, Fig. 3.12 ``metric="attr_top3_texture"`` (test split; the
    thesis labels CAT "CAT+ATTR"). With ``show_val`` the val curve is drawn dotted. ``baselines``: reference
    lines as in the training curves (:func:`vfu_nb.plots.curves.reference_lines`).
    """
    ax = ax or plt.subplots(figsize=(6.5, 3.4))[1]
    n_max = 1
    for i, (label, hist) in enumerate(histories.items()):
        h = load_history(hist)
        color = model_color(label)
        frame = epoch_frame(h, split)
        n_max = max(n_max, len(frame))
        if metric in frame:
            ax.plot(frame.index, frame[metric], marker="o", color=color, label=f"{label.upper()} ({split})")
            e = best_val_epoch(h)
            if e is not None and e in frame.index:
                ax.plot([e], [frame.at[e, metric]], marker="*", ms=14, color=color, ls="")
        if show_val:
            val = epoch_frame(h, "val")
            if metric in val:
                ax.plot(val.index, val[metric], ls=":", color=color, lw=1, label=f"{label.upper()} (val)")
    reference_lines(ax, baselines, metric)
    ax.set_xlim(0.5, n_max + 0.5)
    ax.set_xticks(range(1, n_max + 1))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_label(metric))
    fig_no = {"category_top3": " (thesis Fig. 3.11)", "attr_top3_texture": " (thesis Fig. 3.12)"}.get(metric, "")
    ax.set_title(title or f"{metric_label(metric)} per epoch{fig_no}; * = best val epoch")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


# ----------------------------------------------------------------------------------------------------------
# Per-class views (need predictions: vfu_nb.training.runs.predict; frames of vfu_nb.class_metrics)


def plot_confusion(predictions, category_names: Sequence[str], normalize: bool = True, ax=None, title: str = ""):
    """Seaborn heat map of the top-1 confusion matrix, rows = true category (normalised per row by default).

    Only categories that occur in the split (as truth or prediction) are shown.
    """
    import seaborn as sns

    logits = predictions.category_logits
    pred = logits.argmax(axis=1)
    cm = confusion_matrix(predictions.category, pred, logits.shape[1])
    used = np.flatnonzero((cm.sum(axis=0) + cm.sum(axis=1)) > 0)
    cm = cm[np.ix_(used, used)].astype(float)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    names = [category_names[i] for i in used]
    size = max(4.0, 0.32 * len(used) + 2)
    ax = ax or plt.subplots(figsize=(size + 1, size))[1]
    # numbers only in the non-empty cells (and only when they fit)
    labels = np.where(cm > 0, np.vectorize(lambda v: f"{v:.2f}" if normalize else f"{v:.0f}")(cm), "")
    sns.heatmap(pd.DataFrame(cm, index=names, columns=names), ax=ax, cmap="viridis", vmin=0,
                vmax=1 if normalize else None, square=True, cbar_kws={"shrink": 0.7},
                annot=labels if len(used) <= 20 else False, fmt="", annot_kws={"fontsize": 6})
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true category")
    top1 = float((pred == predictions.category).mean()) if len(pred) else float("nan")
    ax.set_title(title or f"{predictions.model.upper()}: confusion on {predictions.split} (top-1 {top1:.3f})")
    ax.figure.tight_layout()
    return ax.figure


def plot_per_attribute_recall(frames: Mapping[str, pd.DataFrame], top: int = 25, ax=None):
    """Grouped bars of per-attribute recall for the ``top`` most frequent attributes (``{label: frame}``)."""
    labels = list(frames)
    base = frames[labels[0]]
    chosen = base[base["positives"] > 0].sort_values("positives", ascending=False).head(top)
    ax = ax or plt.subplots(figsize=(max(6, 0.35 * len(chosen) + 2), 3.6))[1]
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(chosen))
    for i, label in enumerate(labels):
        f = frames[label].set_index("attribute").loc[chosen["attribute"]]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, f["recall"], width,
               color=model_color(label), label=label.upper())
    ax.set_xticks(x)
    ax.set_xticklabels([f"{a} ({t[:3]})" for a, t in zip(chosen["attribute"], chosen["type"])], rotation=70,
                       ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("top-3 recall (within its type)")
    ax.set_title(f"Per-attribute recall, the {len(chosen)} most frequent attributes of the test split")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def plot_per_attribute_ap(frames: Mapping[str, pd.DataFrame], annotate: int = 5, ax=None):
    """Per-attribute AP of two runs against each other (``{label: frame}`` of
    :func:`vfu_nb.class_metrics.per_attribute_ap`: the first on the y axis), one dot per attribute coloured by
    type, the diagonal, and the ``annotate`` attributes with the largest difference named. The title counts the
    attributes above the diagonal."""
    (a, fa), (b, fb) = frames.items()
    both = fa.merge(fb[["attribute", "ap"]], on="attribute", suffixes=("_y", "_x"))
    both = both[np.isfinite(both["ap_y"]) & np.isfinite(both["ap_x"])]
    ax = ax or plt.subplots(figsize=(4.2, 4.2))[1]
    for t in ATTRIBUTE_TYPES:
        part = both[both["type"] == t]
        if len(part):
            ax.scatter(part["ap_x"], part["ap_y"], s=14, alpha=0.75, color=ATTRIBUTE_TYPE_COLORS[t], label=t)
    ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
    for _, r in ap_differences(frames, annotate).iterrows():
        ax.annotate(r.name, (r[f"{b.upper()} AP"], r[f"{a.upper()} AP"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{b.upper()} AP")
    ax.set_ylabel(f"{a.upper()} AP")
    above = int((both["ap_y"] > both["ap_x"]).sum())
    ax.set_title(f"Per-attribute AP: {a.upper()} higher on {above} of {len(both)}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.figure.tight_layout()
    return ax.figure


def plot_per_attribute(recall_frames: Mapping[str, pd.DataFrame], ap_frames: Mapping[str, pd.DataFrame],
                       top: int = 25):
    """Per-attribute recall of the most frequent attributes (bars) beside per-attribute AP of every attribute
    (scatter): :func:`plot_per_attribute_recall` and :func:`plot_per_attribute_ap` in one figure."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(6, 0.35 * top + 2) + 4.5, 4.2),
                                      gridspec_kw={"width_ratios": [max(6, 0.35 * top + 2), 4.2]})
    plot_per_attribute_recall(recall_frames, top, ax=left)
    plot_per_attribute_ap(ap_frames, ax=right)
    return fig
