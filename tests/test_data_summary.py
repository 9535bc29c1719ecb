"""vfu_nb.data.summary: notebook 01's tables and numbers agree with the annotation arrays they count."""

from __future__ import annotations

import numpy as np

from vfu_nb.conventions import LANDMARK_NAMES, SPLITS
from vfu_nb.data import summary
from vfu_nb.data.annotations import load_annotations


def test_tables_count_what_the_annotations_hold(synth_root):
    ann = load_annotations(synth_root)
    n = len(ann)
    splits = summary.split_table(ann)
    assert list(splits.index) == [*SPLITS, "total"]
    assert splits.loc["total", "total"] == n
    for s in SPLITS:
        assert splits.loc[s, "total"] == (ann.split == s).sum()

    categories = summary.category_table(ann)
    assert len(categories) == len(ann.category_names) and categories["total"].sum() == n
    assert list(categories["total"]) == sorted(categories["total"], reverse=True)
    biggest = int(np.bincount(ann.category).argmax())
    assert categories.index[0] == ann.category_names[biggest]

    attributes = summary.attribute_table(ann)
    assert attributes["positives"].sum() == (ann.attributes == 1).sum()
    assert np.allclose(attributes["frequency"], attributes["positives"] / n)

    visibility = summary.visibility_table(ann)
    assert list(visibility.index) == list(LANDMARK_NAMES)
    assert (visibility.sum(axis=1) == n).all()          # every image has one code per slot

    numbers = summary.summary(ann)
    assert numbers["images"] == n and sum(numbers["images_per_split"].values()) == n
    assert numbers["categories_used"] == len(np.unique(ann.category))
    absent = (ann.landmark_visibility == -1).mean()                # slots a garment type does not have
    assert abs(sum(numbers["visibility_fraction"].values()) + absent - 1.0) < 1e-3
    assert numbers["visibility_fraction"]["visible"] == round(float((ann.landmark_visibility == 0).mean()), 4)
