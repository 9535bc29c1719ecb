"""Exact evaluation metrics for DeepFashion-C (category, attributes, landmarks).

Every function accepts torch tensors or numpy arrays and returns plain Python floats, so the
results go straight into JSON. The conventions follow ``anchors_science.md`` section 6; the docstrings
name the published table each number is comparable with.

* :func:`category_topk_accuracy` -- top-k category accuracy, the "Category top-3 / top-5" columns of
  every DeepFashion-C table (FashionNet, AFGN, Liu & Lu).
* :func:`attribute_topk_recall` -- top-k attribute recall in three conventions:
  per type (**A1-group**, the Texture / Fabric / Shape / Part / Style columns of Liu & Lu's code),
  ``all_grouped`` (**A1-all-grouped**, pooled over the five types; most likely what the paper tables
  call "All") and ``all_strict`` (**A1-all strict**, top-k of all attributes; ~23% in reproductions of
  Liu & Lu's released code).
* :func:`landmark_normalized_error` -- normalised error (NE) per landmark and its unweighted mean over
  the 8 slots, as in Liu & Lu's landmark table (the "Avg" column).
* :class:`EvalAccumulator` -- gathers a whole split batch by batch and computes all of the above as a
  flat ``dict[str, float]``.

Ties between scores are broken towards the lower index (a stable descending sort), so results do not
depend on the backend's ``topk`` implementation.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

try:  # torch is optional for the pure metric functions
    import torch
except Exception:  # pragma: no cover - torch is always installed in this project
    torch = None

ATTRIBUTE_TYPE_NAMES = {1: "texture", 2: "fabric", 3: "shape", 4: "part", 5: "style"}
#: Short landmark names used in flat metric keys (slot order of conventions.md).
LANDMARK_KEYS = ("l_collar", "r_collar", "l_sleeve", "r_sleeve", "l_waist", "r_waist", "l_hem", "r_hem")

_CHUNK = 4096  # rows per argsort chunk (bounds memory for 40k x 1000 score matrices)


def _np(x, dtype=None) -> np.ndarray:
    """Torch tensor or array-like -> numpy array (detached, on the CPU)."""
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        x = x.cpu().numpy()
    a = np.asarray(x)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    return a


def _topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row (stable: ties go to the lower index), shape (N, k)."""
    n, m = scores.shape
    k = min(int(k), m)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, _CHUNK):
        block = scores[start:start + _CHUNK]
        out[start:start + _CHUNK] = np.argsort(-block, axis=1, kind="stable")[:, :k]
    return out


def category_topk_accuracy(logits, targets, k: int) -> float:
    """Top-k category accuracy: mean over images of ``1[target in top-k(logits)]``.

    Comparable with the "Category top-3 / top-5" columns of FashionNet, AFGN and Liu & Lu
    (anchors_science.md section 6.1; Liu & Lu average per batch, which is identical for full batches).
    mmfashion's per-class (macro) recall is a different number. Returns nan for an empty set.

    Args:
        logits: (N, C) scores (any monotone transform of the logits gives the same result).
        targets: (N,) integer class indices, 0-based.
        k: number of guesses; ``k >= C`` always counts as correct.
    """
    s = _np(logits, np.float32)
    t = _np(targets).astype(np.int64).reshape(-1)
    if s.ndim != 2 or s.shape[0] != t.shape[0]:
        raise ValueError(f"logits {s.shape} and targets {t.shape} do not match")
    if s.shape[0] == 0:
        return float("nan")
    top = _topk_indices(s, k)
    hit = (top == t[:, None]).any(axis=1)
    return float(hit.mean())


def attribute_topk_recall(scores, labels, attribute_types, k: int) -> dict:
    """Top-k attribute recall, pooled (micro) over images, in the three anchor-1 conventions.

    For each image the k highest-scoring attributes are "predicted"; recall = true positives /
    positives, both summed over all images before dividing.

    Keys of the result:

    * ``texture, fabric, shape, part, style`` -- **A1-group** (anchors_science.md section 6.2): top-k
      *within* the attributes of that type; TP_t / GT_t. These are the per-type columns of Liu & Lu's
      released code (their style numbers of ~68% are not reproduced by that code; ours is A1-group).
    * ``all_grouped`` -- **A1-all-grouped** (section 6.4): sum_t TP_t / sum_t GT_t, i.e. 5·k predictions per
      image; most likely the "All" column of the Liu & Lu / AFGN tables (inferred, not confirmed).
    * ``all_strict`` -- **A1-all strict** (section 6.3): top-k over *all* attributes / all positives
      (~23% at k=3 in reproductions of the released code).

    Args:
        scores: (N, A) attribute scores (logits or probabilities: ranking only).
        labels: (N, A); the value 1 marks a positive, anything else (0, -1, unknown) is not one, so
            both the ±1 file coding and 0/1 targets work.
        attribute_types: (A,) type id per attribute, 1..5 (texture, fabric, shape, part, style).
            Attributes of other types count only in ``all_strict``.
        k: number of predictions per image (per type for the grouped keys); a type with fewer than k
            attributes predicts all of them.

    A type (or the whole set) without positives gives nan.
    """
    s = _np(scores, np.float32)
    y = (_np(labels) == 1)
    types = _np(attribute_types).astype(np.int64).reshape(-1)
    if s.shape != y.shape or s.ndim != 2 or s.shape[1] != types.shape[0]:
        raise ValueError(f"scores {s.shape}, labels {y.shape}, attribute_types {types.shape} do not match")
    out: dict = {}
    tp_sum = 0
    gt_sum = 0
    for t, name in ATTRIBUTE_TYPE_NAMES.items():
        cols = np.flatnonzero(types == t)
        gt = int(y[:, cols].sum())
        if cols.size == 0 or s.shape[0] == 0:
            tp = 0
        else:
            top = _topk_indices(s[:, cols], k)  # indices into cols
            tp = int(np.take_along_axis(y[:, cols], top, axis=1).sum())
        out[name] = tp / gt if gt > 0 else float("nan")
        tp_sum += tp
        gt_sum += gt
    out["all_grouped"] = tp_sum / gt_sum if gt_sum > 0 else float("nan")
    gt_all = int(y.sum())
    if gt_all > 0 and s.shape[0] > 0:
        top = _topk_indices(s, k)
        out["all_strict"] = int(np.take_along_axis(y, top, axis=1).sum()) / gt_all
    else:
        out["all_strict"] = float("nan")
    return {key: float(v) for key, v in out.items()}


def landmark_normalized_error(pred, gt, visible) -> dict:
    """Landmark normalised error (NE), Liu & Lu's convention (anchors_science.md section 6.7).

    Coordinates are in crop units (x / crop width, y / crop height, 0..1), so the distance is normalised
    separately by the bounding-box width and height, as in the published NE tables.
    ``NE_l = sum_i v_il * ||p_il - g_il||_2 / sum_i v_il`` and ``mean = (1/L') sum_l NE_l`` over the L'
    landmarks that are visible in at least one image (the unweighted mean of the per-landmark values, the
    "Avg" column of Liu & Lu's landmark table).

    Args:
        pred, gt: (N, L, 2) coordinates in crop units.
        visible: (N, L) boolean / 0-1 mask, true where the landmark counts (raw visibility 0 *and* inside
            the crop, i.e. ``landmark_visibility == 0`` of the dataset). Passing the visibility *codes*
            themselves is refused (values other than 0/1).

    Returns:
        ``{"per_landmark": [L floats, nan where never visible], "mean": float (nan if no data)}``
    """
    p = _np(pred, np.float64)
    g = _np(gt, np.float64)
    v = _np(visible)
    if v.dtype != np.bool_:
        vals = np.unique(v)
        if not np.all(np.isin(vals, (0, 1))):
            raise ValueError("visible must be a 0/1 mask (e.g. landmark_visibility == 0), "
                             f"got values {vals[:6].tolist()}")
        v = v.astype(bool)
    if p.shape != g.shape or p.ndim != 3 or p.shape[:2] != v.shape:
        raise ValueError(f"pred {p.shape}, gt {g.shape}, visible {v.shape} do not match")
    dist = np.sqrt(((p - g) ** 2).sum(axis=2))  # (N, L)
    count = v.sum(axis=0)
    total = np.where(v, dist, 0.0).sum(axis=0)
    per = [float(total[l] / count[l]) if count[l] > 0 else float("nan") for l in range(p.shape[1])]
    finite = [x for x in per if not math.isnan(x)]
    mean = float(np.mean(finite)) if finite else float("nan")
    return {"per_landmark": per, "mean": mean}


class EvalAccumulator:
    """Collects predictions over a split and computes every metric at once.

    >>> acc = EvalAccumulator(attribute_types)           # doctest: +SKIP
    >>> for batch in loader:                             # doctest: +SKIP
    ...     acc.update(category_logits=..., category=..., attribute_logits=..., attributes=...,
    ...                landmarks_pred=..., landmarks=..., landmark_visibility=...)
    >>> acc.compute()                                    # flat dict of floats (nan where undefined)

    Keys: ``category_top{1,3,5}``; ``attr_top{3,5}_{texture,fabric,shape,part,style,all_grouped,all_strict}``;
    ``landmark_ne_mean`` and ``landmark_ne_{l_collar,...,r_hem}`` (nan when no landmark predictions were
    given, e.g. for the ``cat`` model); ``n_images``.
    Attribute labels: 1 positive, anything else not (0/1 targets or ±1 codes).
    Landmarks count where ``landmark_visibility == 0`` (the dataset sets 2 outside the crop).
    """

    def __init__(self, attribute_types, category_ks: Sequence[int] = (1, 3, 5),
                 attribute_ks: Sequence[int] = (3, 5), num_landmarks: int = 8):
        self.attribute_types = _np(attribute_types).astype(np.int64).reshape(-1)
        self.category_ks = tuple(category_ks)
        self.attribute_ks = tuple(attribute_ks)
        self.num_landmarks = num_landmarks
        self.reset()

    def reset(self) -> None:
        self._cat_logits: list = []
        self._cat: list = []
        self._attr_scores: list = []
        self._attr: list = []
        self._lm_pred: list = []
        self._lm_gt: list = []
        self._lm_vis: list = []

    def update(self, category_logits, category, attribute_logits=None, attributes=None,
               landmarks_pred=None, landmarks=None, landmark_visibility=None) -> None:
        self._cat_logits.append(_np(category_logits, np.float32))
        self._cat.append(_np(category).astype(np.int64).reshape(-1))
        if attribute_logits is not None:
            self._attr_scores.append(_np(attribute_logits, np.float32))
            self._attr.append(_np(attributes, np.float32))
        if landmarks_pred is not None:
            self._lm_pred.append(_np(landmarks_pred, np.float32))
            self._lm_gt.append(_np(landmarks, np.float32))
            self._lm_vis.append(_np(landmark_visibility).astype(np.int64) == 0)

    def __len__(self) -> int:
        return int(sum(len(c) for c in self._cat))

    def compute(self) -> dict:
        nan = float("nan")
        out: dict = {"n_images": float(len(self))}
        logits = np.concatenate(self._cat_logits) if self._cat_logits else np.zeros((0, 1), np.float32)
        cats = np.concatenate(self._cat) if self._cat else np.zeros((0,), np.int64)
        for k in self.category_ks:
            out[f"category_top{k}"] = category_topk_accuracy(logits, cats, k)
        if self._attr_scores:
            scores = np.concatenate(self._attr_scores)
            labels = np.concatenate(self._attr)
            for k in self.attribute_ks:
                rec = attribute_topk_recall(scores, labels, self.attribute_types, k)
                for name, val in rec.items():
                    out[f"attr_top{k}_{name}"] = val
        else:
            for k in self.attribute_ks:
                for name in list(ATTRIBUTE_TYPE_NAMES.values()) + ["all_grouped", "all_strict"]:
                    out[f"attr_top{k}_{name}"] = nan
        names = _landmark_keys(self.num_landmarks)
        if self._lm_pred:
            ne = landmark_normalized_error(np.concatenate(self._lm_pred), np.concatenate(self._lm_gt),
                                           np.concatenate(self._lm_vis))
            out["landmark_ne_mean"] = ne["mean"]
            for name, val in zip(names, ne["per_landmark"]):
                out[f"landmark_ne_{name}"] = val
        else:
            out["landmark_ne_mean"] = nan
            for name in names:
                out[f"landmark_ne_{name}"] = nan
        return out


def _landmark_keys(n: int) -> tuple:
    return LANDMARK_KEYS if n == len(LANDMARK_KEYS) else tuple(f"lm{i}" for i in range(n))


def metric_keys(num_landmarks: int = 8, category_ks: Iterable[int] = (1, 3, 5),
                attribute_ks: Iterable[int] = (3, 5)) -> list:
    """The keys :meth:`EvalAccumulator.compute` returns, in order."""
    keys = ["n_images"] + [f"category_top{k}" for k in category_ks]
    for k in attribute_ks:
        keys += [f"attr_top{k}_{n}" for n in list(ATTRIBUTE_TYPE_NAMES.values()) + ["all_grouped", "all_strict"]]
    keys += ["landmark_ne_mean"] + [f"landmark_ne_{n}" for n in _landmark_keys(num_landmarks)]
    return keys


def chance_levels(attribute_labels, attribute_types, num_categories: int, k_cat: int = 3, k_attr: int = 3) -> dict:
    """Expected metrics of a random ranking (for "far above chance" checks).

    Category top-k: k / C. Attribute recall of a random top-k within a group of size n: min(k, n) / n;
    ``all_strict``: k / A; ``all_grouped``: positive-weighted mean of the group values.
    """
    y = (_np(attribute_labels) == 1)
    types = _np(attribute_types).astype(np.int64).reshape(-1)
    out = {"category": min(k_cat, num_categories) / num_categories}
    tp = gt = 0.0
    for t, name in ATTRIBUTE_TYPE_NAMES.items():
        n = int((types == t).sum())
        pos = float(y[:, types == t].sum())
        r = min(k_attr, n) / n if n else float("nan")
        out[name] = r
        if n:
            tp += r * pos
            gt += pos
    out["all_grouped"] = tp / gt if gt else float("nan")
    out["all_strict"] = min(k_attr, len(types)) / len(types)
    return out


def jsonable(obj):
    """Recursively convert to plain JSON types: numpy/torch scalars -> float/int, non-finite -> None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if torch is not None and isinstance(obj, torch.Tensor):
        obj = obj.item() if obj.numel() == 1 else obj.tolist()
        return jsonable(obj)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj
