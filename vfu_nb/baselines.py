"""Reference numbers that make every result readable: what chance, priors and geometry alone achieve.

Each baseline is fitted on the train split and evaluated on the same images as the models (``test`` by
default, any split), and returns a flat dict with the metric keys of
:meth:`vfu_nb.metrics.EvalAccumulator.compute` (keys a baseline cannot produce are absent), so tables can
put baselines next to models:

* ``chance`` -- uniform random scores; exact expected values (:func:`chance_levels`).
* ``class_prior`` -- every image gets the training category frequencies as scores.
* ``attribute_prior`` -- every image gets the training positive rate of each attribute.
* ``attribute_prior_given_category`` -- P(attribute | the image's TRUE category) on train, smoothed toward
  the overall rate (:data:`SMOOTHING` pseudo-images): the ceiling of anything that only knows the category.
* ``geometry_knn`` -- k nearest training images by ground-truth landmark geometry (:func:`geometry_features`),
  k chosen on val from :data:`KNN_KS` by top-3 category accuracy (reported as ``knn_k``); scores are the
  neighbours' category vote fractions and mean attribute labels.
* ``mean_landmarks`` -- every image gets the per-slot mean of the visible training landmarks -> landmark NE.

Readable: :func:`baseline_table` (a frame, one row per baseline) and :func:`baseline_sentences` (one sentence
per baseline, every number taken from the results).

``python -m vfu_nb.baselines --data-root DIR [--split test] [--json FILE]`` prints them as a table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from vfu_nb.conventions import baseline_label
from vfu_nb.data.annotations import SLOTS_BY_CLOTHES_TYPE, Annotations
from vfu_nb.metrics import (
    ATTRIBUTE_TYPE_NAMES, MAP_GROUPS, attribute_recalls, average_precision, category_metrics, jsonable,
    landmark_metrics, map_by_type,
)

CATEGORY_KS = (1, 3, 5)
ATTRIBUTE_KS = (3, 5)
#: Pseudo-images of the overall positive rate added to each category's counts in P(attribute | category).
SMOOTHING = 10.0
#: Neighbour counts tried on val by the geometry-only k-NN.
KNN_KS = (5, 15, 45)
VISIBILITY_CODES = (-1, 0, 1, 2)
CLOTHES_TYPES = tuple(sorted(SLOTS_BY_CLOTHES_TYPE))
QUERY_CHUNK = 1024      # query images per k-NN distance block
REFERENCE_CHUNK = 16384  # training images per k-NN distance block (block = 64 MB of float32 distances)


# ---------------------------------------------------------------------------------------------------------
# Annotation views


def crop_units(ann: Annotations, rows: np.ndarray, image_sizes: Optional[np.ndarray] = None):
    """Landmarks of ``rows`` in crop units of the default crop, vectorised ``data.landmarks_in_window``.

    The default crop is the bbox clamped to the image. ``image_sizes`` ((len(ann), 2) width, height of
    every annotation row) clamps the far edges; without it only the near edges are clamped at 0
    (DeepFashion-C's boxes lie inside their images).

    Returns ``(units (n, L, 2) float32, visibility (n, L) int64)``: visibility becomes 2 for points
    outside the crop, and absent slots (-1) get coordinates 0.
    """
    box = ann.bbox[rows].astype(np.float64)
    x1, y1 = np.maximum(box[:, 0], 0.0), np.maximum(box[:, 1], 0.0)
    x2, y2 = box[:, 2], box[:, 3]
    if image_sizes is not None:
        sizes = np.asarray(image_sizes, dtype=np.float64)[rows]
        x2, y2 = np.minimum(x2, sizes[:, 0]), np.minimum(y2, sizes[:, 1])
    origin = np.stack([x1, y1], 1).astype(np.float32)[:, None, :]
    size = np.stack([x2 - x1, y2 - y1], 1).astype(np.float32)[:, None, :]
    units = (ann.landmarks[rows] - origin) / size
    vis = ann.landmark_visibility[rows].copy()
    outside = (units < 0).any(-1) | (units > 1).any(-1)
    vis[(vis >= 0) & outside] = 2
    units[vis < 0] = 0.0
    return units.astype(np.float32), vis


def attribute_masks(ann: Annotations, rows: np.ndarray):
    """``(positive, known)`` bool (n, A) of ``rows``: the file codes 1 positive, -1 negative, 0 unknown."""
    a = ann.attributes[rows]
    return a == 1, a != 0


def geometry_features(ann: Annotations, rows: np.ndarray, image_sizes: Optional[np.ndarray] = None) -> np.ndarray:
    """Per image: x, y of each slot in crop units (0 where absent), one-hot visibility code per slot
    (-1, 0, 1, 2) and one-hot clothes type; float32 (n, 2L + 4L + 3)."""
    units, vis = crop_units(ann, rows, image_sizes)
    n = len(rows)
    one_hot_vis = (vis[:, :, None] == np.array(VISIBILITY_CODES)[None, None, :]).reshape(n, -1)
    one_hot_type = ann.clothes_type[rows][:, None] == np.array(CLOTHES_TYPES)[None, :]
    return np.concatenate([units.reshape(n, -1), one_hot_vis, one_hot_type], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Metric helpers


def _attribute_metrics(scores, positive, known, attribute_types) -> dict:
    """Top-k recall and mAP keys for (n, A) scores."""
    out = attribute_recalls(scores, positive, attribute_types, ATTRIBUTE_KS)
    out.update(map_by_type(average_precision(scores, positive, known), attribute_types))
    return out


def expected_random_ap(n_positive: np.ndarray, n_known: np.ndarray) -> np.ndarray:
    """Exact expected average precision of a uniformly random ranking of ``n_known`` items with
    ``n_positive`` positives: (1/N) [H_N + (P - 1)/(N - 1) (N - H_N)], nan where P = 0."""
    p = np.asarray(n_positive, dtype=np.float64)
    n = np.asarray(n_known, dtype=np.float64)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(n.max(initial=0)) + 1))])[n.astype(np.int64)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(n > 1, (p - 1) / np.maximum(n - 1, 1), 0.0)
        ap = (harmonic + ratio * (n - harmonic)) / n
    return np.where(p > 0, ap, np.nan)


def chance_levels(attribute_labels, attribute_types, num_categories: int, known=None,
                  category_ks: Sequence[int] = CATEGORY_KS, attribute_ks: Sequence[int] = ATTRIBUTE_KS) -> dict:
    """Exact expected metrics of uniform random scores on images with these attribute labels.

    Category top-k: min(k, C) / C. Attribute recall of a random top-k within a group of n attributes:
    min(k, n) / n; ``all_strict``: min(k, A) / A; ``all_grouped``: the positive-weighted mean of the groups
    (nan where there are no positives). mAP: :func:`expected_random_ap` per attribute, averaged like
    :func:`vfu_nb.metrics.map_by_type`. ``known`` (default: labels != 0 for the file coding, every label
    for 0/1 targets) marks the labels that count in AP.
    """
    labels = np.asarray(attribute_labels)
    positive = labels == 1
    if known is None:
        known = labels != 0 if (labels < 0).any() else np.ones_like(positive)
    known = np.asarray(known, dtype=bool)
    types = np.asarray(attribute_types).reshape(-1)
    out = {f"category_top{k}": min(k, num_categories) / num_categories for k in category_ks}
    for k in attribute_ks:
        tp = gt = 0.0
        for t, name in ATTRIBUTE_TYPE_NAMES.items():
            n, pos = int((types == t).sum()), float(positive[:, types == t].sum())
            rate = min(k, n) / n if n else float("nan")
            out[f"attr_top{k}_{name}"] = rate if pos else float("nan")
            if pos:
                tp, gt = tp + rate * pos, gt + pos
        out[f"attr_top{k}_all_grouped"] = tp / gt if gt else float("nan")
        out[f"attr_top{k}_all_strict"] = min(k, len(types)) / len(types) if positive.any() else float("nan")
    ap = expected_random_ap((positive & known).sum(0), known.sum(0))
    out.update(map_by_type(ap, types))
    return out


# ---------------------------------------------------------------------------------------------------------
# Baselines


def class_prior(ann: Annotations, rows: np.ndarray, train: np.ndarray) -> dict:
    """Category scores = training category frequencies, the same for every image."""
    counts = np.bincount(ann.category[train], minlength=len(ann.category_names)).astype(np.float32)
    scores = torch.from_numpy(counts)[None, :].expand(len(rows), -1)
    return category_metrics(scores, ann.category[rows], CATEGORY_KS)


def positive_rates(positive: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Positives / known labels per attribute (0 where no label is known), float64 (A,)."""
    return positive.sum(0) / np.maximum(known.sum(0), 1)


def attribute_prior(ann: Annotations, rows: np.ndarray, train: np.ndarray) -> dict:
    """Attribute scores = training positive rates, the same for every image."""
    rates = positive_rates(*attribute_masks(ann, train)).astype(np.float32)
    positive, known = attribute_masks(ann, rows)
    scores = torch.from_numpy(rates)[None, :].expand(len(rows), -1)
    return _attribute_metrics(scores, positive, known, ann.attribute_types)


def conditional_attribute_rates(ann: Annotations, train: np.ndarray, smoothing: float = SMOOTHING) -> np.ndarray:
    """P(attribute | category) on train, (C, A) float32.

    ``(positives_ca + m * rate_a) / (known_ca + m)`` with m = ``smoothing`` pseudo-images of the overall
    rate ``rate_a``: a category with many training images keeps its own rate, one with few (or none) is
    pulled toward the overall rate.
    """
    positive, known = attribute_masks(ann, train)
    overall = positive_rates(positive, known)
    categories = ann.category[train]
    table = np.empty((len(ann.category_names), positive.shape[1]), dtype=np.float32)
    for c in range(len(table)):
        of_c = categories == c
        table[c] = (positive[of_c].sum(0) + smoothing * overall) / (known[of_c].sum(0) + smoothing)
    return table


def attribute_prior_given_category(ann: Annotations, rows: np.ndarray, train: np.ndarray,
                                   smoothing: float = SMOOTHING) -> dict:
    """Attribute scores = P(attribute | true category): what knowing only the category gives."""
    table = conditional_attribute_rates(ann, train, smoothing)
    positive, known = attribute_masks(ann, rows)
    scores = torch.from_numpy(table)[torch.from_numpy(ann.category[rows])]
    return _attribute_metrics(scores, positive, known, ann.attribute_types)


def nearest_neighbours(queries: np.ndarray, references: np.ndarray, k: int) -> np.ndarray:
    """Indices (n, k) of the k nearest references (Euclidean) of each query, nearest first.

    Distances are computed block by block (:data:`QUERY_CHUNK` x :data:`REFERENCE_CHUNK`), keeping a running
    top-k, so memory stays bounded for DeepFashion-C's 209k x 40k."""
    ref = torch.from_numpy(np.ascontiguousarray(references, dtype=np.float32))
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    k = min(k, ref.shape[0])
    ref_sq = (ref * ref).sum(1)
    out = np.empty((q_all.shape[0], k), dtype=np.int64)
    for qs in range(0, q_all.shape[0], QUERY_CHUNK):
        q = q_all[qs:qs + QUERY_CHUNK]
        best_d, best_i = torch.empty(q.shape[0], 0), torch.empty(q.shape[0], 0, dtype=torch.long)
        for rs in range(0, ref.shape[0], REFERENCE_CHUNK):
            r = ref[rs:rs + REFERENCE_CHUNK]
            # |q - r|^2 - |q|^2 = |r|^2 - 2 q.r ranks the references of a query like the distance does
            d = torch.addmm(ref_sq[None, rs:rs + REFERENCE_CHUNK], q, r.t(), alpha=-2.0)
            d, i = d.topk(min(k, d.shape[1]), dim=1, largest=False)
            merged_d, merged_i = torch.cat([best_d, d], 1), torch.cat([best_i, i + rs], 1)
            best_d, order = merged_d.topk(min(k, merged_d.shape[1]), dim=1, largest=False)
            best_i = merged_i.gather(1, order)
        out[qs:qs + q.shape[0]] = best_i.numpy()
    return out


def vote_fractions(neighbours: np.ndarray, categories: np.ndarray, num_categories: int) -> torch.Tensor:
    """Fraction of each image's neighbours in each category, (n, C)."""
    n, k = neighbours.shape
    votes = torch.zeros(n, num_categories)
    votes.scatter_add_(1, torch.from_numpy(categories[neighbours]), torch.ones(n, k))
    return votes / k


def neighbour_label_means(neighbours: np.ndarray, positive: np.ndarray) -> torch.Tensor:
    """Mean of the neighbours' attribute labels (1 positive, 0 otherwise, unknown included as 0), (n, A)."""
    n, k = neighbours.shape
    labels, nb = torch.from_numpy(positive), torch.from_numpy(neighbours)
    out = torch.empty(n, positive.shape[1])
    for s in range(0, n, QUERY_CHUNK):
        out[s:s + QUERY_CHUNK] = labels[nb[s:s + QUERY_CHUNK]].sum(1, dtype=torch.int32).float() / k
    return out


def geometry_knn(ann: Annotations, rows: np.ndarray, train: np.ndarray, val: np.ndarray,
                 ks: Sequence[int] = KNN_KS, image_sizes=None) -> dict:
    """k-NN on ground-truth landmark geometry (:func:`geometry_features`, standardised with train statistics).

    k is chosen on ``val`` from ``ks`` by top-3 category accuracy (ties: the smaller k) and reported as
    ``knn_k``. ``image_sizes``: see :func:`crop_units`.
    """
    reference = geometry_features(ann, train, image_sizes)
    mean, std = reference.mean(0), reference.std(0)
    std[std == 0] = 1.0

    def standardised(r):
        return (geometry_features(ann, r, image_sizes) - mean) / std

    reference = (reference - mean) / std
    ks = sorted({min(k, len(train)) for k in ks})
    categories = ann.category[train]
    positive_train = attribute_masks(ann, train)[0]
    num_categories = len(ann.category_names)
    val_neighbours = nearest_neighbours(standardised(val), reference, max(ks))
    val_top3 = {k: category_metrics(vote_fractions(val_neighbours[:, :k], categories, num_categories),
                                    ann.category[val], (3,))["category_top3"] for k in ks}
    best = max(ks, key=lambda k: (val_top3[k], -k))
    same = np.array_equal(rows, val)
    neighbours = val_neighbours[:, :best] if same else nearest_neighbours(standardised(rows), reference, best)
    positive, known = attribute_masks(ann, rows)
    out = category_metrics(vote_fractions(neighbours, categories, num_categories), ann.category[rows], CATEGORY_KS)
    out.update(_attribute_metrics(neighbour_label_means(neighbours, positive_train), positive, known,
                                  ann.attribute_types))
    out["knn_k"] = float(best)
    return out


def mean_landmarks(ann: Annotations, rows: np.ndarray, train: np.ndarray, image_sizes=None) -> dict:
    """Every image gets the per-slot mean of the visible training landmarks (crop units; 0.5 for a slot
    never visible in train) -> landmark NE."""
    train_units, train_vis = crop_units(ann, train, image_sizes)
    visible = train_vis == 0
    count = visible.sum(0)
    mean = np.where(count[:, None] > 0,
                    (train_units * visible[:, :, None]).sum(0) / np.maximum(count, 1)[:, None], 0.5)
    gt, vis = crop_units(ann, rows, image_sizes)
    pred = np.repeat(mean[None].astype(np.float32), len(rows), axis=0)
    return landmark_metrics(pred, gt, vis == 0)


BASELINES = ("chance", "class_prior", "attribute_prior", "attribute_prior_given_category", "geometry_knn",
             "mean_landmarks")


def baselines(ann: Annotations, split: str = "test", image_sizes: Optional[np.ndarray] = None) -> dict:
    """``{name: metrics}`` for every baseline of :data:`BASELINES`, evaluated on ``split``."""
    rows, train, val = ann.indices(split), ann.indices("train"), ann.indices("val")
    if len(train) == 0:
        raise ValueError(f"{ann.root}: the partition file lists no train images; baselines are fitted on train")
    if len(rows) == 0:
        raise ValueError(f"{ann.root}: the partition file lists no {split} images")
    n = {"n_images": float(len(rows))}
    positive, known = attribute_masks(ann, rows)
    out = {
        "chance": {**n, **chance_levels(positive.astype(np.int8), ann.attribute_types, len(ann.category_names),
                                        known=known)},
        "class_prior": {**n, **class_prior(ann, rows, train)},
        "attribute_prior": {**n, **attribute_prior(ann, rows, train)},
        "attribute_prior_given_category": {**n, **attribute_prior_given_category(ann, rows, train)},
    }
    if len(val):
        out["geometry_knn"] = {**n, **geometry_knn(ann, rows, train, val, image_sizes=image_sizes)}
    out["mean_landmarks"] = {**n, **mean_landmarks(ann, rows, train, image_sizes)}
    return out


def compute_baselines(root, split: str = "test") -> dict:
    """:func:`baselines` of the DeepFashion-C tree at ``root`` (annotations memoised per root)."""
    from vfu_nb.data.cache import cached_annotations

    return baselines(cached_annotations(root), split)


# ---------------------------------------------------------------------------------------------------------
# Table


#: Table columns and their short headers.
TABLE_COLUMNS = {
    "category_top1": "cat@1", "category_top3": "cat@3", "category_top5": "cat@5",
    "attr_top3_all_grouped": "attr@3 grp", "attr_top3_all_strict": "attr@3 all",
    **{f"attr_map_{g}": f"mAP {g[:4]}" for g in MAP_GROUPS}, "landmark_ne_mean": "NE",
}


def format_table(results: dict, columns: dict = TABLE_COLUMNS) -> str:
    """Baselines as rows, metrics as columns (``-`` where a baseline has no such number)."""
    width = max(len(name) for name in results) + 2
    lines = [f"{'baseline':<{width}}" + "".join(f"{label:>11}" for label in columns.values())]
    for name, metrics in results.items():
        cells = [metrics.get(key, float("nan")) for key in columns]
        lines.append(f"{name:<{width}}" + "".join(f"{'-':>11}" if math.isnan(v) else f"{v:>11.4f}" for v in cells))
    return "\n".join(lines)


def baseline_table(results) -> pd.DataFrame:
    """Baselines (``{name: flat metrics}`` of :func:`compute_baselines`) as rows, the key metrics of
    :data:`TABLE_COLUMNS` as columns (nan where a baseline has no such number)."""
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
    """One plain sentence per baseline in ``results`` (:func:`compute_baselines`), every number taken from
    ``results``."""
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Chance, prior, geometry-only and mean-landmark baselines.")
    parser.add_argument("--data-root", required=True, help="DeepFashion-C tree (Anno/, Eval/, img/)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="evaluation split")
    parser.add_argument("--json", default=None, help="also write every metric of every baseline to this file")
    args = parser.parse_args(argv)
    results = compute_baselines(args.data_root, args.split)
    print(f"{args.split} split of {args.data_root}")
    print(format_table(results))
    if "geometry_knn" in results:
        print(f"geometry_knn: k = {int(results['geometry_knn']['knn_k'])} (chosen on val from {KNN_KS})")
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable(results), indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
