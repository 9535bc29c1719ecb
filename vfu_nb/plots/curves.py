"""Training-curve figures of one run (thesis section 3.2.1, figures 3.3-3.9, Table 3.1), from ``history.json``.

Every function takes a run's history (the dict in ``<run_dir>/history.json``, or the run directory itself),
so the figures can be redrawn at any time without retraining. The layout of ``history.json``
(:func:`vfu_nb.training.loop.train`): ``batches`` holds one entry per optimiser step (``epoch``, ``batch``, ``step``
and the *unweighted* loss terms ``category``, ``attribute``, ``landmark`` and the weighted ``total``);
``epochs`` holds one record per epoch with the ``val`` and ``test`` metrics (:mod:`vfu_nb.metrics`).

Thesis figure                          function
-------------------------------------  ------------------------------------------------------------
3.3 category loss per batch            ``plot_batch_loss(h, "category")``
3.4 top-3 category accuracy per epoch  ``plot_category_accuracy(h)`` (val and test; the thesis had test only)
3.5 attribute loss per batch           ``plot_batch_loss(h, "attribute")``
3.6 top-3 attribute recall per type    ``plot_attribute_recall(h)``; beside it ``plot_attribute_map(h)`` (attribute
                                       mAP per type, no thesis figure); both panels: ``plot_attribute_curves(h)``
3.8 landmark loss per batch            ``plot_batch_loss(h, "landmark")``
3.9 landmark distance per epoch        ``plot_landmark_error(h)`` (normalised error, lower is better)
Table 3.1 best recall per type         ``table_3_1(h)``

Baselines: every epoch figure takes ``baselines`` (``{name: flat metrics}``, as
:func:`vfu_nb.baselines.compute_baselines` returns them) and draws the ones that make its metric readable as
labelled horizontal lines (:data:`REFERENCE_BASELINES`, :func:`reference_lines`): class prior and geometry-only
on category accuracy, the attribute prior given the true category on attribute recall and mAP, the mean landmark
positions on the landmark error.

Epoch selection: the thesis picked the epoch with the best **test** value ("early stopping after the third
epoch"). We select the epoch with the best **val** top-3 category accuracy and report test metrics at that
epoch (:func:`best_val_epoch`); Table 3.1 shows both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vfu_nb.conventions import ATTRIBUTE_TYPE_COLORS, ATTRIBUTE_TYPES, LOSS_TERMS, THESIS_TABLE_3_1
from vfu_nb.metrics import MAP_GROUPS

SELECT_METRIC = "category_top3"

_FIGURE_OF_TERM = {"category": "3.3", "attribute": "3.5", "landmark": "3.8", "total": None}
_SPLIT_STYLE = {"val": dict(ls="--", marker="s"), "test": dict(ls="-", marker="o")}

#: Readable names of the baselines of :mod:`vfu_nb.baselines`.
BASELINE_LABELS = {
    "chance": "chance",
    "class_prior": "class prior",
    "attribute_prior": "attribute prior",
    "attribute_prior_given_category": "attribute prior given the true category",
    "geometry_knn": "geometry only (k-NN on true landmarks)",
    "mean_landmarks": "mean landmark positions",
}
#: Line style of each baseline's reference line.
BASELINE_STYLES = {"chance": (0, (1, 3)), "class_prior": "--", "attribute_prior": "--",
                   "attribute_prior_given_category": ":", "geometry_knn": "-.", "mean_landmarks": "--"}
#: The baselines drawn on each kind of metric (by key prefix): the ones a model has to beat to mean something.
REFERENCE_BASELINES = {"category_top": ("class_prior", "geometry_knn"),
                       "attr_": ("attribute_prior_given_category",),
                       "landmark_ne": ("mean_landmarks",)}


# ----------------------------------------------------------------------------------------------------------
# Reading


def load_history(source) -> dict:
    """``source``: a history dict (returned as is), a run directory or a ``history.json`` path."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "history.json"
    return json.loads(path.read_text())


def _float(v) -> float:
    return float("nan") if v is None else float(v)


def batch_frame(history) -> pd.DataFrame:
    """One row per optimiser step: ``step, epoch, batch, category, attribute, landmark, total, epoch_pos``.

    ``epoch_pos`` places a batch on the epoch axis: ``epoch - 1 + batch / batches_in_that_epoch``, so batch b
    of epoch e sits in (e-1, e].
    """
    h = load_history(history)
    b = h["batches"]
    frame = pd.DataFrame({k: b.get(k, []) for k in ("step", "epoch", "batch", *LOSS_TERMS)})
    for t in LOSS_TERMS:
        frame[t] = pd.to_numeric(frame[t], errors="coerce").astype(float)
    if len(frame):
        per_epoch = frame.groupby("epoch")["batch"].transform("max")
        frame["epoch_pos"] = frame["epoch"] - 1 + frame["batch"] / per_epoch
    else:
        frame["epoch_pos"] = pd.Series(dtype=float)
    return frame


def epoch_frame(history, split: str = "test") -> pd.DataFrame:
    """Metrics of ``split`` (``val``, ``test`` or ``train`` losses) per epoch, indexed by epoch (nulls -> nan)."""
    h = load_history(history)
    rows = {int(e["epoch"]): {k: _float(v) for k, v in (e.get(split) or {}).items()} for e in h["epochs"]}
    frame = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    frame.index.name = "epoch"
    return frame


def moving_average(values, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start); same length as ``values``.

    NaNs are skipped (a window of only NaNs gives NaN).
    """
    x = np.asarray(values, dtype=float)
    if window < 1:
        raise ValueError("window must be >= 1")
    ok = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, len(x) + 1)
    lo = np.maximum(0, hi - window)
    count = ccount[hi] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[hi] - csum[lo]) / np.maximum(count, 1), np.nan)


def default_window(history) -> int:
    """Moving-average window: a fifth of an epoch's batches (at least 1, at most 200)."""
    frame = batch_frame(history)
    if not len(frame):
        return 1
    per_epoch = int(frame.groupby("epoch")["batch"].max().median())
    return int(min(200, max(1, per_epoch // 5)))


def best_val_epoch(history, metric: str = SELECT_METRIC) -> int | None:
    """The epoch the trainer selects: the first epoch with the highest ``val`` ``metric`` (None if all nan)."""
    val = epoch_frame(history, "val")
    if metric not in val or not np.isfinite(val[metric]).any():
        return None
    return int(val[metric].idxmax())


def best_epoch_value(history, metric: str, split: str = "test", select: str = "val",
                     higher_is_better: bool = True) -> tuple:
    """(epoch, value) of ``metric`` on ``split`` under an epoch-selection rule.

    ``select="val"`` (ours): the epoch with the best val top-3 category accuracy, the same epoch for every metric.
    ``select="best"`` (thesis-style): the epoch with the best value of ``metric`` itself on ``split``, chosen
    separately per metric and per model (optimistic when ``split`` is test).
    """
    frame = epoch_frame(history, split)
    if metric not in frame or not np.isfinite(frame[metric]).any():
        return None, float("nan")
    if select == "val":
        epoch = best_val_epoch(history)
        if epoch is None:
            return None, float("nan")
    elif select == "best":
        col = frame[metric]
        epoch = int(col.idxmax() if higher_is_better else col.idxmin())
    else:
        raise ValueError(f"select must be 'val' or 'best', got {select!r}")
    return epoch, float(frame.at[epoch, metric])


# ----------------------------------------------------------------------------------------------------------
# Baselines as reference lines


def baseline_label(name: str, metrics=None) -> str:
    """A readable name of baseline ``name``; the geometry-only k-NN names its k when ``metrics`` has ``knn_k``."""
    text = BASELINE_LABELS.get(name, name.replace("_", " "))
    k = _float((metrics or {}).get("knn_k"))
    if name == "geometry_knn" and math.isfinite(k):
        text = text[:-1] + f", k = {int(k)})"
    return text


def reference_baselines(metric: str) -> tuple:
    """The baselines drawn on ``metric`` (:data:`REFERENCE_BASELINES`; none for other metrics)."""
    return next((names for prefix, names in REFERENCE_BASELINES.items() if metric.startswith(prefix)), ())


def reference_lines(ax, baselines, metric: str, names=None, color="0.3", label_prefix: str = "") -> list:
    """Horizontal lines at each baseline's ``metric`` value, labelled "<prefix><baseline>: <value>".

    ``baselines``: ``{name: flat metrics}`` (None or {} draws nothing); ``names``: which ones (default
    :func:`reference_baselines` of ``metric``). Baselines without a finite value are skipped. Returns the lines.
    """
    lines = []
    for name in (names if names is not None else reference_baselines(metric)):
        metrics = (baselines or {}).get(name) or {}
        value = _float(metrics.get(metric))
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


# ----------------------------------------------------------------------------------------------------------
# Tables and summaries


def table_3_1(history, k: int = 3, published: Mapping[str, float] | None = THESIS_TABLE_3_1,
              baselines=None) -> pd.DataFrame:
    """Top-k recall per attribute type (thesis Table 3.1) with both epoch-selection rules, and attribute mAP.

    Columns: ``ours: test @ best val epoch`` (what we report), ``ours: best test epoch`` (the thesis' rule:
    the highest test value of each type, over all epochs), ``best test epoch``, ``ours: mAP @ best val epoch``
    and, when ``published`` is given, ``thesis MTL (DeepFashion-C)``. With ``baselines``: the recall and mAP of
    the attribute prior given the true category (``prior | category: recall``, ``prior | category: mAP``).
    The last row is the pooled A1-all-grouped recall beside the mAP over all attributes (no thesis number).
    """
    prior = (baselines or {}).get("attribute_prior_given_category") or {}
    rows = []
    for t, group in zip((*ATTRIBUTE_TYPES, "all_grouped"), MAP_GROUPS):
        metric = f"attr_top{k}_{t}"
        _, ours = best_epoch_value(history, metric, "test", "val")
        e_best, best = best_epoch_value(history, metric, "test", "best")
        row = {"type": t.replace("_", " "), "ours: test @ best val epoch": ours, "ours: best test epoch": best,
               "best test epoch": e_best,
               "ours: mAP @ best val epoch": best_epoch_value(history, f"attr_map_{group}", "test", "val")[1]}
        if published is not None:
            row["thesis MTL (DeepFashion-C)"] = published.get(t, float("nan"))
        if baselines is not None:
            row["prior | category: recall"] = _float(prior.get(metric))
            row["prior | category: mAP"] = _float(prior.get(f"attr_map_{group}"))
        rows.append(row)
    return pd.DataFrame(rows).set_index("type")


def run_summary(history, k: int = 3) -> dict:
    """Plain numbers of a run for a notebook's metrics.json: best val epoch, its test metrics, curve lengths."""
    h = load_history(history)
    epoch = best_val_epoch(h)
    test = epoch_frame(h, "test")
    val = epoch_frame(h, "val")

    def at(frame, key):
        v = frame.at[epoch, key] if epoch is not None and key in frame else float("nan")
        return None if not math.isfinite(v) else float(v)

    keys = [f"category_top{k}", *(f"attr_top{k}_{t}" for t in ATTRIBUTE_TYPES), f"attr_top{k}_all_grouped",
            *(f"attr_map_{g}" for g in MAP_GROUPS), "landmark_ne_mean"]
    return {"epochs": len(h["epochs"]), "batches": len(h["batches"]["step"]), "best_val_epoch": epoch,
            "val": {key: at(val, key) for key in keys}, "test": {key: at(test, key) for key in keys}}
