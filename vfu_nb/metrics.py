"""Exact evaluation metrics for DeepFashion-C (category, attributes, landmarks).

Every function accepts torch tensors (on any device) or numpy arrays and returns plain Python floats or
numpy arrays, so the results go straight into JSON. ``docs/metrics.md`` defines each number and names the
published tables it is comparable with.

* :func:`category_topk_accuracy` -- top-k category accuracy (FashionNet, Liu et al., CVPR 2016; AFGN, Wang
  et al., CVPR 2018; Liu & Lu, ECCV Workshops 2018).
* :func:`attribute_topk_recall` -- top-k attribute recall pooled over images: per type (**A1-group**, the
  per-type columns of Liu & Lu's released code), ``all_grouped`` (**A1-all-grouped**, the five types pooled)
  and ``all_strict`` (**A1-all strict**, top-k of all attributes).
* :func:`average_precision` -- per-attribute average precision, exactly scikit-learn's
  ``average_precision_score``; unknown labels left out. :class:`ResampledAveragePrecision` computes the
  same on bootstrap resamples of the images without sorting again.
* :func:`landmark_normalized_error` -- normalised error (NE) per landmark in crop units and the unweighted
  mean over the landmarks (Liu & Lu's "Avg").
* :class:`EvalAccumulator` -- gathers a split batch by batch (model outputs stay on their device) and
  computes all of the above as one flat ``dict[str, float]``.

Ties between scores are broken towards the lower index (as a stable descending sort would), so results do
not depend on the backend's ``topk``. Top-k uses ``topk`` values plus comparisons, never a full sort.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from vfu_nb.conventions import ATTRIBUTE_TYPE_NAMES, LANDMARK_KEYS

RECALL_GROUPS = tuple(ATTRIBUTE_TYPE_NAMES.values()) + ("all_grouped", "all_strict")
MAP_GROUPS = tuple(ATTRIBUTE_TYPE_NAMES.values()) + ("all",)

ROW_CHUNK = 8192     # images per block in top-k counting (bounds the N x A temporaries)
COLUMN_CHUNK = 128   # attributes per block in average precision (one sort per block)


# ---------------------------------------------------------------------------------------------------------
# Inputs


def _tensor(x, device=None) -> torch.Tensor:
    """Torch tensor (kept on its device unless ``device`` is given) or array-like -> detached tensor.

    Half precision becomes float32 (an exact, order-preserving conversion)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t if device is None else t.to(device)


def _scores(x, device=None) -> torch.Tensor:
    t = _tensor(x, device)
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _positives(labels, device=None) -> torch.Tensor:
    """Labels -> bool positives: 1 is a positive, anything else (0, -1, unknown) is not."""
    t = _tensor(labels, device)
    return t if t.dtype == torch.bool else t == 1


# ---------------------------------------------------------------------------------------------------------
# Category


def category_ranks(scores, targets) -> torch.Tensor:
    """0-based rank of each image's target among its scores (ties to the lower index), int64 (N,)."""
    s = _scores(scores)
    t = _tensor(targets, s.device).long().reshape(-1)
    if s.ndim != 2 or s.shape[0] != t.shape[0]:
        raise ValueError(f"logits {tuple(s.shape)} and targets {tuple(t.shape)} do not match")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= s.shape[1]):
        raise ValueError(f"targets must be class indices 0..{s.shape[1] - 1}, got {int(t.min())}..{int(t.max())}")
    column = torch.arange(s.shape[1], device=s.device)
    ranks = []
    for start in range(0, s.shape[0], ROW_CHUNK):
        block, target = s[start:start + ROW_CHUNK], t[start:start + ROW_CHUNK, None]
        own = block.gather(1, target)
        above = (block > own).sum(1, dtype=torch.int32)
        tied_before = ((block == own) & (column < target)).sum(1, dtype=torch.int32)
        ranks.append((above + tied_before).long())
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=s.device)


def category_metrics(scores, targets, ks: Sequence[int] = (1, 3, 5)) -> dict:
    """``{"category_top<k>": accuracy}`` for each k (nan for an empty set)."""
    ranks = category_ranks(scores, targets)
    n = ranks.numel()
    return {f"category_top{k}": (int((ranks < k).sum()) / n if n else float("nan")) for k in ks}


def category_topk_accuracy(logits, targets, k: int) -> float:
    """Top-k category accuracy: mean over images of ``1[target in top-k(logits)]``.

    Comparable with the "Category top-3 / top-5" columns of FashionNet, AFGN and Liu & Lu (Liu & Lu
    average per batch, identical for full batches). mmfashion's per-class (macro) recall is a different
    number. Returns nan for an empty set.

    Args:
        logits: (N, C) scores (any monotone transform of the logits gives the same result).
        targets: (N,) integer class indices, 0-based.
        k: number of guesses; ``k >= C`` always counts as correct.
    """
    return category_metrics(logits, targets, (k,))[f"category_top{k}"]


# ---------------------------------------------------------------------------------------------------------
# Attribute top-k recall


def _kth_largest(x: torch.Tensor, columns: Optional[torch.Tensor], kths: Sequence[int]) -> torch.Tensor:
    """Column j: the ``kths[j]``-th largest value of each row of ``x[:, columns]`` (1-based, counting repeats).

    ``topk`` on wide rows or off the CPU; on narrow CPU rows numpy's introselect (``partition``), where
    torch's ``topk`` falls back to a slow full selection."""
    width = x.shape[1] if columns is None else columns.numel()
    kmax, index = max(kths), [k - 1 for k in kths]
    if _on_host(x) and width < 64 * kmax:
        a = x.numpy() if columns is None else x.index_select(1, columns).numpy()
        a = -a if columns is None else np.negative(a, out=a)      # partition selects the smallest
        top = -np.sort(np.partition(a, kmax - 1, axis=1)[:, :kmax], axis=1)
        return torch.from_numpy(top[:, index])
    sub = x if columns is None else x[:, columns]
    return sub.topk(kmax, dim=1).values[:, index]


def _topk_hits(scores: torch.Tensor, columns: Optional[torch.Tensor], positives: torch.Tensor, rows: torch.Tensor,
               positive_scores: torch.Tensor, ks: Sequence[int]) -> dict:
    """``{k: positives among each row's top-k of scores[:, columns], summed over rows}``, ties to the lower index.

    ``rows`` and ``positive_scores`` list the positives of those columns sparsely (row index and score);
    the dense ``positives`` mask is only read for rows whose ties at the k-th value overflow k.
    """
    n = scores.shape[0]
    m = scores.shape[1] if columns is None else columns.numel()
    hits = {k: int(rows.numel()) for k in ks if k >= m}       # every attribute is predicted
    inner = [k for k in ks if k < m]
    if n == 0 or not inner:
        return {k: hits.get(k, 0) for k in ks}
    kths = sorted({j for k in inner for j in (k, k + 1)})
    values = _kth_largest(scores, columns, kths)
    for k in inner:
        kth, next_value = values[:, kths.index(k)], values[:, kths.index(k + 1)]
        hits[k] = int((positive_scores >= kth[rows]).sum())
        over = (next_value == kth).nonzero().reshape(-1)      # more than k scores reach the k-th value
        if over.numel():
            s, p = scores[over], positives[over]
            if columns is not None:
                s, p = s[:, columns], p[:, columns]
            v = kth[over, None]
            above, tied = s > v, s == v
            room = k - above.sum(1, keepdim=True, dtype=torch.int32)
            taken = above | (tied & (tied.cumsum(1, dtype=torch.int32) <= room))
            hits[k] += int((taken & p).sum()) - int(((s >= v) & p).sum())
    return {k: hits[k] for k in ks}


def _type_columns(types: torch.Tensor) -> dict:
    return {t: (types == t).nonzero().reshape(-1) for t in ATTRIBUTE_TYPE_NAMES}


def attribute_recalls(scores, labels, attribute_types, ks: Sequence[int] = (3, 5)) -> dict:
    """``{"attr_top<k>_<group>": recall}`` for every k and group of :data:`RECALL_GROUPS`.

    See :func:`attribute_topk_recall` for the conventions. Rows are processed in blocks of
    :data:`ROW_CHUNK` images, so memory stays bounded for any split size.
    """
    s = _scores(scores)
    pos = _positives(labels, s.device)
    types = _tensor(attribute_types, s.device).long().reshape(-1)
    if s.shape != pos.shape or s.ndim != 2 or s.shape[1] != types.shape[0]:
        raise ValueError(f"scores {tuple(s.shape)}, labels {tuple(pos.shape)}, attribute_types "
                         f"{tuple(types.shape)} do not match")
    columns = _type_columns(types)
    groups = (*ATTRIBUTE_TYPE_NAMES, "all_strict")
    tp = {(g, k): 0 for g in groups for k in ks}
    gt = {g: 0 for g in groups}
    for start in range(0, s.shape[0], ROW_CHUNK):
        block, block_pos = s[start:start + ROW_CHUNK], pos[start:start + ROW_CHUNK]
        rows, cols = block_pos.nonzero(as_tuple=True)
        row_scores, col_types = block[rows, cols], types[cols]
        for t, type_cols in columns.items():
            of_type = col_types == t
            gt[t] += int(of_type.sum())
            for k, h in _topk_hits(block, type_cols, block_pos, rows[of_type], row_scores[of_type], ks).items():
                tp[t, k] += h
        gt["all_strict"] += int(rows.numel())
        for k, h in _topk_hits(block, None, block_pos, rows, row_scores, ks).items():
            tp["all_strict", k] += h

    def ratio(a, b):
        return a / b if b > 0 else float("nan")

    out = {}
    gt_grouped = sum(gt[t] for t in ATTRIBUTE_TYPE_NAMES)
    for k in ks:
        for t, name in ATTRIBUTE_TYPE_NAMES.items():
            out[f"attr_top{k}_{name}"] = ratio(tp[t, k], gt[t])
        out[f"attr_top{k}_all_grouped"] = ratio(sum(tp[t, k] for t in ATTRIBUTE_TYPE_NAMES), gt_grouped)
        out[f"attr_top{k}_all_strict"] = ratio(tp["all_strict", k], gt["all_strict"])
    return out


def attribute_topk_recall(scores, labels, attribute_types, k: int) -> dict:
    """Top-k attribute recall, pooled (micro) over images, in the three conventions of Liu & Lu's code.

    For each image the k highest-scoring attributes are "predicted"; recall = true positives /
    positives, both summed over all images before dividing.

    Keys of the result:

    * ``texture, fabric, shape, part, style`` -- **A1-group**: top-k *within* the attributes of that type;
      TP_t / GT_t (the per-type columns of Liu & Lu's released code).
    * ``all_grouped`` -- **A1-all-grouped**: sum_t TP_t / sum_t GT_t, i.e. 5·k predictions per image; most
      likely the "All" column of the published tables.
    * ``all_strict`` -- **A1-all strict**: top-k over *all* attributes / all positives.

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
    rec = attribute_recalls(scores, labels, attribute_types, (k,))
    return {name: rec[f"attr_top{k}_{name}"] for name in RECALL_GROUPS}


# ---------------------------------------------------------------------------------------------------------
# Attribute average precision


def _on_host(x: torch.Tensor) -> bool:
    """Whether numpy kernels may run on ``x`` (it is on the CPU); other devices use torch's."""
    return x.device.type == "cpu"


def _sort_rows_(x: torch.Tensor) -> None:
    """Sort each row of a contiguous 2-D tensor ascending, in place.

    On the CPU numpy's vectorised sort runs on row slices in threads (it releases the GIL); elsewhere
    ``torch.sort`` on blocks of :data:`COLUMN_CHUNK` rows."""
    if not _on_host(x):
        for start in range(0, x.shape[0], COLUMN_CHUNK):
            block = x[start:start + COLUMN_CHUNK]
            block.copy_(torch.sort(block, dim=1).values)
        return
    a = x.numpy()
    workers = max(1, torch.get_num_threads())
    bounds = np.linspace(0, a.shape[0], min(a.shape[0], 4 * workers) + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: a[bounds[i]:bounds[i + 1]].sort(axis=1), range(len(bounds) - 1)))


def _average_precision_rows(ranked: torch.Tensor, attr: torch.Tensor, value: torch.Tensor,
                            n_known: torch.Tensor) -> torch.Tensor:
    """AP per row of ``ranked`` (B, N): known scores sorted ascending, unknown ones +inf at the end.

    ``attr`` (row, sorted) and ``value`` (ascending within a row) list the scores of the known positives.
    AP = (1/P) sum over positives i of precision(s_i), precision(b) = #positives >= b / #known >= b:
    scikit-learn's step-wise sum over distinct thresholds, written per positive (tied positives share
    their threshold's precision).
    """
    b = ranked.shape[0]
    n_pos = torch.bincount(attr, minlength=b)
    width = max(int(n_pos.max()) if b else 0, 1)
    first = torch.cumsum(n_pos, 0) - n_pos
    slot = torch.arange(attr.numel(), device=attr.device) - first[attr]
    thresholds = torch.full((b, width), float("inf"), dtype=ranked.dtype, device=ranked.device)
    thresholds[attr, slot] = value
    positives_ge = n_pos[:, None] - torch.searchsorted(thresholds, thresholds, side="left")
    known_ge = n_known[:, None] - torch.searchsorted(ranked, thresholds, side="left")
    valid = torch.arange(width, device=ranked.device) < n_pos[:, None]
    precision = torch.where(valid, positives_ge.double() / known_ge.clamp(min=1).double(), 0.0)
    ap = precision.sum(1) / n_pos.double()
    return torch.where(n_pos > 0, ap, torch.full_like(ap, float("nan")))


def average_precision(scores, labels, known=None) -> np.ndarray:
    """Average precision per attribute (column), exactly scikit-learn's ``average_precision_score``.

    Step-wise, without interpolation: AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds,
    so tied scores enter together. Labels that are not known (``known`` false) are left out of that
    attribute's ranking; an attribute without a known positive gets nan (not 0). One sort per block of
    :data:`COLUMN_CHUNK` attributes; runs on the scores' device.

    Args:
        scores: (N, A) scores, no NaN.
        labels: (N, A); 1 is a positive, anything else a negative.
        known: optional (N, A) mask (bool or 0/1) of the labels that count (default: all).

    Returns:
        float64 numpy array (A,).
    """
    s = _scores(scores)
    pos = _positives(labels, s.device)
    if s.ndim != 2 or s.shape != pos.shape or (known is not None and tuple(known.shape) != tuple(s.shape)):
        raise ValueError(f"scores {tuple(s.shape)}, labels {tuple(pos.shape)} and known "
                         f"{None if known is None else tuple(known.shape)} must be the same (N, A) shape")
    if bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN; average precision needs a full ranking")
    n, a = s.shape
    ranked = s.t().contiguous()             # (A, N): one row per attribute, sorted in place below
    img, attr = pos.nonzero(as_tuple=True)
    n_known = torch.full((a,), n, dtype=torch.long, device=s.device)
    if known is not None:
        kn = _tensor(known, s.device).bool()
        is_known = kn[img, attr]
        img, attr = img[is_known], attr[is_known]
        unknown_img, unknown_attr = (~kn).nonzero(as_tuple=True)
        ranked[unknown_attr, unknown_img] = float("inf")   # sorts last, never below a positive's score
        n_known -= torch.bincount(unknown_attr, minlength=a)
    value = s[img, attr]
    order = torch.sort(value, stable=True).indices
    order = order[torch.sort(attr[order], stable=True).indices]   # by attribute, then ascending score
    attr, value = attr[order], value[order]
    _sort_rows_(ranked)
    out = torch.empty(a, dtype=torch.float64, device=s.device)
    bounds = torch.searchsorted(attr, torch.arange(0, a + COLUMN_CHUNK, COLUMN_CHUNK, device=s.device)).tolist()
    for i, start in enumerate(range(0, a, COLUMN_CHUNK)):
        rows = slice(start, start + COLUMN_CHUNK)
        out[rows] = _average_precision_rows(ranked[rows], attr[bounds[i]:bounds[i + 1]] - start,
                                            value[bounds[i]:bounds[i + 1]], n_known[rows])
    return out.cpu().numpy()


class ResampledAveragePrecision:
    """:func:`average_precision` of one set of scores on many resamples of its images (the bootstrap).

    ``ap(idx)`` equals ``average_precision(scores[idx], labels[idx], known[idx])`` for any index array ``idx``
    (repeats allowed), but the columns are ranked once here: a resample only weights each image by how often
    it was drawn, so it costs a few cumulative sums instead of a sort. Tied scores still enter together.
    """

    def __init__(self, scores, labels, known=None):
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2 or np.isnan(s).any():
            raise ValueError(f"scores must be (N, A) without NaN, got shape {s.shape}")
        pos = _positives(labels).cpu().numpy()
        kn = np.ones_like(pos) if known is None else np.asarray(known).astype(bool)
        if pos.shape != s.shape or kn.shape != s.shape:
            raise ValueError(f"scores {s.shape}, labels {pos.shape} and known {kn.shape} must be the same shape")
        n = len(s)
        self.order = np.argsort(-s, axis=0, kind="stable")               # per column, best score first
        ranked = np.take_along_axis(s, self.order, 0)
        self.known = np.take_along_axis(kn, self.order, 0)
        self.positive = np.take_along_axis(pos & kn, self.order, 0)
        # the first and last rank of each rank's tie group: precision is read at the last, so tied images
        # enter together
        last = np.vstack([ranked[1:] != ranked[:-1], np.ones((1, s.shape[1]), bool)])
        ends = np.where(last, np.arange(n)[:, None], n)
        self.group_end = np.minimum.accumulate(ends[::-1], axis=0)[::-1]
        first = np.vstack([np.ones((1, s.shape[1]), bool), last[:-1]])
        self.group_start = np.maximum.accumulate(np.where(first, np.arange(n)[:, None], 0), axis=0)

    def __call__(self, idx) -> np.ndarray:
        """Average precision per attribute on the images ``idx`` (nan where no drawn image is a known positive)."""
        weight = np.bincount(np.asarray(idx), minlength=len(self.order)).astype(np.float64)
        w = weight[self.order] * self.known                                  # (N, A) in rank order
        hits = w * self.positive
        tp, seen = np.cumsum(hits, 0), np.cumsum(w, 0)
        tp_end = np.take_along_axis(tp, self.group_end, 0)
        seen_end = np.take_along_axis(seen, self.group_end, 0)
        precision = tp_end / np.maximum(seen_end, 1)        # counts: nothing seen yet means no hit yet (0 / 1)
        total = tp[-1]
        with np.errstate(invalid="ignore"):                  # no drawn positive: 0 / 0, the nan we want
            return np.where(total > 0, (hits * precision).sum(0) / total, np.nan)

    def leave_one_out(self) -> np.ndarray:
        """(N, A): average precision per attribute with image i left out, in row i (the delete-one jackknife).

        Equals ``self(np.delete(np.arange(N), i))`` row by row, in O(N A) instead of N passes: leaving out a
        known image at rank r only changes the precision read at the tie groups from r's group on (one image
        fewer seen there, and one true positive fewer if it was a positive), so each row is a prefix sum of the
        unchanged terms plus a suffix sum of the changed ones. An unknown label leaves that column as it is.
        """
        w, hits = self.known.astype(np.float64), self.positive.astype(np.float64)
        tp_end = np.take_along_axis(np.cumsum(hits, 0), self.group_end, 0)
        seen_end = np.take_along_axis(np.cumsum(w, 0), self.group_end, 0)
        total = hits.sum(0)

        def ratio(num, den):                      # hits * num / den, 0 off the positives (den > 0 on them)
            return np.divide(hits * num, den, out=np.zeros_like(num), where=(hits > 0) & (den > 0))

        def from_start(terms, before: bool):      # sum of terms above (before) / from (not before) the group start
            sums = np.vstack([np.zeros((1, terms.shape[1])), np.cumsum(terms, 0)])
            if not before:
                sums = sums[-1:] - sums
            return np.take_along_axis(sums, self.group_start, 0)

        kept = ratio(tp_end, seen_end)
        unchanged = from_start(kept, before=True)
        without_negative = unchanged + from_start(ratio(tp_end, seen_end - 1), before=False)
        own = ratio(tp_end - 1, seen_end - 1)     # the left-out positive's own term, not summed
        without_positive = unchanged + from_start(own, before=False) - own
        with np.errstate(invalid="ignore", divide="ignore"):
            full = np.where(total > 0, kept.sum(0) / total, np.nan)
            ranked = np.where(hits > 0, np.where(total > 1, without_positive / (total - 1), np.nan),
                              np.where(w > 0, np.where(total > 0, without_negative / total, np.nan), full))
        out = np.empty_like(ranked)
        np.put_along_axis(out, self.order, ranked, 0)
        return out


def mean_over_attributes(ap) -> np.ndarray:
    """Mean AP over the attributes (last axis) where it is defined; nan where none is. np.nanmean's arithmetic
    (the defined values summed with zeros in place of the rest), so a 1-D result equals ``np.nanmean(ap)``."""
    ap = np.asarray(ap, dtype=np.float64)
    defined = np.isfinite(ap)
    count, total = defined.sum(-1), np.where(defined, ap, 0.0).sum(-1)
    return np.divide(total, count, out=np.full(np.shape(count), np.nan), where=count > 0)


def map_by_type(ap, attribute_types) -> dict:
    """``{"attr_map_<type>": mean AP, "attr_map_all": mean AP}`` over the attributes with a defined AP."""
    ap = np.asarray(ap, dtype=np.float64)
    types = np.asarray(_tensor(attribute_types).cpu()).reshape(-1)

    def mean(values):
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else float("nan")

    out = {f"attr_map_{name}": mean(ap[types == t]) for t, name in ATTRIBUTE_TYPE_NAMES.items()}
    out["attr_map_all"] = mean(ap)
    return out


# ---------------------------------------------------------------------------------------------------------
# Landmarks


def landmark_normalized_error(pred, gt, visible) -> dict:
    """Landmark normalised error (NE) as in Liu & Lu's landmark table.

    Coordinates are in crop units (x / crop width, y / crop height, 0..1), so the distance is normalised
    separately by the bounding-box width and height. ``NE_l = sum_i v_il * ||p_il - g_il||_2 / sum_i v_il``
    and ``mean = (1/L') sum_l NE_l`` over the L' landmarks visible in at least one image (the unweighted
    mean of the per-landmark values, the "Avg" column).

    Args:
        pred, gt: (N, L, 2) coordinates in crop units.
        visible: (N, L) boolean / 0-1 mask, true where the landmark counts (raw visibility 0 *and* inside
            the crop, i.e. ``landmark_visibility == 0`` of the dataset). Passing the visibility *codes*
            themselves is refused (values other than 0/1).

    Returns:
        ``{"per_landmark": [L floats, nan where never visible], "mean": float (nan if no data)}``
    """
    p = _tensor(pred).double()
    g = _tensor(gt, p.device).double()
    v = _tensor(visible, p.device)
    if v.dtype != torch.bool:
        if bool(((v != 0) & (v != 1)).any()):
            values = torch.unique(v.cpu())[:6].tolist()
            raise ValueError(f"visible must be a 0/1 mask (e.g. landmark_visibility == 0), got values {values}")
        v = v != 0
    if p.shape != g.shape or p.ndim != 3 or p.shape[:2] != v.shape:
        raise ValueError(f"pred {tuple(p.shape)}, gt {tuple(g.shape)}, visible {tuple(v.shape)} do not match")
    dist = ((p - g) ** 2).sum(2).sqrt()
    count = v.sum(0)
    total = torch.where(v, dist, torch.zeros_like(dist)).sum(0)
    per = [float(total[l] / count[l]) if int(count[l]) > 0 else float("nan") for l in range(p.shape[1])]
    finite = [x for x in per if not math.isnan(x)]
    return {"per_landmark": per, "mean": float(np.mean(finite)) if finite else float("nan")}


def landmark_keys(n: int) -> tuple:
    """Names of the per-landmark NE keys: the 8 DeepFashion slots, else ``lm0..``."""
    return LANDMARK_KEYS if n == len(LANDMARK_KEYS) else tuple(f"lm{i}" for i in range(n))


def landmark_metrics(pred, gt, visible) -> dict:
    """``{"landmark_ne_mean": ..., "landmark_ne_<slot>": ...}`` from :func:`landmark_normalized_error`."""
    ne = landmark_normalized_error(pred, gt, visible)
    out = {"landmark_ne_mean": ne["mean"]}
    for name, value in zip(landmark_keys(len(ne["per_landmark"])), ne["per_landmark"]):
        out[f"landmark_ne_{name}"] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# Accumulator


class EvalAccumulator:
    """Collects predictions over a split and computes every metric at once.

    >>> acc = EvalAccumulator(attribute_types)           # doctest: +SKIP
    >>> for batch in loader:                             # doctest: +SKIP
    ...     acc.update(category_logits, batch["category"], attribute_logits, batch["attributes"],
    ...                landmarks_pred, batch["landmarks"], batch["landmark_visibility"],
    ...                attributes_known=batch["attributes_known"])
    >>> acc.compute()                                    # flat dict of floats (nan where undefined)

    Model outputs stay on their device (no copy per batch); labels are kept where they come from (the
    host, typically). :meth:`compute` runs once per split on the outputs' device (labels go there once),
    and only the resulting numbers come back.

    Keys: ``n_images``; ``category_top{1,3,5}``; ``attr_top{3,5}_{texture,...,style,all_grouped,all_strict}``;
    ``attr_map_{texture,...,style,all}``; ``landmark_ne_mean`` and ``landmark_ne_{l_collar,...,r_hem}``
    (nan when no landmark predictions were given, e.g. for the ``cat`` model).
    """

    def __init__(self, attribute_types, category_ks: Sequence[int] = (1, 3, 5),
                 attribute_ks: Sequence[int] = (3, 5), num_landmarks: int = 8):
        self.attribute_types = _tensor(attribute_types).cpu().long().reshape(-1)
        self.category_ks = tuple(category_ks)
        self.attribute_ks = tuple(attribute_ks)
        self.num_landmarks = num_landmarks
        self.reset()

    def reset(self) -> None:
        self._parts: dict = {name: [] for name in ("cat_scores", "cat", "attr_scores", "attr_pos", "attr_known",
                                                   "lm_pred", "lm_gt", "lm_vis")}
        self._joined: Optional[dict] = None

    def update(self, category_logits, category, attribute_logits=None, attributes=None,
               landmarks_pred=None, landmarks=None, landmark_visibility=None, *, attributes_known=None) -> None:
        """Add one batch.

        Args:
            category_logits: (B, C) float (any float dtype, any device; kept there).
            category: (B,) integer class indices (host or device).
            attribute_logits: optional (B, A) float scores (kept on their device).
            attributes: (B, A) labels, 1 = positive (0/1 targets or the file's ±1 / 0 codes).
            landmarks_pred: optional (B, L, 2) float, crop units (kept on their device).
            landmarks: (B, L, 2) float ground truth in crop units.
            landmark_visibility: (B, L) integer codes; a landmark counts where the code is 0.
            attributes_known: optional (B, A) mask (bool or 0/1), true where a label is known; unknown labels
                are left out of average precision (top-k recall counts only positives anyway). Without it
                every label counts, so pass ``labels != 0`` with the file's ±1 / 0 codes.
        """
        self._joined = None
        parts = self._parts
        parts["cat_scores"].append(_scores(category_logits))
        parts["cat"].append(_tensor(category).long().reshape(-1))
        if attribute_logits is not None:
            parts["attr_scores"].append(_scores(attribute_logits))
            parts["attr_pos"].append(_positives(attributes))
            parts["attr_known"].append(None if attributes_known is None else _tensor(attributes_known).bool())
        if landmarks_pred is not None:
            parts["lm_pred"].append(_scores(landmarks_pred))
            parts["lm_gt"].append(_scores(landmarks))
            parts["lm_vis"].append(_tensor(landmark_visibility) == 0)

    def __len__(self) -> int:
        return int(sum(c.shape[0] for c in self._parts["cat"]))

    def _join(self, device=None) -> dict:
        """Concatenate every field once, all on ``device`` (default: where the category scores are)."""
        if self._joined is not None and (device is None or self._joined["device"] == torch.device(device)):
            return self._joined
        parts = self._parts
        if device is None:
            device = parts["cat_scores"][0].device if parts["cat_scores"] else torch.device("cpu")
        device = torch.device(device)

        def cat(name):
            return torch.cat([p.to(device) for p in parts[name]]) if parts[name] else None

        joined = {name: cat(name) for name in parts if name != "attr_known"}
        if parts["attr_known"] and any(k is not None for k in parts["attr_known"]):
            joined["attr_known"] = torch.cat([(torch.ones_like(p) if k is None else k).to(device)
                                              for k, p in zip(parts["attr_known"], parts["attr_pos"])])
        else:
            joined["attr_known"] = None
        for name, value in joined.items():      # keep one copy: later updates append to the joined tensors
            parts[name] = [] if value is None else [value]
        if joined["attr_known"] is None and joined["attr_scores"] is not None:
            parts["attr_known"] = [None]
        joined["device"] = device
        self._joined = joined
        return joined

    def attribute_ap(self, device=None) -> np.ndarray:
        """Per-attribute average precision over the split (float64 (A,), nan where undefined)."""
        j = self._join(device)
        if j["attr_scores"] is None:
            return np.full(len(self.attribute_types), np.nan)
        if "attr_ap" not in j:
            j["attr_ap"] = average_precision(j["attr_scores"], j["attr_pos"], j["attr_known"])
        return j["attr_ap"]

    def compute(self, device=None, with_map: bool = True) -> dict:
        """All metrics as a flat dict (keys of :func:`metric_keys`); ``device`` overrides where they run.

        ``with_map=False`` skips average precision (its keys are then nan).
        """
        nan = float("nan")
        j = self._join(device)
        out: dict = {"n_images": float(len(self))}
        if j["cat_scores"] is not None:
            out.update(category_metrics(j["cat_scores"], j["cat"], self.category_ks))
        else:
            out.update({f"category_top{k}": nan for k in self.category_ks})
        types = self.attribute_types.to(j["device"])
        if j["attr_scores"] is not None:
            out.update(attribute_recalls(j["attr_scores"], j["attr_pos"], types, self.attribute_ks))
        else:
            out.update({f"attr_top{k}_{g}": nan for k in self.attribute_ks for g in RECALL_GROUPS})
        if with_map and j["attr_scores"] is not None:
            out.update(map_by_type(self.attribute_ap(device), self.attribute_types))
        else:
            out.update({f"attr_map_{g}": nan for g in MAP_GROUPS})
        if j["lm_pred"] is not None:
            out.update(landmark_metrics(j["lm_pred"], j["lm_gt"], j["lm_vis"]))
        else:
            out["landmark_ne_mean"] = nan
            out.update({f"landmark_ne_{name}": nan for name in landmark_keys(self.num_landmarks)})
        return out


def metric_keys(num_landmarks: int = 8, category_ks: Iterable[int] = (1, 3, 5),
                attribute_ks: Iterable[int] = (3, 5)) -> list:
    """The keys :meth:`EvalAccumulator.compute` returns, in order."""
    keys = ["n_images"] + [f"category_top{k}" for k in category_ks]
    keys += [f"attr_top{k}_{g}" for k in attribute_ks for g in RECALL_GROUPS]
    keys += [f"attr_map_{g}" for g in MAP_GROUPS]
    keys += ["landmark_ne_mean"] + [f"landmark_ne_{n}" for n in landmark_keys(num_landmarks)]
    return keys


def jsonable(obj):
    """Recursively convert to plain JSON types: numpy/torch scalars -> float/int, non-finite -> None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.item() if obj.numel() == 1 else obj.tolist()
        return jsonable(obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj
