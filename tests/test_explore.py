"""Notebook 01's baselines table and sentences (vfu_nb.baselines), from hand-made and computed baselines."""

from __future__ import annotations

import math

import pytest

from vfu_nb.baselines import TABLE_COLUMNS, baseline_sentences, baseline_table, compute_baselines

RESULTS = {
    "chance": {"n_images": 600.0, "category_top1": 0.02, "category_top3": 0.06, "attr_top3_all_grouped": 0.25,
               "attr_map_all": 0.12},
    "class_prior": {"n_images": 600.0, "category_top1": 0.14, "category_top3": 0.30},
    "attribute_prior": {"n_images": 600.0, "attr_top3_all_grouped": 0.5, "attr_map_all": 0.11},
    "attribute_prior_given_category": {"n_images": 600.0, "attr_top3_all_grouped": 0.68, "attr_map_all": 0.41},
    "geometry_knn": {"n_images": 600.0, "knn_k": 15.0, "category_top3": 0.55, "attr_map_all": 0.27},
    "mean_landmarks": {"n_images": 600.0, "landmark_ne_mean": 0.1757},
}


def test_baseline_table_rows_columns_and_values():
    table = baseline_table(RESULTS)
    assert list(table.index) == ["chance", "class prior", "attribute prior", "attribute prior given the true category",
                                 "geometry only (k-NN on true landmarks, k = 15)", "mean landmark positions"]
    assert list(table.columns) == list(TABLE_COLUMNS.values())
    assert table.at["class prior", "cat@3"] == 0.30 and table.at["mean landmark positions", "NE"] == 0.1757
    assert table.at["geometry only (k-NN on true landmarks, k = 15)", "mAP all"] == 0.27
    assert math.isnan(table.at["class prior", "mAP all"]) and math.isnan(table.at["chance", "NE"])


def test_one_sentence_per_baseline_computed_from_the_numbers():
    sentences = baseline_sentences(RESULTS)
    assert len(sentences) == len(RESULTS)
    chance, class_prior, prior, given, geometry, landmarks = sentences
    assert chance.startswith("Chance:") and "6.0% of the 600 test images" in chance and "0.120" in chance
    assert "0.300, 5.0 times chance" in class_prior
    assert "50.0% of the positives" in prior and "2.0 times chance" in prior
    assert "0.110" in prior and "below" in prior                    # its mAP against chance's 0.120
    assert "0.680" in given and "0.410" in given and "+0.300" in given  # recall, mAP, gain over the prior
    assert "15 training images" in geometry and "0.550" in geometry and "+0.250" in geometry
    assert "0.176" in landmarks
    above = baseline_sentences({**RESULTS, "attribute_prior": {**RESULTS["attribute_prior"],
                                                                       "attr_map_all": 0.2}})[2]
    assert "0.200" in above and "above" in above
    # a tree without val has no geometry-only baseline: the others still get their sentence
    without = {k: v for k, v in RESULTS.items() if k != "geometry_knn"}
    assert [s.split(":")[0] for s in baseline_sentences(without)] == [
        "Chance", "Class prior", "Attribute prior", "Attribute prior given the true category",
        "Mean landmark positions"]


def test_table_and_sentences_of_computed_baselines(synth_root):
    results = compute_baselines(synth_root, "test")
    table = baseline_table(results)
    assert len(table) == len(results) == len(baseline_sentences(results))
    k = int(results["geometry_knn"]["knn_k"])
    assert table.at[f"geometry only (k-NN on true landmarks, k = {k})", "cat@3"] == \
        pytest.approx(results["geometry_knn"]["category_top3"])
    assert f"{results['class_prior']['category_top3']:.3f}" in baseline_sentences(results)[1]
