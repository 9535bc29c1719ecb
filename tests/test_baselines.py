"""Baselines on hand-made annotation sets with hand-computed values, and on the tiny DeepFashion-C tree."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from dftree import IMAGE_SIZES, write_tree
from vfu_nb import baselines as B
from vfu_nb.data.annotations import Annotations, load_annotations
from vfu_nb.data.crops import crop_window, landmarks_in_window
from vfu_nb.metrics import metric_keys


def toy(categories, splits, attributes=None, attribute_types=None, num_categories=5, clothes_type=None,
        landmarks=None, visibility=None, bbox=None) -> Annotations:
    """Annotations of len(categories) images; attributes default to one all-negative attribute."""
    n = len(categories)
    attributes = np.full((n, 1), -1, np.int8) if attributes is None else np.asarray(attributes, np.int8)
    a = attributes.shape[1]
    return Annotations(
        root=Path("toy"), image_names=np.array([f"img/{i}.jpg" for i in range(n)]), split=np.array(splits),
        clothes_type=np.ones(n, np.int64) if clothes_type is None else np.asarray(clothes_type, np.int64),
        category=np.asarray(categories, np.int64), category_names=[f"c{i}" for i in range(num_categories)],
        category_types=np.ones(num_categories, np.int64), attributes=attributes,
        attribute_names=[f"a{j}" for j in range(a)],
        attribute_types=np.ones(a, np.int64) if attribute_types is None else np.asarray(attribute_types, np.int64),
        bbox=np.tile(np.array([0, 0, 100, 100], np.float32), (n, 1)) if bbox is None else np.asarray(bbox, np.float32),
        landmarks=np.zeros((n, 8, 2), np.float32) if landmarks is None else np.asarray(landmarks, np.float32),
        landmark_visibility=(np.full((n, 8), -1, np.int64) if visibility is None
                             else np.asarray(visibility, np.int64)))


# ---------------------------------------------------------------------------------------------------------
# chance


def test_chance_levels_hand_computed():
    # 7 attributes, types [1,1,1,2,2,5,4]; positives img0 {0, 2, 3}, img1 {1, 5}; part (col 6) has none
    labels = np.array([[1, -1, 1, 1, -1, -1, -1], [-1, 1, -1, -1, -1, 1, -1]])
    c = B.chance_levels(labels, [1, 1, 1, 2, 2, 5, 4], num_categories=4, category_ks=(1, 3, 5), attribute_ks=(1,))
    assert c["category_top1"] == pytest.approx(0.25)
    assert c["category_top3"] == pytest.approx(0.75)
    assert c["category_top5"] == 1.0                            # k > C
    assert c["attr_top1_texture"] == pytest.approx(1 / 3)
    assert c["attr_top1_fabric"] == pytest.approx(0.5)
    assert c["attr_top1_style"] == 1.0
    assert math.isnan(c["attr_top1_part"]) and math.isnan(c["attr_top1_shape"])   # no positives / attributes
    assert c["attr_top1_all_grouped"] == pytest.approx((1 / 3 * 3 + 1 / 2 * 1 + 1 * 1) / 5)
    assert c["attr_top1_all_strict"] == pytest.approx(1 / 7)
    # expected AP with 2 images: a column with 1 positive of 2 -> (1/2)(H_2 + 0) = 0.75
    assert c["attr_map_style"] == pytest.approx(0.75)
    assert math.isnan(c["attr_map_part"])


@pytest.mark.parametrize("n,p", [(1, 1), (4, 1), (5, 2), (6, 3), (6, 6)])
def test_expected_random_ap_equals_the_mean_over_all_rankings(n, p):
    # every ranking is equally likely, so every placement of the p positives among the n ranks is too
    scores = np.arange(n, 0, -1, dtype=float)                      # rank 0 first
    aps = [average_precision_score(np.isin(np.arange(n), places).astype(int), scores)
           for places in itertools.combinations(range(n), p)]
    assert B.expected_random_ap(np.array([p]), np.array([n]))[0] == pytest.approx(np.mean(aps), abs=1e-12)
    assert math.isnan(B.expected_random_ap(np.array([0]), np.array([n]))[0])


# ---------------------------------------------------------------------------------------------------------
# priors


def test_class_prior_topk_by_hand():
    # train counts: c0 3, c1 2, c2 1, c3 0, c4 0 -> ranking 0, 1, 2, 3, 4 (c3/c4 tie: lower index first)
    train = [0, 0, 0, 1, 1, 2]
    test = [0, 1, 2, 3, 4, 0]
    ann = toy(train + test, ["train"] * 6 + ["test"] * 6)
    r = B.class_prior(ann, ann.indices("test"), ann.indices("train"))
    assert r["category_top1"] == pytest.approx(2 / 6)     # the two c0 images
    assert r["category_top3"] == pytest.approx(4 / 6)     # c0, c0, c1, c2
    assert r["category_top5"] == 1.0
    assert set(r) == {"category_top1", "category_top3", "category_top5"}


def test_attribute_prior_scores_are_training_rates():
    # 3 attributes of type 1. Train rates (unknown 0 left out): a0 2/2 = 1, a1 1/3, a2 0/2 (one unknown)
    train = [[1, 1, -1], [1, -1, 0], [0, -1, -1]]
    # test: positives img0 {a1}, img1 {a0, a2}; img2 a1 unknown
    test = [[-1, 1, -1], [1, -1, 1], [-1, 0, -1]]
    ann = toy([0] * 6, ["train"] * 3 + ["test"] * 3, attributes=train + test)
    r = B.attribute_prior(ann, ann.indices("test"), ann.indices("train"))
    # every image predicts a0 (1.0) at top-1, a0 a1 at top-2, all at top-3 (k=3 = group size)
    assert r["attr_top3_texture"] == 1.0 and r["attr_top5_all_strict"] == 1.0
    # constant scores: AP = prevalence among known labels: a0 1/3, a1 1/2 (img2 unknown), a2 1/3
    assert r["attr_map_texture"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert r["attr_map_all"] == r["attr_map_texture"]
    assert math.isnan(r["attr_map_fabric"])


def test_conditional_prior_on_two_categories():
    # train: c0 has 2 images (a0 positive in both), c1 has 8 images (a0 never); overall rate 2/10
    cats = [0, 0] + [1] * 8
    attrs = [[1, -1]] * 2 + [[-1, 1]] * 8
    # test: a c0 image with a0, a c1 image without a0, a c1 image with a0
    cats += [0, 1, 1]
    attrs += [[1, -1], [-1, 1], [1, 1]]
    ann = toy(cats, ["train"] * 10 + ["test"] * 3, attributes=attrs, num_categories=2)
    table = B.conditional_attribute_rates(ann, ann.indices("train"), smoothing=10)
    # a0: c0 (2 + 10*0.2) / (2 + 10) = 1/3; c1 (0 + 2) / (8 + 10) = 1/9; a1 overall 0.8:
    #     c0 (0 + 8) / 12 = 2/3; c1 (8 + 8) / 18 = 8/9
    np.testing.assert_allclose(table, [[1 / 3, 2 / 3], [1 / 9, 8 / 9]], rtol=1e-6)
    r = B.attribute_prior_given_category(ann, ann.indices("test"), ann.indices("train"), smoothing=10)
    # a0 scores: 1/3 (pos), 1/9 (neg), 1/9 (pos): sklearn AP = 1 * 1/2 + (2/3) * 1/2 = 5/6
    # a1 scores: 2/3 (neg), 8/9 (pos), 8/9 (pos): the two positives rank first -> AP 1
    assert r["attr_map_texture"] == pytest.approx((5 / 6 + 1) / 2)
    assert r["attr_top3_texture"] == 1.0   # k=3 > 2 attributes: everything predicted


# ---------------------------------------------------------------------------------------------------------
# geometry k-NN


def test_nearest_neighbours_obvious_and_chunked(monkeypatch):
    refs = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [5.0, 5.0]])
    queries = np.array([[9.0, 1.0], [1.0, 9.5], [4.8, 4.9], [-3.0, -3.0]])
    expected = np.array([[1, 4], [2, 4], [4, 0], [0, 4]])
    np.testing.assert_array_equal(B.nearest_neighbours(queries, refs, 2), expected)
    monkeypatch.setattr(B, "QUERY_CHUNK", 3)
    monkeypatch.setattr(B, "REFERENCE_CHUNK", 2)
    np.testing.assert_array_equal(B.nearest_neighbours(queries, refs, 2), expected)
    assert B.nearest_neighbours(queries, refs, 10).shape == (4, 5)   # k capped at the reference count


def _geometry_set():
    """Two shapes: category 0 has the left collar at (10, 10), category 1 at (90, 90); 6 train images
    each, slightly jittered; val and test repeat the pattern."""
    rng = np.random.default_rng(0)
    cats, splits, lms, vis = [], [], [], []
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for c in (0, 1):
            for _ in range(n):
                point = (10.0, 10.0) if c == 0 else (90.0, 90.0)
                lm = np.zeros((8, 2), np.float32)
                lm[0] = np.array(point) + rng.uniform(-2, 2, 2)
                v = np.full(8, -1)
                v[0] = 0
                cats.append(c), splits.append(split), lms.append(lm), vis.append(v)
    attrs = np.where(np.array(cats)[:, None] == np.array([[0, 1]]), 1, -1)   # a0 <=> c0, a1 <=> c1
    return toy(cats, splits, attributes=attrs, num_categories=3, landmarks=lms, visibility=vis)


def test_geometry_knn_finds_the_shape():
    ann = _geometry_set()
    r = B.geometry_knn(ann, ann.indices("test"), ann.indices("train"), ann.indices("val"), ks=(1, 3, 5))
    # every neighbour (k <= 6) has the query's category -> top-1 1.0; ties between k: the smallest wins
    assert r["knn_k"] == 1.0
    assert r["category_top1"] == 1.0
    assert r["attr_top3_texture"] == 1.0
    assert r["attr_map_all"] == 1.0
    assert set(r) - {"knn_k"} <= set(metric_keys())


def test_geometry_features_layout():
    ann = _geometry_set()
    f = B.geometry_features(ann, np.array([0]))
    assert f.shape == (1, 16 + 32 + 3)
    assert f[0, 0] == pytest.approx(ann.landmarks[0, 0, 0] / 100)            # x of slot 0 in crop units
    assert f[0, 2:16].sum() == 0                                             # absent slots: 0
    one_hot_vis = f[0, 16:48].reshape(8, 4)
    np.testing.assert_array_equal(one_hot_vis[0], [0, 1, 0, 0])              # code 0
    np.testing.assert_array_equal(one_hot_vis[1], [1, 0, 0, 0])              # code -1
    np.testing.assert_array_equal(f[0, 48:], [1, 0, 0])                      # clothes type 1


# ---------------------------------------------------------------------------------------------------------
# landmarks


def test_mean_landmarks_by_hand():
    lms = np.zeros((4, 8, 2), np.float32)
    vis = np.full((4, 8), -1)
    lms[0, 0], vis[0, 0] = (20, 40), 0        # train: slot 0 visible at (0.2, 0.4) and (0.4, 0.4)
    lms[1, 0], vis[1, 0] = (40, 40), 0
    lms[1, 1], vis[1, 1] = (50, 50), 1        # occluded: not used for the mean
    lms[2, 0], vis[2, 0] = (30, 70), 0        # test: mean (0.3, 0.4) -> distance 0.3
    lms[3, 0], vis[3, 0] = (60, 40), 0        # distance 0.3
    lms[3, 1], vis[3, 1] = (50, 50), 0        # slot 1 never visible in train -> predicted (0.5, 0.5): 0
    ann = toy([0] * 4, ["train", "train", "test", "test"], landmarks=lms, visibility=vis)
    r = B.mean_landmarks(ann, ann.indices("test"), ann.indices("train"))
    assert r["landmark_ne_l_collar"] == pytest.approx(0.3)
    assert r["landmark_ne_r_collar"] == pytest.approx(0.0)
    assert r["landmark_ne_mean"] == pytest.approx(0.15)
    assert math.isnan(r["landmark_ne_r_hem"])


# ---------------------------------------------------------------------------------------------------------
# the tiny DeepFashion-C tree


def test_crop_units_equal_the_dataset_conversion(tmp_path):
    ann = load_annotations(write_tree(tmp_path))
    rows = np.arange(len(ann))
    sizes = np.array(IMAGE_SIZES)
    units, vis = B.crop_units(ann, rows, sizes)
    for i in rows:
        window = crop_window(ann.bbox[i], tuple(sizes[i]), pad_to_square=False)
        want_units, want_vis = landmarks_in_window(ann.landmarks[i], ann.landmark_visibility[i], window)
        np.testing.assert_array_equal(units[i], want_units)
        np.testing.assert_array_equal(vis[i], want_vis)


def test_crop_units_clamp_boxes_to_the_image():
    lms = np.zeros((2, 8, 2), np.float32)
    lms[:, 0], lms[:, 1] = (40, 30), (60, 30)
    vis = np.zeros((2, 8), np.int64)
    vis[:, 2:] = -1
    boxes = [[-10, -5, 100, 100], [10, 20, 45, 80]]        # past the near and the far edges
    ann = toy([0, 0], ["test", "test"], landmarks=lms, visibility=vis, bbox=boxes)
    sizes = np.array([[50, 90], [50, 90]])
    units, v = B.crop_units(ann, np.arange(2), sizes)
    for i in range(2):
        window = crop_window(ann.bbox[i], tuple(sizes[i]), pad_to_square=False)
        want_units, want_vis = landmarks_in_window(ann.landmarks[i], ann.landmark_visibility[i], window)
        np.testing.assert_array_equal(units[i], want_units)
        np.testing.assert_array_equal(v[i], want_vis)
    assert units[0, 0].tolist() == pytest.approx([0.8, 30 / 90]) and v[0, 1] == 2   # x 60 is outside 0..50


def test_compute_baselines_on_the_tiny_tree(tmp_path, capsys):
    root = write_tree(tmp_path / "tree")
    results = B.compute_baselines(root, "test")
    assert set(results) == set(B.BASELINES)
    # one train image (category 0), test image of category 2: prior ranking 0, 1, 2 -> top-1 miss, top-3 hit
    assert results["class_prior"]["category_top1"] == 0.0
    assert results["class_prior"]["category_top3"] == 1.0
    assert results["chance"]["category_top3"] == pytest.approx(3 / 4)
    assert results["geometry_knn"]["knn_k"] == 1.0          # k capped at the single train image
    allowed = set(metric_keys()) | {"knn_k"}
    for name, metrics in results.items():
        assert set(metrics) <= allowed, name
        assert metrics["n_images"] == 1.0
    assert "landmark_ne_mean" in results["mean_landmarks"] and "category_top1" not in results["mean_landmarks"]
    B.main(["--data-root", str(root), "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert "class_prior" in out and "cat@3" in out
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["class_prior"]["category_top3"] == 1.0


def test_no_train_images_is_an_error():
    ann = toy([0, 1], ["test", "test"])
    with pytest.raises(ValueError, match="no train images"):
        B.baselines(ann, "test")
