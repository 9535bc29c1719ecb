"""Per-class and per-attribute metrics of one run's predictions on a split (:func:`vfu_nb.training.runs.predict`).

* :func:`confusion_matrix` -- top-1 counts of true class against predicted class;
* :func:`per_attribute_recall` -- top-k recall of every attribute within its type (summed over a type: the run's
  ``attr_top{k}_<type>``);
* :func:`per_attribute_ap` -- average precision of every attribute (averaged: the run's ``attr_map_<type>``);
* :func:`ap_differences` -- the attributes whose AP differs most between two runs.

The split-level metrics these add up to are in :mod:`vfu_nb.metrics`; the figures of them in
:mod:`vfu_nb.plots.compare`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from vfu_nb.conventions import ATTRIBUTE_TYPE_NAMES
from vfu_nb.metrics import average_precision

def confusion_matrix(true, pred, num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of images of true class t predicted as p (top-1)."""
    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    return np.bincount(true * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes,
                                                                                               num_classes)


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


def per_attribute_ap(predictions, attribute_names: Sequence[str]) -> pd.DataFrame:
    """Average precision of every attribute over the split (:func:`vfu_nb.metrics.average_precision`, unknown
    labels left out): columns ``attribute, type, positives, ap`` (nan without a known positive). The mean of
    ``ap`` per type and overall (nan left out) is the run's ``attr_map_<type>`` and ``attr_map_all``."""
    labels = predictions.attributes == 1
    known = getattr(predictions, "attributes_known", None)
    known = np.ones_like(labels) if known is None else np.asarray(known, dtype=bool)
    ap = average_precision(predictions.attribute_scores, labels, known)
    types = np.asarray(predictions.attribute_types)
    return pd.DataFrame({"attribute": list(attribute_names),
                         "type": [ATTRIBUTE_TYPE_NAMES.get(int(t), "?") for t in types],
                         "positives": (labels & known).sum(axis=0), "ap": ap})


def ap_differences(frames: Mapping[str, pd.DataFrame], top: int = 10) -> pd.DataFrame:
    """The ``top`` attributes whose AP differs most between the two runs of ``frames`` (``{label: frame of
    per_attribute_ap}``, first minus second), largest absolute difference first."""
    (a, fa), (b, fb) = frames.items()
    joined = fa.merge(fb[["attribute", "ap"]], on="attribute", suffixes=(f" {a}", f" {b}"))
    joined = joined.rename(columns={f"ap {a}": f"{a.upper()} AP", f"ap {b}": f"{b.upper()} AP"})
    joined["difference"] = joined[f"{a.upper()} AP"] - joined[f"{b.upper()} AP"]
    joined = joined[np.isfinite(joined["difference"])]
    order = joined["difference"].abs().sort_values(ascending=False, kind="stable").index
    return joined.loc[order].head(top).set_index("attribute")
