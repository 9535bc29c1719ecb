"""Names, colours and reference numbers shared by the whole project, defined once.

* Landmarks: the 8 slots of DeepFashion-C (``Anno/list_landmarks.txt``) in slot order, their short metric keys,
  the left/right pairs, the slots each clothes type fills, one colour per slot and the visibility codes.
* Labels: clothes types, attribute types (``Anno/list_attr_cloth.txt``), splits, the training loss terms.
* Figures: a colour per model, a readable label per metric.
* Baselines: a readable name per baseline and the baselines each metric is compared with.
* The thesis' numbers and the published DeepFashion-C numbers, each with its source.

Coordinates: landmarks are in crop units, u = x / crop width and v = y / crop height (0..1); a crop unit u sits at
continuous pixel position u * S of an S-pixel crop, so the centre of pixel i is at u = (i + 0.5) / S.

No imports beyond the standard library: every module (data, metrics, plots, widgets) can use this one.
"""

from __future__ import annotations

import math

# ----------------------------------------------------------------------------------------------------------
# Landmarks

LANDMARK_NAMES = ["left collar", "right collar", "left sleeve", "right sleeve",
                  "left waistline", "right waistline", "left hem", "right hem"]
#: Short names used in flat metric keys (``landmark_ne_l_collar`` ...), in slot order.
LANDMARK_KEYS = ("l_collar", "r_collar", "l_sleeve", "r_sleeve", "l_waist", "r_waist", "l_hem", "r_hem")
NUM_LANDMARKS = len(LANDMARK_NAMES)
#: Slots that swap under a horizontal flip.
FLIP_PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7)]
#: Slots filled by the triples of a landmark row, in file order, per clothes type (1 upper, 2 lower, 3 full).
SLOTS_BY_CLOTHES_TYPE = {1: [0, 1, 2, 3, 6, 7], 2: [4, 5, 6, 7], 3: [0, 1, 2, 3, 4, 5, 6, 7]}
#: One colour per slot (matplotlib's tab10, first eight), used by every landmark drawing.
LANDMARK_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
#: Visibility codes of the annotation file (-1: the clothes type has no such landmark).
VISIBILITY_NAMES = {0: "visible", 1: "occluded", 2: "truncated", -1: "absent"}
#: Marker per visibility code (filled circle, cross, triangle).
VISIBILITY_MARKERS = {0: "o", 1: "x", 2: "^"}

# ----------------------------------------------------------------------------------------------------------
# Labels

CLOTHES_TYPE_NAMES = {1: "upper", 2: "lower", 3: "full"}
ATTRIBUTE_TYPE_NAMES = {1: "texture", 2: "fabric", 3: "shape", 4: "part", 5: "style"}
ATTRIBUTE_TYPES = tuple(ATTRIBUTE_TYPE_NAMES.values())
SPLITS = ("train", "val", "test")
#: Loss terms the trainer logs per batch: the unweighted task losses and their weighted total.
LOSS_TERMS = ("category", "attribute", "landmark", "total")

# ----------------------------------------------------------------------------------------------------------
# Figures

#: Colours of the models the figures compare most; any other model gets one from :func:`model_color`.
MODEL_COLORS = {"mtl": "tab:blue", "cat": "tab:orange", "mtl_no_landmarks": "tab:gray", "mtl_pool": "tab:green",
                "mtl_bi": "tab:purple", "mtl_no_attention": "tab:brown"}
#: Colours for models without an entry in MODEL_COLORS (tab10's that MODEL_COLORS leaves free).
OTHER_MODEL_COLORS = ("tab:red", "tab:pink", "tab:olive", "tab:cyan")
#: One colour per attribute type (tab10, first five).
ATTRIBUTE_TYPE_COLORS = dict(zip(ATTRIBUTE_TYPES, LANDMARK_COLORS[:5]))
METRIC_LABELS = {
    "category_top1": "top-1 category accuracy",
    "category_top3": "top-3 category accuracy",
    "attr_map_all": "attribute mAP",
    "attr_top3_all_grouped": "top-3 attribute recall (all types pooled)",
    "landmark_ne_mean": "landmark NE (lower is better)",
    **{f"attr_top3_{t}": f"top-3 {t} recall" for t in ATTRIBUTE_TYPES},
    **{f"attr_map_{t}": f"{t} attribute mAP" for t in ATTRIBUTE_TYPES},
}
LOWER_IS_BETTER = {"landmark_ne_mean"}


def model_color(model: str) -> str:
    """The colour of ``model`` (a name of ``vfu_nb.models.MODEL_NAMES``, any case) in every figure: its entry in
    :data:`MODEL_COLORS`, else one of :data:`OTHER_MODEL_COLORS` chosen by the name (the same in every run)."""
    name = model.lower()
    if name in MODEL_COLORS:
        return MODEL_COLORS[name]
    return OTHER_MODEL_COLORS[sum(name.encode()) % len(OTHER_MODEL_COLORS)]


def metric_label(metric: str) -> str:
    """A readable name of a metric key (the key itself when it has none)."""
    return METRIC_LABELS.get(metric, metric)


# ----------------------------------------------------------------------------------------------------------
# Baselines (vfu_nb.baselines): their readable names and the ones each metric is compared with

#: Readable names of the baselines of :mod:`vfu_nb.baselines`.
BASELINE_LABELS = {
    "chance": "chance",
    "class_prior": "class prior",
    "attribute_prior": "attribute prior",
    "attribute_prior_given_category": "attribute prior given the true category",
    "geometry_knn": "geometry only (k-NN on true landmarks)",
    "mean_landmarks": "mean landmark positions",
}
#: The baselines each kind of metric (by key prefix) is compared with, in figures and sentences: the ones a model
#: has to beat to mean something.
REFERENCE_BASELINES = {"category_top": ("class_prior", "geometry_knn"),
                       "attr_": ("attribute_prior_given_category",),
                       "landmark_ne": ("mean_landmarks",)}


def baseline_label(name: str, metrics=None) -> str:
    """A readable name of baseline ``name``; the geometry-only k-NN names its k when ``metrics`` has ``knn_k``."""
    text = BASELINE_LABELS.get(name, name.replace("_", " "))
    k = (metrics or {}).get("knn_k")
    k = float("nan") if k is None else float(k)
    if name == "geometry_knn" and math.isfinite(k):
        text = text[:-1] + f", k = {int(k)})"
    return text


def reference_baselines(metric: str) -> tuple:
    """The baselines compared with ``metric`` (:data:`REFERENCE_BASELINES`; none for other metrics)."""
    return next((names for prefix, names in REFERENCE_BASELINES.items() if metric.startswith(prefix)), ())


# ----------------------------------------------------------------------------------------------------------
# Reference numbers (DeepFashion-C Category and Attribute Prediction benchmark, 40,000-image test split)

#: How every category number below is defined.
CATEGORY_CONVENTION = ("top-3 category accuracy: fraction of test images whose true category is among the 3 "
                       "highest-scoring categories")

#: Thesis Table 3.1: MTL top-3 recall per attribute type on DeepFashion-C test, best (test) epoch 3.
THESIS_TABLE_3_1 = {"texture": 0.5298, "fabric": 0.4359, "shape": 0.5528, "part": 0.4677, "style": 0.3169}

#: The thesis' two relative improvements (section 3.3) with the best-epoch values they come from.
THESIS_IMPROVEMENTS = {
    "category_top3": {"mtl": 0.8605, "cat": 0.5621, "claimed": 0.53},
    "attr_top3_texture": {"mtl": 0.5287, "cat": 0.2124, "claimed": 1.49},
}

LIU_LU_2018 = ("Liu & Lu, ECCV Workshops 2018 (Deep Fashion Analysis with Feature Map Upsampling and "
               "Landmark-driven Attention)")
WANG_2018 = "Wang et al., CVPR 2018 (Attentive Fashion Grammar Network, AFGN)"
LIU_2016 = "Liu et al., CVPR 2016 (DeepFashion, FashionNet)"
HUANG_2015 = "Huang et al., ICCV 2015 (Dual Attribute-aware Ranking Network, DARN)"
LIU_LU_CODE = ("Liu & Lu's released code (github.com/fdjingyuan/Deep-Fashion-Analysis-ECCV2018), "
               "reproduction reported in its issue #12")

#: Thesis Table 3.2 and the published systems it lists, with the source of each number.
PUBLISHED_CATEGORY_TOP3 = [
    {"method": "thesis MTL", "top3": 0.8605, "selection": "best test epoch (3)",
     "source": "thesis Table 3.2, Fig. 3.11"},
    {"method": "thesis CAT", "top3": 0.5621, "selection": "best test epoch (4)",
     "source": "thesis Fig. 3.11 text (Table 3.2 rounds to 0.562)"},
    {"method": "Liu & Lu 2018 (landmark-driven attention)", "top3": 0.9116, "selection": "test (released code)",
     "source": LIU_LU_2018},
    {"method": "Wang et al. 2018 (AFGN)", "top3": 0.9099, "selection": "paper", "source": WANG_2018},
    {"method": "FashionNet, Liu et al. 2016 (thesis: 'Luo et al. [19]')", "top3": 0.8258, "selection": "paper",
     "source": LIU_2016},
    {"method": "DARN, Huang et al. 2015", "top3": 0.5948, "selection": "paper",
     "source": f"{HUANG_2015}, as tabulated by {LIU_2016}"},
]

#: Published top-3 attribute recall per type. The thesis MTL row is Table 3.1; "thesis CAT" has only the texture
#: value of Fig. 3.12. No released code reproduces the papers' ~0.66-0.69 style recalls (the reproduction row).
PUBLISHED_ATTRIBUTE_TOP3 = {
    "thesis MTL": THESIS_TABLE_3_1,
    "thesis MTL (Fig. 3.12)": {"texture": 0.5287},
    "thesis CAT (Fig. 3.12)": {"texture": 0.2124},
    "FashionNet 2016": {"texture": 0.3746, "fabric": 0.3930, "shape": 0.3947, "part": 0.4413, "style": 0.6643},
    "AFGN 2018": {"texture": 0.5031, "fabric": 0.4031, "shape": 0.5332, "part": 0.4065, "style": 0.6870},
    "Liu & Lu 2018": {"texture": 0.5617, "fabric": 0.4320, "shape": 0.5828, "part": 0.4697, "style": 0.6882},
    "Liu & Lu code, reproduction": {"texture": 0.5685, "fabric": 0.4335, "shape": 0.5799, "part": 0.4326,
                                    "style": 0.3254},
}
#: Where each row of :data:`PUBLISHED_ATTRIBUTE_TOP3` comes from.
PUBLISHED_ATTRIBUTE_SOURCES = {
    "thesis MTL": "thesis Table 3.1", "thesis MTL (Fig. 3.12)": "thesis Fig. 3.12",
    "thesis CAT (Fig. 3.12)": "thesis Fig. 3.12", "FashionNet 2016": LIU_2016, "AFGN 2018": WANG_2018,
    "Liu & Lu 2018": LIU_LU_2018, "Liu & Lu code, reproduction": LIU_LU_CODE,
}
