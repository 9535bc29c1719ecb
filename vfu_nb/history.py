"""A run's history (``history.json``): reading it, its batches and epochs as frames, epoch selection, Table 3.1.

Every function takes a run's history (the dict in ``<run_dir>/history.json``, or the run directory itself).
The layout of ``history.json`` (:func:`vfu_nb.training.loop.train`): ``batches`` holds one entry per optimiser
step (``epoch``, ``batch``, ``step`` and the *unweighted* loss terms ``category``, ``attribute``, ``landmark`` and
the weighted ``total``); ``epochs`` holds one record per epoch with the ``val`` and ``test`` metrics
(:mod:`vfu_nb.metrics`).

Epoch selection: the thesis picked the epoch with the best **test** value ("early stopping after the third
epoch"). We select the epoch with the best **val** top-3 category accuracy and report test metrics at that
epoch (:func:`best_val_epoch`); :func:`table_3_1` (thesis Table 3.1, best recall per attribute type) shows both.
The figures drawn from a history are in :mod:`vfu_nb.plots.curves`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from vfu_nb.conventions import ATTRIBUTE_TYPES, LOSS_TERMS, THESIS_TABLE_3_1
from vfu_nb.metrics import MAP_GROUPS

SELECT_METRIC = "category_top3"


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
