"""MTL versus CAT (thesis sections 3.3 and 3.5): curves, relative improvements, Table 3.2, per-class views.

* :func:`plot_metric_curves` -- thesis figures 3.11 (top-3 category accuracy per epoch, both models) and 3.12
  (top-3 texture recall per epoch).
* :func:`improvement_table` -- the "+53% category accuracy, +149% attribute recall" computation of section 3.3
  redone on our runs: relative improvement = (MTL - CAT) / CAT of the best-epoch values. The thesis took each
  model's best **test** epoch per metric (0.8605 at epoch 3 vs 0.5621 at epoch 4; texture 0.5287 vs 0.2124).
  We select the epoch on **val** (top-3 category accuracy) and report test values there (``select="val"``);
  ``select="best"`` reproduces the thesis' rule.
* :func:`table_3_2` -- our top-3 category accuracy beside the published numbers
  (:data:`vfu_nb.conventions.PUBLISHED_CATEGORY_TOP3`, each with its paper).
* :func:`plot_confusion`, :func:`per_attribute_recall` -- need predictions of the best checkpoint on the test
  split (:func:`vfu_nb.runs.predict`).

Every sentence these helpers write is computed from the numbers they are given; none is fixed text about the
outcome.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vfu_nb.conventions import (
    ATTRIBUTE_TYPE_NAMES, ATTRIBUTE_TYPES, LOWER_IS_BETTER, MODEL_COLORS,
    PUBLISHED_ATTRIBUTE_TOP3, PUBLISHED_CATEGORY_TOP3, THESIS_IMPROVEMENTS, metric_label,
)
from vfu_nb.plots.curves import best_epoch_value, best_val_epoch, epoch_frame, load_history

# ----------------------------------------------------------------------------------------------------------
# Relative improvements


def relative_improvement(new: float, base: float) -> float:
    """(new - base) / base; nan when either is missing or base is 0."""
    if new is None or base is None or not (math.isfinite(new) and math.isfinite(base)) or base == 0:
        return float("nan")
    return (new - base) / base


def improvement_table(mtl, cat, metrics: Sequence[str] = ("category_top3", "attr_top3_texture",
                                                           "attr_top3_all_grouped"),
                      select: str = "val", split: str = "test") -> pd.DataFrame:
    """MTL vs CAT at their best epochs, with the thesis' numbers beside ours.

    ``mtl``, ``cat``: histories (dicts or run directories). ``select="val"``: each model's epoch with the best val
    top-3 category accuracy (ours); ``select="best"``: each model's best ``split`` epoch for each metric (the
    thesis' rule). Columns: ``MTL, MTL epoch, CAT, CAT epoch, difference, relative`` and, for the two metrics the
    thesis compares, ``thesis MTL, thesis CAT, thesis relative``.
    """
    rows = []
    for metric in metrics:
        lower = metric in LOWER_IS_BETTER
        em, vm = best_epoch_value(mtl, metric, split, select, higher_is_better=not lower)
        ec, vc = best_epoch_value(cat, metric, split, select, higher_is_better=not lower)
        row = {"metric": metric_label(metric), "MTL": vm, "MTL epoch": em, "CAT": vc, "CAT epoch": ec,
               "difference": vm - vc, "relative": relative_improvement(vm, vc)}
        th = THESIS_IMPROVEMENTS.get(metric)
        row["thesis MTL"] = th["mtl"] if th else float("nan")
        row["thesis CAT"] = th["cat"] if th else float("nan")
        row["thesis relative"] = relative_improvement(th["mtl"], th["cat"]) if th else float("nan")
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")


def format_relative(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.0%}"


# ----------------------------------------------------------------------------------------------------------
# Curves (thesis figures 3.11, 3.12)


def plot_metric_curves(histories: Mapping[str, object], metric: str = "category_top3", split: str = "test",
                       show_val: bool = True, ax=None, title: Optional[str] = None):
    """``metric`` per epoch for several runs (``{label: history or run dir}``); each run's best val epoch starred.

    Thesis Fig. 3.11 is ``metric="category_top3"``, Fig. 3.12 ``metric="attr_top3_texture"`` (test split; the
    thesis labels CAT "CAT+ATTR"). With ``show_val`` the val curve is drawn dotted.
    """
    ax = ax or plt.subplots(figsize=(6.5, 3.4))[1]
    n_max = 1
    for i, (label, hist) in enumerate(histories.items()):
        h = load_history(hist)
        color = MODEL_COLORS.get(label.lower(), plt.get_cmap("tab10")(i))
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
# Table 3.2


def table_3_2(ours: Mapping[str, Mapping], data: str = "this run's data", published=PUBLISHED_CATEGORY_TOP3,
              key: str = "category_top3") -> pd.DataFrame:
    """Our top-3 category accuracy (``{label: test metrics at the best val epoch}``) above the published ones.

    Columns: ``top-3 category accuracy, data, epoch selection, source``. Convention: :data:`vfu_nb.conventions.CATEGORY_CONVENTION`.
    Published rows are on DeepFashion-C; ours are on ``data`` (not comparable when that is the synthetic set).
    """
    rows = []
    for label, metrics in ours.items():
        v = metrics.get(key) if metrics else None
        rows.append({"method": f"ours: {label}", "top-3 category accuracy": float("nan") if v is None else float(v),
                     "data": data, "epoch selection": "best val epoch, reported on test",
                     "source": "this notebook"})
    for p in published:
        rows.append({"method": p["method"], "top-3 category accuracy": p["top3"], "data": "DeepFashion-C test",
                     "epoch selection": p["selection"], "source": p["source"]})
    return pd.DataFrame(rows).set_index("method")


def attribute_table(ours: Mapping[str, Mapping], published: Mapping[str, Mapping] = PUBLISHED_ATTRIBUTE_TOP3,
                    k: int = 3) -> pd.DataFrame:
    """Top-k recall per attribute type: our rows (``{label: test metrics}``) and the published ones (nan: none)."""
    rows = {f"ours: {label}": {t: _get(m, f"attr_top{k}_{t}") for t in ATTRIBUTE_TYPES} for label, m in ours.items()}
    rows.update({name: {t: vals.get(t, float("nan")) for t in ATTRIBUTE_TYPES} for name, vals in published.items()})
    return pd.DataFrame.from_dict(rows, orient="index")


def _get(m: Optional[Mapping], key: str) -> float:
    v = (m or {}).get(key)
    return float("nan") if v is None else float(v)


# ----------------------------------------------------------------------------------------------------------
# Per-class views (need predictions: vfu_nb.runs.predict)


def confusion_matrix(true, pred, num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of images of true class t predicted as p (top-1)."""
    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    return np.bincount(true * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes,
                                                                                               num_classes)


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


def per_attribute_recall(predictions, attribute_names: Sequence[str], k: int = 3) -> pd.DataFrame:
    """Top-k recall of every attribute, the top-k taken within its type (A1-group convention).

    Columns: ``attribute, type, positives, hits, recall``. Summing ``hits`` and ``positives`` over a type gives
    exactly that type's ``attr_top{k}_<type>`` metric. Attributes without positives have recall nan.
    """
    scores, labels = predictions.attribute_scores, predictions.attributes == 1
    types = np.asarray(predictions.attribute_types)
    hits = np.zeros(scores.shape[1], dtype=np.int64)
    for t in ATTRIBUTE_TYPE_NAMES:
        cols = np.flatnonzero(types == t)
        if cols.size == 0 or not len(scores):
            continue
        top = np.argsort(-scores[:, cols], axis=1, kind="stable")[:, :k]
        chosen = np.zeros((len(scores), cols.size), dtype=bool)
        np.put_along_axis(chosen, top, True, axis=1)
        hits[cols] = (chosen & labels[:, cols]).sum(axis=0)
    positives = labels.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(positives > 0, hits / np.maximum(positives, 1), np.nan)
    return pd.DataFrame({"attribute": list(attribute_names), "type": [ATTRIBUTE_TYPE_NAMES.get(int(t), "?")
                                                                       for t in types],
                         "positives": positives, "hits": hits, "recall": recall})


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
               color=MODEL_COLORS.get(label.lower(), plt.get_cmap("tab10")(i)), label=label.upper())
    ax.set_xticks(x)
    ax.set_xticklabels([f"{a} ({t[:3]})" for a, t in zip(chosen["attribute"], chosen["type"])], rotation=70,
                       ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("top-3 recall (within its type)")
    ax.set_title(f"Per-attribute recall, the {len(chosen)} most frequent attributes of the test split")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


# ----------------------------------------------------------------------------------------------------------
# Sentences computed from numbers


def comparison_sentence(mtl: float, cat: float, what: str = "top-3 category accuracy", data: str = "this data",
                        higher_is_better: bool = True) -> str:
    """'On <data> MTL's <what> is X vs CAT's Y (difference Z, relative R): <who> is better / they tie.'"""
    if mtl is None or cat is None or not (math.isfinite(mtl) and math.isfinite(cat)):
        return f"On {data} the {what} of MTL or CAT is missing; no comparison."
    diff = mtl - cat
    if diff == 0:
        verdict = "they tie"
    else:
        better = "MTL" if (diff > 0) == higher_is_better else "CAT"
        verdict = f"{better} is better on this single run (one seed: no interval, see notebook 05)"
    return (f"On {data} MTL's {what} is {mtl:.4f} vs CAT's {cat:.4f} (difference {diff:+.4f}, relative "
            f"{format_relative(relative_improvement(mtl, cat))}); {verdict}.")
