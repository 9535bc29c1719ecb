"""What a DeepFashion-C tree holds (notebook 01): images per split and category, attribute frequencies, landmark
visibility, and a summary in plain numbers for ``metrics.json``. The figures of them are in
:mod:`vfu_nb.plots.explore`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vfu_nb.conventions import ATTRIBUTE_TYPE_NAMES, CLOTHES_TYPE_NAMES, LANDMARK_NAMES, SPLITS, VISIBILITY_NAMES
from vfu_nb.data.annotations import Annotations


def split_table(ann: Annotations) -> pd.DataFrame:
    """Images per split and clothes type."""
    df = pd.DataFrame({"split": ann.split, "clothes type": [CLOTHES_TYPE_NAMES[t] for t in ann.clothes_type]})
    table = pd.crosstab(df["split"], df["clothes type"], margins=True, margins_name="total")
    return table.reindex(list(SPLITS) + ["total"])


def category_table(ann: Annotations) -> pd.DataFrame:
    """Images per category and split, all 50 categories (empty ones included), largest first."""
    counts = {s: np.bincount(ann.category[ann.split == s], minlength=len(ann.category_names)) for s in SPLITS}
    df = pd.DataFrame(counts, index=ann.category_names)
    df["type"] = [CLOTHES_TYPE_NAMES[t] for t in ann.category_types]
    df["total"] = df[list(SPLITS)].sum(axis=1)
    return df.sort_values("total", ascending=False)


def attribute_table(ann: Annotations) -> pd.DataFrame:
    """Positive count and frequency of every attribute, with its type."""
    positives = (ann.attributes == 1).sum(axis=0)
    return pd.DataFrame({
        "attribute": ann.attribute_names,
        "type": [ATTRIBUTE_TYPE_NAMES[t] for t in ann.attribute_types],
        "positives": positives,
        "frequency": positives / max(1, len(ann)),
    }).sort_values("positives", ascending=False, ignore_index=True)


def visibility_table(ann: Annotations) -> pd.DataFrame:
    """Counts of each visibility code per landmark slot."""
    rows = {name: [(ann.landmark_visibility[:, s] == v).sum() for v in VISIBILITY_NAMES]
            for s, name in enumerate(LANDMARK_NAMES)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(VISIBILITY_NAMES.values()))


def summary(ann: Annotations) -> dict:
    """Plain numbers about the tree, for ``metrics.json``."""
    positives = (ann.attributes == 1).sum(axis=1)
    return {
        "images": int(len(ann)),
        "images_per_split": {s: int((ann.split == s).sum()) for s in SPLITS},
        "categories": len(ann.category_names),
        "categories_used": int((np.bincount(ann.category, minlength=len(ann.category_names)) > 0).sum()),
        "attributes": len(ann.attribute_names),
        "positive_attributes_per_image": round(float(positives.mean()), 3),
        "visibility_fraction": {VISIBILITY_NAMES[v]: round(float((ann.landmark_visibility == v).mean()), 4)
                                for v in (0, 1, 2)},
    }
