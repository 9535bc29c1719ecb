"""Synthetic DeepFashion-C benchmark generator.

Writes a directory tree that a DeepFashion-C reader cannot tell from the real dataset
(``Anno/*.txt``, ``Eval/list_eval_partition.txt``, ``img/<Item_Folder>/img_XXXXXXXX.jpg``), filled with
procedurally drawn garments. The scenes are built so that landmark knowledge is *useful but not
required*: every piece of category/attribute evidence sits at a garment's functional points (collar,
sleeve ends, waistline, hem), while background clutter re-uses the garment textures and colours,
occluders hide landmarks (visibility 1) and the frame truncates garments (visibility 2).

Labels come only from what is rendered: a garment is first sampled as a *spec* (one value per feature
slot: texture, fabric, neckline, sleeve length, fit, length, closure, pockets, ...), the attribute labels
are a pure function of that spec, and the drawing code renders exactly that spec.

Usage::

    python -m vfu_nb.synthetic --out data/synth --n 6000 --seed 0 [--workers 2]

    from vfu_nb.synthetic import generate
    summary = generate("data/synth", n=6000, seed=0)

Determinism: image ``i`` is drawn from ``SeedSequence(seed, spawn_key=(1, i))`` only, so the output is
byte-identical for any number of workers (on one platform/library stack) and the first ``k`` images
of a run equal those of any larger run with the same seed. Workers (a fork pool where available)
write their own JPEGs; the parent writes the annotation files in index order. ``synthetic.json`` is
written last; a tree without it (or with ``.synthetic_incomplete``) is an interrupted run.

Format decisions where the real data is silent: landmark x/y use the same 1-based pixel index as the
boxes (``floor(x) + 1``); truncated landmarks (visibility 2) are clamped into ``1..W`` / ``1..H``;
boxes are the 1-based inclusive extent of the garment pixels (occluded parts included) clipped to
the image, widened if needed to contain the clamped landmarks.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vfu_nb.annotations import (
    ANNOTATION_FILES, NAME_COLUMN, SLOTS_BY_CLOTHES_TYPE, Annotations, write_annotations,
)

VERSION = 1
MAX_SIDE = 300
JPEG_QUALITY = 85
SPLIT_BLOCK = ("train",) * 14 + ("val",) * 3 + ("test",) * 3  # 70/15/15 in every 20 consecutive rows
MARKER_DONE = "synthetic.json"
MARKER_BUSY = ".synthetic_incomplete"

# --------------------------------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------------------------------

#: The real DeepFashion-C category vocabulary (name, category_type), in file order (1-based ids).
DEEPFASHION_CATEGORIES: list[tuple[str, int]] = [
    ("Anorak", 1), ("Blazer", 1), ("Blouse", 1), ("Bomber", 1), ("Button-Down", 1), ("Cardigan", 1),
    ("Flannel", 1), ("Halter", 1), ("Henley", 1), ("Hoodie", 1), ("Jacket", 1), ("Jersey", 1),
    ("Parka", 1), ("Peacoat", 1), ("Poncho", 1), ("Sweater", 1), ("Tank", 1), ("Tee", 1), ("Top", 1),
    ("Turtleneck", 1),
    ("Capris", 2), ("Chinos", 2), ("Culottes", 2), ("Cutoffs", 2), ("Gauchos", 2), ("Jeans", 2),
    ("Jeggings", 2), ("Jodhpurs", 2), ("Joggers", 2), ("Leggings", 2), ("Sarong", 2), ("Shorts", 2),
    ("Skirt", 2), ("Sweatpants", 2), ("Sweatshorts", 2), ("Trunks", 2),
    ("Caftan", 3), ("Cape", 3), ("Coat", 3), ("Coverup", 3), ("Dress", 3), ("Jumpsuit", 3),
    ("Kaftan", 3), ("Kimono", 3), ("Nightdress", 3), ("Onesie", 3), ("Robe", 3), ("Romper", 3),
    ("Shirtdress", 3), ("Sundress", 3),
]
_CATEGORY_ID = {name: i + 1 for i, (name, _) in enumerate(DEEPFASHION_CATEGORIES)}
_CATEGORY_TYPE = dict(DEEPFASHION_CATEGORIES)

_ATTRIBUTE_GROUPS = {
    1: ["chevron", "floral", "leopard", "plaid", "polka dot", "solid", "striped"],
    2: ["denim", "knit", "lace", "leather", "satin", "sheer"],
    3: ["cropped", "fitted", "flared", "maxi", "mini", "oversized"],
    4: ["belted", "buttoned", "collared", "crew neck", "cuffed", "drawstring", "fringe hem", "hooded",
        "long sleeve", "pockets", "ruffle hem", "scoop neck", "short sleeve", "sleeveless", "v-neck",
        "zip-up"],
    5: ["earth tone", "graphic", "monochrome", "neon", "pastel"],
}
#: The synthetic attribute vocabulary (name, attribute_type), sorted by name like the real file.
SYNTHETIC_ATTRIBUTES: list[tuple[str, int]] = sorted(
    (name, t) for t, names in _ATTRIBUTE_GROUPS.items() for name in names)
_ATTRIBUTE_INDEX = {name: i for i, (name, _) in enumerate(SYNTHETIC_ATTRIBUTES)}


# --------------------------------------------------------------------------------------------------
# Garment specs: feature slots, their labels, and per-category distributions
# --------------------------------------------------------------------------------------------------

#: slot -> {value: attribute name}; values missing from the map (and None) carry no label.
_SLOT_LABELS: dict[str, dict[str, str]] = {
    "texture": {t: t for t in _ATTRIBUTE_GROUPS[1]},
    "fabric": {f: f for f in _ATTRIBUTE_GROUPS[2]},
    "neck": {"crew": "crew neck", "scoop": "scoop neck", "v": "v-neck", "collar": "collared",
             "lapel": "collared", "hood": "hooded"},
    "sleeve": {"none": "sleeveless", "short": "short sleeve", "long": "long sleeve"},
    "fit": {"fitted": "fitted", "oversized": "oversized"},
    "length": {"cropped": "cropped", "maxi": "maxi", "mini": "mini"},
    "flare": {"flared": "flared"},
    "closure": {"buttons": "buttoned", "zip": "zip-up"},
    "pockets": {"pockets": "pockets"},
    "belt": {"belt": "belted"},
    "drawstring": {"drawstring": "drawstring"},
    "cuffs": {"cuffs": "cuffed"},
    "hem_trim": {"ruffle": "ruffle hem", "fringe": "fringe hem"},
    "palette": {"pastel": "pastel", "neon": "neon", "monochrome": "monochrome", "earth": "earth tone"},
    "graphic": {"graphic": "graphic"},
}
_SLOTS = list(_SLOT_LABELS)
_MIN_POSITIVES, _MAX_POSITIVES = 2, 5
_OPTIONAL_RATE = 0.4  # relative weight of a labelled value in a slot that may stay empty

_DEFAULT_SLOTS = {
    "texture": {"solid": .34, "striped": .14, "polka dot": .10, "plaid": .10, "floral": .12,
                "chevron": .08, "leopard": .12},
    "fabric": {None: .55, "knit": .09, "denim": .06, "lace": .07, "leather": .06, "satin": .09,
               "sheer": .08},
    "palette": {"default": .60, "pastel": .10, "neon": .08, "monochrome": .12, "earth": .10},
}
_TOP_GRAPHIC = {None: .85, "graphic": .15}


@dataclass(frozen=True)
class _Style:
    """How a rendered category is built: its lower part, cut flags and slot distributions."""

    bottom: str | None  # None: upper body only; "skirt" / "legs": lower part; "long": long upper body
    slots: dict
    legs: str = ""  # leg cut for bottom == "legs": tight, straight, jogger, shorts, wide
    open_front: bool = False
    rib_bands: bool = False
    kimono: bool = False
    strap: float = 0.26  # shoulder strap width when sleeveless


_STYLES: dict[str, _Style] = {
    "Tee": _Style(None, dict(
        sleeve={"short": 1}, neck={"crew": .55, "v": .30, "scoop": .15},
        fit={None: .6, "fitted": .2, "oversized": .2}, length={None: .8, "cropped": .2},
        closure={None: .9, "buttons": .1}, pockets={None: .85, "pockets": .15},
        cuffs={None: .85, "cuffs": .15}, hem_trim={None: .9, "ruffle": .05, "fringe": .05},
        graphic={None: .7, "graphic": .3})),
    "Tank": _Style(None, dict(
        sleeve={"none": 1}, neck={"scoop": .55, "v": .30, "crew": .15},
        fit={None: .6, "fitted": .3, "oversized": .1}, length={None: .75, "cropped": .25},
        flare={None: .85, "flared": .15}, hem_trim={None: .8, "ruffle": .1, "fringe": .1},
        graphic={None: .8, "graphic": .2}), strap=0.17),
    "Blouse": _Style(None, dict(
        sleeve={"long": .65, "short": .35}, neck={"v": .4, "collar": .3, "scoop": .2, "crew": .1},
        fit={None: .6, "oversized": .25, "fitted": .15}, length={None: .85, "cropped": .15},
        flare={None: .6, "flared": .4}, closure={None: .5, "buttons": .5},
        cuffs={None: .6, "cuffs": .4}, hem_trim={None: .7, "ruffle": .3},
        fabric={None: .3, "sheer": .2, "satin": .2, "lace": .2, "knit": .05, "denim": .05},
        graphic={None: .95, "graphic": .05})),
    "Jacket": _Style(None, dict(
        sleeve={"long": 1}, neck={"lapel": .6, "collar": .25, "crew": .15},
        closure={"zip": .45, "buttons": .45, None: .1}, pockets={"pockets": .6, None: .4},
        belt={None: .85, "belt": .15}, fit={None: .6, "fitted": .15, "oversized": .25},
        length={None: .8, "cropped": .2}, cuffs={None: .6, "cuffs": .4},
        fabric={None: .35, "denim": .25, "leather": .25, "knit": .05, "satin": .05, "lace": .05}),
        open_front=True),
    "Hoodie": _Style(None, dict(
        sleeve={"long": 1}, neck={"hood": 1}, closure={None: .6, "zip": .4},
        pockets={"pockets": .7, None: .3}, drawstring={"drawstring": .6, None: .4},
        cuffs={"cuffs": .8, None: .2}, fit={None: .55, "oversized": .35, "fitted": .1},
        length={None: .85, "cropped": .15},
        fabric={None: .6, "knit": .35, "denim": .02, "leather": .01, "satin": .02},
        graphic={None: .75, "graphic": .25}), rib_bands=True),
    "Sweater": _Style(None, dict(
        sleeve={"long": 1}, neck={"crew": .6, "v": .25, "scoop": .1, "collar": .05},
        closure={None: .9, "buttons": .1}, cuffs={"cuffs": .7, None: .3},
        fit={None: .5, "oversized": .35, "fitted": .15}, length={None: .8, "cropped": .2},
        hem_trim={None: .9, "fringe": .1},
        fabric={"knit": .65, None: .3, "lace": .03, "satin": .02},
        graphic={None: .9, "graphic": .1}), rib_bands=True),
    "Shorts": _Style("legs", dict(
        fit={None: .8, "fitted": .2}, flare={None: .8, "flared": .2}, pockets={"pockets": .5, None: .5},
        belt={None: .8, "belt": .2}, drawstring={None: .75, "drawstring": .25},
        cuffs={None: .7, "cuffs": .3}, hem_trim={None: .85, "fringe": .15},
        fabric={None: .5, "denim": .3, "knit": .05, "lace": .05, "leather": .05, "satin": .05}),
        legs="shorts"),
    "Skirt": _Style("skirt", dict(
        length={None: .45, "mini": .3, "maxi": .25}, flare={None: .5, "flared": .5},
        fit={None: .75, "fitted": .25}, pockets={None: .85, "pockets": .15},
        belt={None: .8, "belt": .2}, hem_trim={None: .7, "ruffle": .2, "fringe": .1},
        fabric={None: .4, "denim": .1, "lace": .12, "knit": .06, "leather": .1, "satin": .12,
                "sheer": .1})),
    "Jeans": _Style("legs", dict(
        length={None: .8, "cropped": .2}, flare={None: .75, "flared": .25},
        fit={None: .6, "fitted": .4}, pockets={"pockets": .85, None: .15}, belt={None: .8, "belt": .2},
        cuffs={None: .75, "cuffs": .25}, hem_trim={None: .9, "fringe": .1},
        fabric={"denim": .8, None: .15, "leather": .05}), legs="straight"),
    "Leggings": _Style("legs", dict(
        fit={"fitted": 1}, length={None: .75, "cropped": .25}, flare={None: .9, "flared": .1},
        pockets={None: .9, "pockets": .1},
        fabric={None: .5, "knit": .2, "leather": .2, "sheer": .05, "satin": .05}), legs="tight"),
    "Joggers": _Style("legs", dict(
        cuffs={"cuffs": .9, None: .1}, drawstring={"drawstring": .6, None: .4},
        pockets={"pockets": .5, None: .5}, fit={None: .8, "oversized": .2},
        length={None: .85, "cropped": .15},
        fabric={None: .5, "knit": .4, "satin": .05, "leather": .05}), legs="jogger"),
    "Dress": _Style("skirt", dict(
        sleeve={"none": .45, "short": .35, "long": .2},
        neck={"v": .3, "scoop": .25, "crew": .25, "collar": .2},
        length={None: .4, "mini": .3, "maxi": .3}, flare={None: .5, "flared": .5},
        fit={None: .6, "fitted": .3, "oversized": .1}, closure={None: .8, "buttons": .15, "zip": .05},
        pockets={None: .85, "pockets": .15}, belt={None: .7, "belt": .3},
        drawstring={None: .95, "drawstring": .05}, cuffs={None: .9, "cuffs": .1},
        hem_trim={None: .75, "ruffle": .2, "fringe": .05}, graphic={None: .9, "graphic": .1},
        fabric={None: .4, "lace": .15, "satin": .15, "sheer": .1, "knit": .1, "denim": .05,
                "leather": .05})),
    "Jumpsuit": _Style("legs", dict(
        sleeve={"none": .5, "short": .3, "long": .2},
        neck={"v": .35, "scoop": .2, "crew": .2, "collar": .25},
        length={None: .8, "cropped": .2}, flare={None: .6, "flared": .4},
        fit={None: .7, "fitted": .2, "oversized": .1}, closure={None: .6, "buttons": .25, "zip": .15},
        pockets={None: .65, "pockets": .35}, belt={None: .6, "belt": .4},
        drawstring={None: .9, "drawstring": .1}, cuffs={None: .85, "cuffs": .15}), legs="wide"),
    "Romper": _Style("legs", dict(
        sleeve={"none": .5, "short": .4, "long": .1},
        neck={"v": .35, "scoop": .3, "crew": .2, "collar": .15}, flare={None: .7, "flared": .3},
        fit={None: .7, "fitted": .2, "oversized": .1}, closure={None: .7, "buttons": .3},
        pockets={None: .75, "pockets": .25}, belt={None: .65, "belt": .35},
        drawstring={None: .85, "drawstring": .15}, cuffs={None: .85, "cuffs": .15},
        hem_trim={None: .85, "fringe": .15}), legs="shorts"),
    "Coat": _Style("long", dict(
        sleeve={"long": 1}, neck={"lapel": .75, "hood": .15, "collar": .1},
        closure={"buttons": .65, "zip": .25, None: .1}, pockets={"pockets": .55, None: .45},
        belt={None: .65, "belt": .35}, fit={None: .6, "oversized": .3, "fitted": .1},
        flare={None: .8, "flared": .2}, cuffs={None: .7, "cuffs": .3},
        fabric={None: .6, "leather": .15, "knit": .1, "denim": .05, "satin": .05, "lace": .05}),
        open_front=True),
    "Kimono": _Style("long", dict(
        sleeve={"long": 1}, neck={"v": 1}, belt={"belt": .55, None: .45},
        length={None: .55, "maxi": .3, "cropped": .15}, hem_trim={None: .75, "fringe": .25},
        fabric={None: .45, "satin": .25, "sheer": .2, "lace": .1},
        texture={"floral": .35, "solid": .2, "striped": .1, "polka dot": .05, "plaid": .05,
                 "chevron": .1, "leopard": .15}), open_front=True, kimono=True),
}

#: Real DeepFashion-C image counts of the rendered categories; sampling weights are count ** 0.75
#: (a long tail, tempered so that the rarest class still has ~1.5 % of the images).
_REAL_COUNTS = {"Tee": 36887, "Tank": 15429, "Blouse": 24557, "Jacket": 10467, "Hoodie": 4048,
                "Sweater": 13123, "Shorts": 19666, "Skirt": 14773, "Jeans": 7076, "Leggings": 5013,
                "Joggers": 4416, "Dress": 72158, "Jumpsuit": 6153, "Romper": 7408, "Coat": 2120,
                "Kimono": 2294}
#: The rendered categories, in vocabulary order.
RENDERED_CATEGORIES: list[str] = [name for name, _ in DEEPFASHION_CATEGORIES if name in _STYLES]


def category_weights() -> dict[str, float]:
    """Sampling probability of each rendered category (long-tailed, sums to 1)."""
    raw = {name: _REAL_COUNTS[name] ** 0.75 for name in RENDERED_CATEGORIES}
    total = sum(raw.values())
    return {name: w / total for name, w in raw.items()}


def _slot_distribution(style: _Style, clothes_type: int, slot: str) -> dict:
    """The value distribution of `slot` for a category (None-only when the slot does not apply)."""
    if slot in style.slots:
        return style.slots[slot]
    if slot in _DEFAULT_SLOTS:
        return _DEFAULT_SLOTS[slot]
    if slot == "graphic" and clothes_type != 2:
        return _TOP_GRAPHIC
    return {None: 1.0}


def _choice(rng: np.random.Generator, dist: dict):
    """Draw one key of a {value: weight} dict."""
    keys = list(dist)
    cumulative = np.cumsum([dist[k] for k in keys])
    return keys[min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], "right")),
                    len(keys) - 1)]


def spec_labels(spec: dict) -> list[str]:
    """The positive attribute names of a garment spec (a pure function of what is drawn)."""
    return [_SLOT_LABELS[s][spec[s]] for s in _SLOTS if spec.get(s) in _SLOT_LABELS[s]]


def _empty(slot: str):
    """The unlabelled value of a slot."""
    return "default" if slot == "palette" else None


def _applicable(spec: dict, slot: str, value) -> bool:
    """Whether `value` can be drawn given the slots sampled before it (labels must be rendered)."""
    if value == _empty(slot):
        return True
    bottom = _STYLES[spec["category"]].bottom
    ends = {"cuffs": spec.get("cuffs"), "hem_trim": spec.get("hem_trim"), slot: value}
    if bottom == "legs" and ends["cuffs"] == "cuffs" and ends["hem_trim"] == "fringe":
        return False  # a trouser leg ends either in a cuff band or in a fringe
    if slot == "cuffs":
        return spec.get("sleeve") not in (None, "none") or bottom == "legs"
    if slot == "belt":
        return not (bottom is None and spec.get("length") == "cropped")
    if slot == "drawstring":  # cords hang from a hood or from a waist
        return bottom is not None or spec.get("neck") == "hood"
    return True


def _draw_slot(spec: dict, slot: str, dist: dict, rng: np.random.Generator):
    """Sample a slot value among the applicable ones.

    In slots that can be empty, labelled values are thinned by _OPTIONAL_RATE (keeps images sparse).
    """
    thin = _OPTIONAL_RATE if dist.get(_empty(slot), 0) > 0 else 1.0
    ok = {k: w * (thin if k in _SLOT_LABELS[slot] else 1.0) for k, w in dist.items()
          if w > 0 and _applicable(spec, slot, k)}
    return _choice(rng, ok) if ok else _empty(slot)


def _labelled_options(spec: dict, slot: str, dist: dict) -> dict:
    """The applicable labelled values of a slot, with their weights."""
    return {k: w for k, w in dist.items()
            if w > 0 and k in _SLOT_LABELS[slot] and _applicable(spec, slot, k)}


def sample_spec(category: str, rng: np.random.Generator, forced: dict | None = None) -> dict:
    """Sample a garment spec with 2..5 positive attributes; `forced` slots (product title) are kept.

    Slots that cannot be empty for the category (texture, neckline, sleeve length, implied cuts) are
    never dropped; other labelled features are dropped at random above the maximum and added at random
    below the minimum, so the labels stay a function of what is drawn.
    """
    style, ctype = _STYLES[category], _CATEGORY_TYPE[category]
    forced = dict(forced or {})
    dists = {s: _slot_distribution(style, ctype, s) for s in _SLOTS}
    spec: dict = {"category": category}
    for slot in _SLOTS:
        spec[slot] = forced[slot] if slot in forced else _draw_slot(spec, slot, dists[slot], rng)
    optional = [s for s in _SLOTS if s not in forced and dists[s].get(_empty(s), 0) > 0]
    while len(spec_labels(spec)) > _MAX_POSITIVES:
        labelled = [s for s in optional if spec[s] in _SLOT_LABELS[s]]
        if not labelled:
            break
        slot = labelled[int(rng.integers(len(labelled)))]
        spec[slot] = _empty(slot)
    while len(spec_labels(spec)) < _MIN_POSITIVES:
        free = [s for s in optional if spec[s] == _empty(s) and _labelled_options(spec, s, dists[s])]
        if not free:
            break
        slot = free[int(rng.integers(len(free)))]
        spec[slot] = _choice(rng, _labelled_options(spec, slot, dists[slot]))
    return spec


def attribute_vector(spec: dict) -> list[int]:
    """+1/-1 per entry of SYNTHETIC_ATTRIBUTES."""
    vec = [-1] * len(SYNTHETIC_ATTRIBUTES)
    for name in spec_labels(spec):
        vec[_ATTRIBUTE_INDEX[name]] = 1
    return vec


# --------------------------------------------------------------------------------------------------
# Planning: folders, file names, categories, splits (cheap, no rendering)
# --------------------------------------------------------------------------------------------------

_NEUTRAL_WORDS = ["Classic", "Everyday", "Soft", "Weekend", "Essential", "City", "Vintage", "Studio",
                  "Summer", "Winter", "Easy", "Favorite", "Basic", "Modern", "Garden", "Urban",
                  "Sunset", "Coastal", "Retro", "Cozy", "Daily", "Breezy", "Midnight", "Meadow",
                  "Harbor", "Lucky", "Sunny", "Wild", "Simple", "Dreamy", "Ocean", "Festival"]
_FOLDER_SIZE = (10, 50)  # images per folder, uniform inclusive


@dataclass(frozen=True)
class ImagePlan:
    """Everything about image `index` that is fixed before rendering."""

    index: int
    name: str  # img/<Item_Folder>/img_XXXXXXXX.jpg
    category: str
    forced: tuple = ()  # ((slot, value), ...) shared by every image of the folder (product title)
    split: str = "train"

    @property
    def label(self) -> int:
        """1-based category label of the real vocabulary."""
        return _CATEGORY_ID[self.category]

    @property
    def clothes_type(self) -> int:
        return _CATEGORY_TYPE[self.category]


def _title_word(value: str) -> str:
    """'polka dot' -> 'Polka_Dot'."""
    return "_".join(w.capitalize() for w in value.split())


def _product(category: str, rng: np.random.Generator, used: set) -> tuple[str, tuple]:
    """A unique product-title folder name ending in the category word, and its forced slots."""
    style, ctype = _STYLES[category], _CATEGORY_TYPE[category]
    forced = {}
    if rng.random() < 0.45:
        forced["texture"] = _choice(rng, _slot_distribution(style, ctype, "texture"))
    fabric = _choice(rng, _slot_distribution(style, ctype, "fabric"))
    if fabric is not None and rng.random() < 0.5:
        forced["fabric"] = fabric
    words = [_title_word(v) for v in forced.values()] + [category]
    n_neutral = int(rng.integers(0 if forced else 1, 3))
    for _ in range(n_neutral):
        words.insert(0, _NEUTRAL_WORDS[int(rng.integers(len(_NEUTRAL_WORDS)))])
    name = "_".join(words)  # at most 46 characters, so image names stay shorter than column 71
    while name in used:
        extra = _NEUTRAL_WORDS[int(rng.integers(len(_NEUTRAL_WORDS)))]
        name = f"{extra}_{name}" if len(name) < 38 else f"{extra}_{len(used)}_{category}"
    used.add(name)
    return name, tuple(sorted(forced.items()))


def _next_category(counts: dict, total: int, size: int, rng: np.random.Generator) -> str:
    """Category of the next folder: the largest deficit against the long-tailed target, jittered."""
    weights = category_weights()
    deficit = {c: weights[c] * (total + size) - counts[c] + rng.random() * 0.4 * size
               for c in RENDERED_CATEGORIES}
    return max(RENDERED_CATEGORIES, key=lambda c: deficit[c])


def plan_split(n: int, seed: int) -> list[str]:
    """train/val/test per row: every block of 20 consecutive rows is a permutation of 14/3/3."""
    out = []
    for block in range(0, n, len(SPLIT_BLOCK)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, block)))
        out.extend(SPLIT_BLOCK[i] for i in rng.permutation(len(SPLIT_BLOCK)))
    return out[:n]


def plan_images(n: int, seed: int = 0) -> list[ImagePlan]:
    """Names, categories, product slots and splits of `n` images (a prefix of any larger plan)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    splits = plan_split(n, seed)
    counts = {c: 0 for c in RENDERED_CATEGORIES}
    used: set = set()
    plans: list[ImagePlan] = []
    while len(plans) < n:
        size = int(rng.integers(_FOLDER_SIZE[0], _FOLDER_SIZE[1] + 1))
        category = _next_category(counts, len(plans), size, rng)
        folder, forced = _product(category, rng, used)
        size = min(size, n - len(plans))
        counts[category] += size
        for k in range(size):
            i = len(plans)
            plans.append(ImagePlan(i, f"img/{folder}/img_{k + 1:08d}.jpg", category, forced, splits[i]))
    return plans


# --------------------------------------------------------------------------------------------------
# Colours and textures (vectorised over arrays of garment coordinates u, v)
# --------------------------------------------------------------------------------------------------

_NEON_HUES = (0.92, 0.20, 0.08, 0.50, 0.33, 0.80)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _palette_color(palette: str, rng: np.random.Generator) -> np.ndarray:
    """One RGB colour (0..255) from a named palette; 'default' avoids every named region."""
    if palette == "pastel":
        return _hsv(rng.random(), rng.uniform(.18, .38), rng.uniform(.88, 1.))
    if palette == "neon":
        return _hsv(_NEON_HUES[int(rng.integers(len(_NEON_HUES)))] + rng.uniform(-.02, .02),
                    rng.uniform(.85, 1.), rng.uniform(.95, 1.))
    if palette == "monochrome":
        return _hsv(0., 0., rng.uniform(.04, .96))
    if palette == "earth":
        return _hsv(rng.uniform(.05, .16), rng.uniform(.35, .7), rng.uniform(.3, .65))
    return _hsv(rng.uniform(.17, 1.04), rng.uniform(.5, .9), rng.uniform(.35, .85))


def _palette_colors(palette: str, rng: np.random.Generator) -> np.ndarray:
    """Three mutually contrasting colours (3, 3) of one palette."""
    colors = [_palette_color(palette, rng)]
    while len(colors) < 3:
        c = _palette_color(palette, rng)
        if all(np.abs(c - o).sum() > 120 for o in colors) or rng.random() < 0.05:
            colors.append(c)
    return np.stack(colors)


def _random_palette(rng: np.random.Generator) -> str:
    return _choice(rng, _DEFAULT_SLOTS["palette"])


def _hash01(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic integer hash of lattice cells -> uniform [0, 1)."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = h & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFF).astype(np.float32) / 65536.0


def _mix(a: np.ndarray, b: np.ndarray, t) -> np.ndarray:
    """Linear blend a + (b - a) * t, broadcasting per-pixel weights."""
    t = np.asarray(t, dtype=np.float32)
    return a + (b - a) * (t[:, None] if t.ndim == 1 else t)


def _rotate(u: np.ndarray, v: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return c * u + s * v, -s * u + c * v


def _texture_params(rng: np.random.Generator) -> dict:
    """Random period/orientation/phase of a texture, in garment units."""
    return dict(period=rng.uniform(.17, .32), angle=(0. if rng.random() < .6 else math.pi / 2)
                + rng.uniform(-.15, .15), phase=rng.random(), duty=rng.uniform(.35, .55),
                salt=int(rng.integers(1 << 20)), radius=rng.uniform(.18, .3))


def _tex_stripes(u, v, c, p):
    a, _ = _rotate(v, u, p["angle"])
    ink = np.mod(a / p["period"] + p["phase"], 1.0) < p["duty"]
    return np.where(ink[:, None], c[1], c[0])


def _tex_dots(u, v, c, p):
    q = p["period"] * 1.1
    row = np.floor(v / q)
    du = np.mod(u / q + 0.5 * np.mod(row, 2) + p["phase"], 1.0) - 0.5
    dv = np.mod(v / q, 1.0) - 0.5
    ink = du * du + dv * dv < p["radius"] ** 2
    return np.where(ink[:, None], c[1], c[0])


def _tex_plaid(u, v, c, p):
    q = p["period"] * 1.6
    a, b = _rotate(u, v, p["angle"] * 0.2)
    fu, fv = np.mod(a / q + p["phase"], 1.0), np.mod(b / q, 1.0)
    rgb = _mix(np.broadcast_to(c[0], (len(u), 3)), c[1], 0.65 * (fu < 0.3))
    rgb = _mix(rgb, c[2], 0.55 * (fv < 0.3))
    thin = (np.abs(fu - 0.65) < 0.03) | (np.abs(fv - 0.65) < 0.03)
    return _mix(rgb, c[1] * 0.6, 0.8 * thin)


def _cells(u, v, period, salt):
    """Lattice cell coordinates and a jittered centre offset for cell-based motifs."""
    ci, cj = np.floor(u / period), np.floor(v / period)
    jx = (_hash01(ci, cj, salt) - 0.5) * 0.3
    jy = (_hash01(ci, cj, salt + 7) - 0.5) * 0.3
    du = u / period - (ci + 0.5 + jx)
    dv = v / period - (cj + 0.5 + jy)
    return ci, cj, du, dv


def _tex_floral(u, v, c, p):
    ci, cj, du, dv = _cells(u, v, p["period"] * 1.7, p["salt"])
    r = np.sqrt(du * du + dv * dv)
    theta = np.arctan2(dv, du) + _hash01(ci, cj, p["salt"] + 3) * 6.3
    petal = r < 0.3 * (0.45 + 0.55 * np.abs(np.cos(2.5 * theta)))
    rgb = np.where(petal[:, None], c[1], c[0])
    return np.where((r < 0.08)[:, None], c[2], rgb)


def _tex_chevron(u, v, c, p):
    q = p["period"]
    zig = np.abs(np.mod(u / q + p["phase"], 1.0) - 0.5) * 1.2
    ink = np.mod(v / q + zig, 1.0) < 0.45
    return np.where(ink[:, None], c[1], c[0])


def _tex_leopard(u, v, c, p):
    ci, cj, du, dv = _cells(u, v, p["period"] * 1.2, p["salt"])
    squash = 0.7 + 0.6 * _hash01(ci, cj, p["salt"] + 11)
    r = np.sqrt((du * squash) ** 2 + (dv / squash) ** 2)
    rgb = np.where((r < 0.2)[:, None], c[1], c[0])
    ring = (r >= 0.2) & (r < 0.32)
    return np.where(ring[:, None], c[2] * 0.35, rgb)


_TEXTURES = {"solid": lambda u, v, c, p: np.broadcast_to(c[0], (len(u), 3)),
             "striped": _tex_stripes, "polka dot": _tex_dots, "plaid": _tex_plaid,
             "floral": _tex_floral, "chevron": _tex_chevron, "leopard": _tex_leopard}


def _texture(name: str, u, v, colors: np.ndarray, params: dict) -> np.ndarray:
    """(k, 3) float32 RGB of texture `name` at garment coordinates (u, v)."""
    return np.asarray(_TEXTURES[name](u, v, colors, params), dtype=np.float32)


def _fabric(name: str | None, u, v, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel luminance multiplier and opacity of a fabric (knit ribs, denim twill, lace holes...)."""
    one = np.ones(len(u), dtype=np.float32)
    a, b = _rotate(u, v, params["angle"])
    if name == "knit":
        rib = np.abs(np.sin(u * (math.pi / 0.075)))
        row = np.mod(v / 0.06 + np.abs(np.mod(u / 0.075, 1.0) - 0.5), 1.0) < 0.5
        return (0.78 + 0.22 * rib) * np.where(row, 1.0, 0.93), one
    if name == "denim":
        twill = np.mod((u + v) / 0.05, 1.0) < 0.5
        return np.where(twill, 1.0, 0.8) * (0.95 + 0.05 * np.sin(v * 9.0)), one
    if name == "lace":  # a fine diamond net: light opaque threads over see-through cells
        p, q = _rotate(u, v, math.pi / 4)
        thread = (np.abs(np.mod(p / .07, 1.0) - .5) > .38) | (np.abs(np.mod(q / .07, 1.0) - .5) > .38)
        return np.where(thread, 1.25, 0.9), np.where(thread, 1.0, 0.35)
    if name == "leather":
        sheen = np.exp(-((np.mod(a / 0.9 + params["phase"], 1.0) - 0.5) ** 2) / 0.01)
        return 0.72 + 0.55 * sheen, one
    if name == "satin":
        band = 0.5 + 0.5 * np.sin(2 * math.pi * (a * 0.8 + b * 0.3 + params["phase"]))
        return 0.78 + 0.42 * band ** 3, one
    if name == "sheer":
        return one * 1.04, one * 0.5
    return one, one


# --------------------------------------------------------------------------------------------------
# Garment geometry in canonical units (x to the image right, y down, neck base at y = 0,
# shoulder half-width about 1). "Left" landmarks are on the image-left (negative x) side.
# --------------------------------------------------------------------------------------------------

@dataclass
class _Detail:
    """A drawn detail in canonical coordinates: 'poly' (filled/outlined), 'line' or 'dot'."""

    kind: str
    pts: np.ndarray
    fill: str | None = None  # colour role, see _detail_colors
    line: str | None = None
    width: float = 0.03  # canonical units (line width, or dot radius)


@dataclass
class _Garment:
    """Silhouette (shapes + strands drawn into the garment mask), details and the 8 keypoints."""

    shapes: list = field(default_factory=list)
    strands: list = field(default_factory=list)  # (polyline, width) pairs that belong to the mask
    details: list = field(default_factory=list)
    keypoints: np.ndarray = field(default_factory=lambda: np.full((8, 2), np.nan))


def _mirror(chain: list) -> np.ndarray:
    """Close a left half-outline (listed top to bottom, x <= 0) into a left-right symmetric polygon."""
    right = [(-x, y) for x, y in reversed(chain)]
    if abs(chain[-1][0]) < 1e-9:
        right = right[1:]
    if abs(chain[0][0]) < 1e-9:
        right = right[:-1]
    return np.array(list(chain) + right, dtype=np.float64)


def _both(pts) -> list[np.ndarray]:
    """A left-side shape and its mirror image."""
    left = np.asarray(pts, dtype=np.float64)
    return [left, left * np.array([-1.0, 1.0])]


def _proportions(style: _Style, spec: dict, rng: np.random.Generator) -> dict:
    """Body measurements (canonical units) for the spec's fit, length and flare."""
    fit, length, flared = spec["fit"], spec["length"], spec["flare"] == "flared"
    widen = {"fitted": 0.92, "oversized": 1.14}.get(fit, 1.0)
    p = dict(nw=rng.uniform(.3, .37), sw=widen * rng.uniform(.96, 1.04),
             sy=.12 + (.12 if fit == "oversized" else 0.), wy=rng.uniform(1.45, 1.65))
    p["aw"] = p["sw"] * .92
    p["ay"] = (1.25 if style.kimono else .8) + (.12 if fit == "oversized" else 0.)
    p["ww"] = p["aw"] * {"fitted": .8, "oversized": .98}.get(fit, .9)
    if style.bottom == "long":
        p["L"] = {"maxi": 4.8, "cropped": 2.5}.get(length, rng.uniform(3.7, 4.3))
    else:
        p["L"] = rng.uniform(1.4, 1.6) if length == "cropped" else rng.uniform(2.25, 2.55)
    p["hw"] = p["aw"] * (1.35 if flared else .9 if fit == "fitted" else 1.0)
    return p


def _sleeve(p: dict, spec: dict, style: _Style, rng: np.random.Generator):
    """Left sleeve polygon (or None when sleeveless), its cuff frame, and the sleeve keypoint."""
    kind = spec["sleeve"]
    if kind == "none":
        return None, None, np.array([-p["aw"], p["ay"] + .05])
    if style.kimono:
        theta, length, half = rng.uniform(65, 85), rng.uniform(1.2, 1.5), rng.uniform(.55, .65)
    elif kind == "short":
        theta, length, half = rng.uniform(40, 65), rng.uniform(.6, .75), rng.uniform(.3, .36)
    else:
        theta, length, half = rng.uniform(20, 45), rng.uniform(2.0, 2.3), rng.uniform(.18, .23)
        if spec["flare"] == "flared" or spec["category"] == "Blouse" and rng.random() < .5:
            half = rng.uniform(.32, .4)  # bell sleeve
    length += .15 if spec["fit"] == "oversized" else 0.
    t = math.radians(theta)
    top, bottom = np.array([-p["sw"], p["sy"]]), np.array([-p["aw"], p["ay"]])
    d = np.array([-math.sin(t), math.cos(t)])  # along the sleeve, outward-down (left side)
    n = np.array([-math.cos(t), -math.sin(t)])  # across the cuff, towards the shoulder edge
    cuff = (top + bottom) / 2 + length * d
    poly = np.array([top, cuff + half * n, cuff - half * n, bottom])
    return poly, (cuff, d, n, half), cuff


def _shoulders(p: dict, spec: dict, style: _Style) -> list:
    """Left outline from the neck corner down to the armpit (strap + armhole when sleeveless)."""
    if spec["sleeve"] != "none":
        return [(-p["nw"], 0.), (-p["sw"], p["sy"]), (-p["aw"], p["ay"])]
    s = p["nw"] + style.strap
    return [(-p["nw"], 0.), (-s, 0.), (-s - .04, .3), (-(p["aw"] - .1), p["ay"] - .1),
            (-p["aw"], p["ay"] + .05)]


def _legs_chain(style: _Style, spec: dict, x0: float, y0: float, rng) -> tuple[list, dict]:
    """Left outline of trousers/shorts from the waist corner to the crotch, and the leg geometry."""
    wo, lc = {"tight": (.30, .42), "straight": (.42, .5), "jogger": (.52, .52), "shorts": (.78, .55),
              "wide": (.62, .55)}[style.legs]
    if spec["fit"] == "fitted":
        wo *= .82
    elif spec["fit"] == "oversized":
        wo, lc = wo * 1.2, lc * 1.1
    if style.legs == "shorts":
        ly = rng.uniform(1.3, 1.6)
    else:
        ly = rng.uniform(2.5, 2.8) if spec["length"] == "cropped" else rng.uniform(3.4, 3.8)
    hb = x0 * (1.1 if style.legs == "tight" else 1.2)
    bell = spec["flare"] == "flared" and style.legs != "shorts"
    knee = wo * .9
    if spec["flare"] == "flared":
        wo *= 1.8
    outer, inner = [(-(lc + wo / 2), y0 + ly)], [(-(lc - wo / 2), y0 + ly)]
    if bell:
        outer.insert(0, (-(lc + knee / 2), y0 + ly * .6))
        inner.append((-(lc - knee / 2), y0 + ly * .6))
    chain = [(-x0, y0), (-hb, y0 + .6)] + outer + inner + [(0., y0 + 1.0)]
    return chain, dict(kind="legs", lc=lc, wo=wo, bottom=y0 + ly, hb=hb)


def _skirt_chain(style: _Style, spec: dict, x0: float, y0: float, rng) -> tuple[list, dict]:
    """Left outline of a skirt from the waist corner to the hem corner."""
    ls = {"mini": rng.uniform(1.2, 1.45), "maxi": rng.uniform(3.4, 3.8)}.get(
        spec["length"], rng.uniform(2.0, 2.5))
    hb = x0 * 1.2
    hw = hb * (1.65 if spec["flare"] == "flared" else 1.0 if spec["fit"] == "fitted" else 1.18)
    return [(-x0, y0), (-hb, y0 + .55), (-hw, y0 + ls)], dict(kind="skirt", hw=hw, bottom=y0 + ls, hb=hb)


def _torso_chain(p: dict) -> tuple[list, dict]:
    """Left outline below the armpit of an upper body that ends at its own hem (tops, coats)."""
    chain = [(-p["ww"], p["wy"])] if p["L"] > p["wy"] + .25 else []
    return chain + [(-p["hw"], p["L"])], dict(kind="top", hw=p["hw"], bottom=p["L"], hb=p["hw"])


def build_garment(spec: dict, rng: np.random.Generator) -> _Garment:
    """Canonical silhouette, details and keypoints of a spec."""
    style, ctype = _STYLES[spec["category"]], _CATEGORY_TYPE[spec["category"]]
    g = _Garment()
    has_top = ctype != 2
    p = _proportions(style, spec, rng)
    waist = (p["ww"], p["wy"]) if has_top else (rng.uniform(.78, .88), 0.)
    chain: list = []
    if has_top:
        chain += _shoulders(p, spec, style)
        sleeve, cuff_frame, g.keypoints[2] = _sleeve(p, spec, style, rng)
        g.keypoints[0] = (-p["nw"], 0.)
        if sleeve is not None:
            g.shapes += _both(sleeve)
            _cuff_details(g, spec, cuff_frame)
    if style.bottom in (None, "long"):
        lower, hem = _torso_chain(p)
    else:
        make = _legs_chain if style.bottom == "legs" else _skirt_chain
        lower, hem = make(style, spec, waist[0], waist[1], rng)
    if style.bottom is not None:
        g.keypoints[4] = (-waist[0], waist[1])
    g.shapes.insert(0, _mirror(chain + lower))
    _hem_parts(g, spec, style, hem)
    if has_top:
        _top_details(g, spec, style, p, hem, rng)
    else:
        _waistband_details(g, spec, waist[0], hem)
    _waist_details(g, spec, style, p, waist, has_top, hem)
    for a, b in ((0, 1), (2, 3), (4, 5), (6, 7)):
        g.keypoints[b] = g.keypoints[a] * np.array([-1., 1.])
    return g


def _hem_parts(g: _Garment, spec: dict, style: _Style, hem: dict) -> None:
    """Hem keypoints, leg/hem bands (cuffs), ruffles and fringes."""
    y = hem["bottom"]
    if hem["kind"] == "legs":
        lc, wo = hem["lc"], hem["wo"]
        g.keypoints[6] = (-lc, y)
        if spec["cuffs"] == "cuffs":
            half = wo * (.34 if style.legs == "jogger" else .54)
            band = [(-lc - half, y - .02), (-lc + half, y - .02), (-lc + half, y + .18),
                    (-lc - half, y + .18)]
            g.shapes += _both(band)
            g.details += [_Detail("poly", s, "band", "edge", .02) for s in _both(band)]
            g.keypoints[6] = (-lc, y + .18)
        if spec["hem_trim"] == "fringe":
            xs = np.arange(-lc - wo / 2 + .03, -lc + wo / 2, .055)
            _fringe(g, xs, y)
        return
    hw = hem["hw"]
    g.keypoints[6] = (-hw, y)
    if style.rib_bands:
        band = np.array([(-hw, y - .2), (hw, y - .2)])
        g.details.append(_Detail("line", band, None, "edge", .025))
        ribs = np.arange(-hw + .05, hw, .07)
        for x in ribs:
            g.details.append(_Detail("line", np.array([(x, y - .19), (x, y - .01)]), None, "shade", .012))
    if spec["hem_trim"] == "ruffle":
        depth, w = .32, hw * 1.08
        xs = np.linspace(-w, w, 41)
        ys = y + depth * (.75 + .25 * np.abs(np.sin(math.pi * 4 * (xs + w) / w)))
        scallop = np.stack([xs, ys], axis=1)
        g.shapes.append(np.vstack([[(-hw, y - .02), (hw, y - .02)], scallop[::-1]]))
        g.details.append(_Detail("line", scallop, None, "edge", .02))
        g.details.append(_Detail("line", np.array([(-hw, y + .02), (hw, y + .02)]), None, "shade", .02))
        g.keypoints[6] = (-w, ys[0])
    elif spec["hem_trim"] == "fringe":
        _fringe(g, np.arange(-hw + .03, hw, .055), y)


def _fringe(g: _Garment, xs: np.ndarray, y: float) -> None:
    """Thin strands hanging below a hem (part of the silhouette)."""
    for x in xs:
        g.strands.append((np.array([(x, y - .02), (x + .01, y + .28)]), .022))
    g.details.append(_Detail("line", np.array([(xs[0], y), (xs[-1], y)]), None, "edge", .02))


def _cuff_details(g: _Garment, spec: dict, frame) -> None:
    """Contrasting bands at both sleeve ends."""
    if spec["cuffs"] != "cuffs" or frame is None:
        return
    cuff, d, n, half = frame
    band = np.array([cuff + half * n, cuff - half * n, cuff - half * n - .2 * d, cuff + half * n - .2 * d])
    g.details += [_Detail("poly", s, "band", "edge", .02) for s in _both(band)]


def _neck_details(g: _Garment, spec: dict, style: _Style, p: dict) -> float:
    """Neckline (inner back of the garment), collar/lapels/hood; returns the front neck depth."""
    nw, neck = p["nw"], spec["neck"]
    if neck == "hood":
        hood = _mirror([(0., -1.05), (-.3, -1.0), (-.55, -.75), (-.62, -.3), (-nw - .12, .08), (-nw, .05)])
        g.shapes.insert(0, hood)
        g.details.append(_Detail("poly", hood, None, "edge", .02))
        inner = _mirror([(0., -.85), (-.25, -.8), (-.38, -.45), (-.32, -.05), (0., .12)])
        g.details.append(_Detail("poly", inner, "inner", "edge", .02))
        return .12
    depth = {"crew": .2, "scoop": .45, "collar": .18, "v": .7, "lapel": .95}[neck]
    if style.kimono:
        depth = p["wy"] - .1
    if neck in ("v", "lapel"):
        opening = np.array([(-nw, 0.), (0., depth), (nw, 0.)])
    else:
        t = np.linspace(0, math.pi, 13)
        opening = np.stack([-nw * np.cos(t), depth * np.sin(t)], axis=1)
    g.details.append(_Detail("poly", opening, "inner", "band" if neck == "crew" else "edge",
                             .07 if neck == "crew" else .025))
    if neck == "collar":
        flap = [(-nw - .06, -.04), (-.02, .16), (-.16, .44), (-nw - .22, .3)]
        g.details += [_Detail("poly", s, "light", "edge", .02) for s in _both(flap)]
    elif neck == "lapel":
        lapel = [(-nw, 0.), (-.03, depth), (-.3, depth * .65), (-nw - .25, .25)]
        g.details += [_Detail("poly", s, "shade", "edge", .02) for s in _both(lapel)]
    return depth


def _top_details(g: _Garment, spec: dict, style: _Style, p: dict, hem: dict, rng) -> None:
    """Neckline, front opening/closure, chest graphic, pockets and drawstrings of an upper part."""
    depth = _neck_details(g, spec, style, p)
    bottom = hem["bottom"]
    if style.open_front:
        g.details.append(_Detail("line", np.array([(0., depth), (0., bottom)]), None, "edge", .03))
        _closure(g, spec["closure"], depth, bottom - .3 if spec["closure"] == "buttons" else bottom)
    elif spec["closure"] is not None:
        end = {"buttons": p["wy"] if style.bottom else bottom - .35, "zip": depth + .65}[spec["closure"]]
        if spec["closure"] == "buttons" and spec["category"] in ("Tee", "Sweater"):
            end = depth + .6
        _closure(g, spec["closure"], depth, end)
    if spec["graphic"] == "graphic":
        _graphic(g, np.array([0., max(depth + .35, .95)]), rng)
    if spec["pockets"] == "pockets" and style.bottom in (None, "long"):
        _top_pockets(g, spec, style, p, bottom)
    if spec["drawstring"] == "drawstring" and spec["neck"] == "hood":
        _drawstrings(g, .1)


def _closure(g: _Garment, kind: str | None, top: float, bottom: float) -> None:
    """Buttons (placket + dots) or a zip (line + teeth + pull tab) along the centre line."""
    if kind == "buttons":
        g.details.append(_Detail("line", np.array([(.07, top), (.07, bottom)]), None, "shade", .02))
        count = max(2, int((bottom - top) / .38))
        for y in np.linspace(top + .15, bottom - .05, count):
            g.details.append(_Detail("dot", np.array([(0., y)]), "button", "edge", .06))
    elif kind == "zip":
        g.details.append(_Detail("line", np.array([(0., top), (0., bottom)]), None, "metal", .035))
        for y in np.arange(top + .03, bottom, .06):
            g.details.append(_Detail("line", np.array([(-.04, y), (.04, y)]), None, "metal", .015))
        tab = [(-.05, top + .02), (.05, top + .02), (.05, top + .22), (-.05, top + .22)]
        g.details.append(_Detail("poly", np.array(tab), "metal", "edge", .015))


def _graphic(g: _Garment, centre: np.ndarray, rng: np.random.Generator) -> None:
    """A large print on the chest: star, circle, triangle or bars."""
    kind = ["star", "circle", "triangle", "bars"][int(rng.integers(4))]
    r = .3
    if kind == "circle":
        g.details.append(_Detail("dot", centre[None], "print", None, r))
        return
    if kind == "star":
        t = np.arange(10) * math.pi / 5 - math.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, r, r * .45)
        pts = centre + np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)
    elif kind == "triangle":
        pts = centre + np.array([(0., -r), (r, r * .8), (-r, r * .8)])
    else:
        for k in range(3):
            y = centre[1] - r * .6 + k * r * .6
            g.details.append(_Detail("line", np.array([(centre[0] - r, y), (centre[0] + r, y)]),
                                     None, "print", .12))
        return
    g.details.append(_Detail("poly", pts, "print", None))


def _top_pockets(g: _Garment, spec: dict, style: _Style, p: dict, bottom: float) -> None:
    """Kangaroo pocket (hooded), flap pockets (open front) or patch pockets at the hips."""
    if spec["neck"] == "hood" and not style.open_front:
        y0, y1 = max(bottom - .8, p["ay"]), bottom - .25
        pocket = np.array([(-.55, y0), (.55, y0), (.72, y1), (-.72, y1)])
        g.details.append(_Detail("poly", pocket, None, "edge", .025))
        return
    y = min(bottom - .55, p["wy"] + .55) if bottom > 1.8 else p["ay"] - .15
    x = .5 * p["hw"] if bottom > 1.8 else .45
    patch = [(-x - .2, y - .18), (-x + .2, y - .18), (-x + .2, y + .22), (-x - .2, y + .22)]
    for s in _both(patch):
        g.details.append(_Detail("poly", s, None, "edge", .025))
        if style.open_front:
            flap = np.array([s[0], s[1], s[1] + (0, .12), s[0] + (0, .12)])
            g.details.append(_Detail("poly", flap, "shade", "edge", .02))


def _waistband_details(g: _Garment, spec: dict, wb: float, hem: dict) -> None:
    """Waistband line, fly (trousers) and slanted front pockets of a lower garment."""
    g.details.append(_Detail("line", np.array([(-wb, .16), (wb, .16)]), None, "edge", .025))
    if hem["kind"] == "legs":
        fly = np.array([(.06, .16), (.08, .62), (0., .75)])
        g.details.append(_Detail("line", fly, None, "shade", .02))
    if spec["pockets"] == "pockets":
        slant = [(-wb * .55, .16), (-wb * .78, .42), (-hem["hb"] * .98, .58)]
        g.details += [_Detail("line", s, None, "edge", .025) for s in _both(slant)]
        if spec["fabric"] == "denim":
            coin = np.array([(wb * .5, .22), (wb * .72, .22), (wb * .72, .4), (wb * .5, .4)])
            g.details.append(_Detail("poly", coin, None, "stitch", .015))


def _waist_details(g: _Garment, spec: dict, style: _Style, p: dict, waist: tuple, has_top: bool,
                   hem: dict) -> None:
    """Belt/sash, lower pockets of full-body garments, and waist drawstrings."""
    wx, wy = waist
    if has_top and style.bottom in ("legs", "skirt"):
        g.details.append(_Detail("line", np.array([(-wx, wy), (wx, wy)]), None, "edge", .02))
    belt_y = wy + (.08 if not has_top else 0.)
    if spec["belt"] == "belt" and (not has_top or hem["bottom"] > p["wy"] + .25):
        half = .16 if style.kimono else .08
        band = np.array([(-wx - .03, belt_y - half), (wx + .03, belt_y - half),
                         (wx + .03, belt_y + half), (-wx - .03, belt_y + half)])
        g.details.append(_Detail("poly", band, "belt", "edge", .015))
        if style.kimono:
            for tail in ([(.05, belt_y), (.2, belt_y + .7)], [(-.05, belt_y), (-.12, belt_y + .65)]):
                g.details.append(_Detail("line", np.array(tail), None, "belt", .09))
        else:
            buckle = np.array([(-.1, -.12), (.1, -.12), (.1, .12), (-.1, .12)]) + (0., belt_y)
            g.details.append(_Detail("poly", buckle, None, "metal", .03))
    if spec["pockets"] == "pockets" and has_top and style.bottom in ("legs", "skirt"):
        slant = [(-wx * .6, wy + .1), (-wx * .85, wy + .38), (-hem["hb"] * .98, wy + .55)]
        g.details += [_Detail("line", s, None, "edge", .025) for s in _both(slant)]
    if spec["drawstring"] == "drawstring" and spec["neck"] != "hood":
        _drawstrings(g, wy + .1)


def _drawstrings(g: _Garment, y: float) -> None:
    """Two cords with tips hanging from the centre at height y."""
    for x in (-.12, .12):
        cord = np.array([(x, y), (x * 1.3, y + .55)])
        g.details.append(_Detail("line", cord, None, "cord", .025))
        g.details.append(_Detail("dot", cord[1:], "metal", None, .035))


# --------------------------------------------------------------------------------------------------
# Scene: view transform, background clutter, garment painting, details, occluders
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _View:
    """Affine map canonical (u, v) -> continuous pixel (x, y): x = a*u + b*v + tx, y = c*u + d*v + ty."""

    a: float
    b: float
    c: float
    d: float
    tx: float
    ty: float

    @property
    def scale(self) -> float:
        return math.sqrt(abs(self.a * self.d - self.b * self.c))

    def apply(self, pts: np.ndarray) -> np.ndarray:
        u, v = pts[..., 0], pts[..., 1]
        return np.stack([self.a * u + self.b * v + self.tx, self.c * u + self.d * v + self.ty], -1)

    def invert(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        det = self.a * self.d - self.b * self.c
        x, y = x - self.tx, y - self.ty
        return (self.d * x - self.b * y) / det, (-self.c * x + self.a * y) / det


def _sample_size(rng: np.random.Generator) -> tuple[int, int]:
    """(W, H): long side 300 (sometimes smaller), portrait/square/occasionally landscape."""
    long = MAX_SIDE if rng.random() < .92 else int(rng.integers(160, MAX_SIDE))
    aspect = 1.0 if rng.random() < .3 else rng.uniform(.62, .95)
    short = max(1, int(round(long * aspect)))
    return (long, short) if rng.random() < .1 else (short, long)


def _garment_points(g: _Garment) -> np.ndarray:
    return np.concatenate(g.shapes + [s for s, _ in g.strands])


def _sample_view(g: _Garment, w: int, h: int, rng: np.random.Generator) -> _View:
    """Random rotation (±15°), aspect, zoom (sometimes a close-up) and position (sometimes cut)."""
    theta = math.radians(rng.uniform(-15, 15))
    ax = rng.uniform(.9, 1.1)
    a, b, c, d = ax * math.cos(theta), -math.sin(theta), ax * math.sin(theta), math.cos(theta)
    pts = _View(a, b, c, d, 0., 0.).apply(_garment_points(g))
    lo, hi = pts.min(0), pts.max(0)
    size = hi - lo
    zoom = rng.uniform(.95, 1.35) if rng.random() < .18 else rng.uniform(.55, .92)
    s = min(w / size[0], h / size[1]) * zoom
    slack = (np.array([w, h]) - s * size) / 2
    offset = rng.uniform(-1, 1, 2) * np.abs(slack) * .9
    if rng.random() < .12:
        offset += rng.choice([-1, 1], 2) * rng.uniform(.1, .3, 2) * s * size
    t = np.array([w, h]) / 2 + offset - s * (lo + hi) / 2
    return _View(s * a, s * b, s * c, s * d, float(t[0]), float(t[1]))


def _pil_points(pts: np.ndarray) -> list[tuple[float, float]]:
    """Continuous pixel coordinates -> PIL's (pixel centres at integers)."""
    return [(float(x) - .5, float(y) - .5) for x, y in pts]


def _fill(canvas: np.ndarray, mask: np.ndarray, rgb_fn) -> None:
    """Paint rgb_fn(x, y) (pixel-centre coordinates) wherever mask is set."""
    ys, xs = np.nonzero(mask)
    if len(xs):
        canvas[ys, xs] = rgb_fn(xs.astype(np.float32) + .5, ys.astype(np.float32) + .5)


def _outline(canvas: np.ndarray, mask: np.ndarray) -> None:
    """Darken the 1-pixel border of a mask (clutter and occluders get edges like the garment)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    canvas[mask & ~inner] *= .45


def _pixel_texture(rng: np.random.Generator):
    """A random texture in pixel space (for clutter and occluders), same bank as the garments."""
    name = _choice(rng, _DEFAULT_SLOTS["texture"])
    colors, params = _palette_colors(_random_palette(rng), rng), _texture_params(rng)
    unit, angle = rng.uniform(30, 75), rng.uniform(-.5, .5)

    def rgb(x, y):
        u, v = _rotate(x / unit, y / unit, angle)
        return _texture(name, u, v, colors, params)
    return rgb


def _shape_mask(w: int, h: int, kind: str, centre, radius: float, rng) -> np.ndarray:
    """Boolean mask of a random blob/box/polygon/strap of about `radius` pixels around `centre`."""
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    cx, cy = centre
    if kind == "ellipse":
        rx, ry = radius * rng.uniform(.6, 1.2), radius * rng.uniform(.6, 1.2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    elif kind == "strap":
        angle = rng.uniform(0, 2 * math.pi)
        far = (cx + 3 * w * math.cos(angle), cy + 3 * h * math.sin(angle))
        draw.line([(cx, cy), far], fill=255, width=max(2, int(radius * rng.uniform(.5, .9))))
        draw.ellipse([cx - radius * .5, cy - radius * .5, cx + radius * .5, cy + radius * .5], fill=255)
    else:
        if kind == "box":
            t = np.arange(4) * math.pi / 2 + rng.uniform(0, math.pi)
            r = np.full(4, radius * 1.2)
        else:
            t = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(5, 9))))
            r = radius * rng.uniform(.6, 1.2, len(t))
        draw.polygon([(cx + ri * math.cos(ti), cy + ri * math.sin(ti)) for ri, ti in zip(r, t)],
                     fill=255)
    return np.asarray(img) > 0


def _background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Studio or coloured backdrop with textured clutter patches (same textures/colours as garments)."""
    if rng.random() < .45:
        base = _hsv(rng.random(), rng.uniform(0, .06), rng.uniform(.78, .97))
    else:
        base = _palette_color(_random_palette(rng), rng)
    yy = np.linspace(-.5, .5, h, dtype=np.float32)[:, None, None]
    canvas = np.broadcast_to(base, (h, w, 3)) * (1 + rng.uniform(-.25, .25) * yy)
    canvas = np.ascontiguousarray(canvas, dtype=np.float32)
    for _ in range(int(rng.integers(2, 8))):
        kind = ["ellipse", "box", "poly", "strap"][int(rng.integers(4))]
        centre = (rng.uniform(0, w), rng.uniform(0, h))
        mask = _shape_mask(w, h, kind, centre, rng.uniform(.12, .4) * min(w, h), rng)
        _fill(canvas, mask, _pixel_texture(rng))
        if rng.random() < .5:
            _outline(canvas, mask)
    return canvas


def _garment_mask(g: _Garment, view: _View, w: int, h: int) -> np.ndarray:
    """Boolean silhouette mask of the garment in the image."""
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for shape in g.shapes:
        draw.polygon(_pil_points(view.apply(shape)), fill=255)
    for strand, width in g.strands:
        draw.line(_pil_points(view.apply(strand)), fill=255, width=max(1, int(round(width * view.scale))))
    return np.asarray(img) > 0


def _paint_garment(canvas: np.ndarray, mask: np.ndarray, spec: dict, colors: np.ndarray,
                   view: _View, rng: np.random.Generator) -> None:
    """Texture x fabric x soft fold shading, in garment coordinates so it follows the garment."""
    tex_params, fab_params = _texture_params(rng), _texture_params(rng)
    phase = rng.uniform(0, 2 * math.pi, 2)
    ys, xs = np.nonzero(mask)
    u, v = view.invert(xs.astype(np.float32) + .5, ys.astype(np.float32) + .5)
    rgb = _texture(spec["texture"], u, v, colors, tex_params)
    gain, alpha = _fabric(spec["fabric"], u, v, fab_params)
    shade = 1 + .07 * np.sin(1.3 * u + .7 * v + phase[0]) + .05 * np.sin(2.1 * v - .4 * u + phase[1])
    rgb = rgb * (gain * shade)[:, None]
    a = alpha[:, None]
    canvas[ys, xs] = canvas[ys, xs] * (1 - a) + rgb * a


def _detail_colors(colors: np.ndarray, rng: np.random.Generator) -> dict:
    """Colour of each detail role, derived from the garment palette."""
    c0, c1 = colors[0], colors[1]
    lum = float(c0 @ np.array([.299, .587, .114]))
    edge = c0 * .45 if lum > 60 else np.minimum(c0 + 70, 255)
    belt = [np.array([25., 22, 20]), np.array([100., 60, 30]), np.array([190., 150, 100]), c1][
        int(rng.integers(4))]
    metal = np.array([200., 200, 195]) if rng.random() < .6 else np.array([205., 170, 80])
    return dict(edge=edge, shade=c0 * .78, light=np.minimum(c0 * .7 + 90, 255), inner=c0 * .38,
                band=c1, belt=belt, metal=metal, button=c1 * .8, print=colors[2],
                stitch=np.array([215., 150, 40]), cord=np.minimum(c1 + 40, 255))


def _draw_details(img: Image.Image, g: _Garment, view: _View, roles: dict) -> None:
    """Draw collar, cuffs, closures, pockets, belts, prints... over the painted garment."""
    draw = ImageDraw.Draw(img)

    def rgb(role):
        return None if role is None else tuple(int(round(float(x))) for x in np.clip(roles[role], 0, 255))

    for det in g.details:
        pts = view.apply(det.pts)
        width = max(1, int(round(det.width * view.scale)))
        if det.kind == "dot":
            (x, y), r = pts[0] - .5, det.width * view.scale
            draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb(det.fill), outline=rgb(det.line))
        elif det.kind == "line":
            draw.line(_pil_points(pts), fill=rgb(det.line), width=width, joint="curve")
        else:
            draw.polygon(_pil_points(pts), fill=rgb(det.fill))
            if det.line is not None:
                draw.line(_pil_points(np.vstack([pts, pts[:1]])), fill=rgb(det.line), width=width)


def _draw_outline(img: Image.Image, g: _Garment, view: _View, color) -> None:
    """Thin seam/edge lines around every silhouette shape."""
    draw = ImageDraw.Draw(img)
    col = tuple(int(round(float(x))) for x in np.clip(color, 0, 255))
    for shape in g.shapes:
        pts = view.apply(shape)
        draw.line(_pil_points(np.vstack([pts, pts[:1]])), fill=col, width=1)


def _occlude(canvas: np.ndarray, keypoints_px: np.ndarray, scale: float, rng) -> np.ndarray:
    """Draw 0-2 occluders (hand/bag/strap/blob) centred near random landmarks; returns their mask."""
    h, w = canvas.shape[:2]
    covered = np.zeros((h, w), dtype=bool)
    present = np.flatnonzero(~np.isnan(keypoints_px[:, 0]))
    n = 0 if rng.random() < .5 else int(rng.integers(1, 3))
    for _ in range(n):
        target = keypoints_px[present[int(rng.integers(len(present)))]]
        radius = scale * rng.uniform(.3, .55)
        centre = target + rng.uniform(-.4, .4, 2) * radius
        kind = ["ellipse", "box", "poly", "strap"][int(rng.integers(4))]
        mask = _shape_mask(w, h, kind, centre, radius, rng)
        if rng.random() < .5:
            skin = _hsv(rng.uniform(.03, .09), rng.uniform(.25, .6), rng.uniform(.35, .95))
            _fill(canvas, mask, lambda x, y, c=skin: np.broadcast_to(c, (len(x), 3)))
        else:
            _fill(canvas, mask, _pixel_texture(rng))
        if rng.random() < .5:
            _outline(canvas, mask)
        covered |= mask
    return covered


def _finish(canvas: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Global exposure/colour cast, sensor noise, occasional blur -> uint8 RGB image."""
    h, w = canvas.shape[:2]
    gain = (rng.uniform(.88, 1.12) * rng.uniform(.95, 1.05, 3)).astype(np.float32)
    mean = np.float32(canvas.mean())
    contrast = np.float32(rng.uniform(.85, 1.1))
    out = ((canvas - mean) * contrast + mean) * gain
    out += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(.5, 2.))
    img = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")
    if rng.random() < .2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(.4, .9)))
    return img


def _landmarks(keypoints_px: np.ndarray, covered: np.ndarray, slots: list[int]) -> list[tuple]:
    """(visibility, x, y) per slot: 1-based pixel index clamped into the image; 2 outside, 1 occluded."""
    h, w = covered.shape
    out = []
    for slot in slots:
        x, y = keypoints_px[slot]
        col, row = math.floor(x), math.floor(y)
        inside = 0 <= col < w and 0 <= row < h
        vis = 2 if not inside else 1 if covered[row, col] else 0
        out.append((vis, min(max(col, 0), w - 1) + 1, min(max(row, 0), h - 1) + 1))
    return out


def _bbox(mask: np.ndarray, landmarks: list[tuple]) -> tuple[int, int, int, int]:
    """1-based inclusive extent of the garment pixels (and its clamped landmarks)."""
    h, w = mask.shape
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    xs = [int(c) + 1 for c in (cols[[0, -1]] if len(cols) else (0, w - 1))] + [x for _, x, _ in landmarks]
    ys = [int(r) + 1 for r in (rows[[0, -1]] if len(rows) else (0, h - 1))] + [y for _, _, y in landmarks]
    return min(xs), min(ys), max(xs), max(ys)


def render_image(plan: ImagePlan, seed: int) -> tuple[Image.Image, dict]:
    """Render one image and its annotation record (category, attributes, bbox, landmarks)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, plan.index)))
    spec = sample_spec(plan.category, rng, dict(plan.forced))
    w, h = _sample_size(rng)
    garment = build_garment(spec, rng)
    view = _sample_view(garment, w, h, rng)
    colors = _palette_colors(spec["palette"], rng)
    canvas = _background(w, h, rng)
    mask = _garment_mask(garment, view, w, h)
    _paint_garment(canvas, mask, spec, colors, view, rng)
    img = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    roles = _detail_colors(colors, rng)
    _draw_outline(img, garment, view, roles["edge"])
    _draw_details(img, garment, view, roles)
    canvas = np.asarray(img, dtype=np.float32).copy()
    keypoints_px = view.apply(garment.keypoints)
    covered = _occlude(canvas, keypoints_px, view.scale, rng)
    img = _finish(canvas, rng)
    landmarks = _landmarks(keypoints_px, covered, SLOTS_BY_CLOTHES_TYPE[plan.clothes_type])
    record = dict(index=plan.index, width=w, height=h, spec=spec, attributes=attribute_vector(spec),
                  bbox=_bbox(mask, landmarks), landmarks=landmarks)
    return img, record


# --------------------------------------------------------------------------------------------------
# Annotations of the rendered images (written by vfu_nb.annotations.write_annotations)
# --------------------------------------------------------------------------------------------------

def build_annotations(out: Path, plans: list[ImagePlan], records: list[dict]) -> Annotations:
    """The labels of the rendered images as an :class:`Annotations` (rows in index order)."""
    n = len(plans)
    clothes_type = np.array([p.clothes_type for p in plans], dtype=np.int64)
    landmarks = np.zeros((n, 8, 2), dtype=np.float32)
    visibility = np.full((n, 8), -1, dtype=np.int64)
    for i, (plan, record) in enumerate(zip(plans, records)):
        slots = SLOTS_BY_CLOTHES_TYPE[plan.clothes_type]
        triples = np.array(record["landmarks"], dtype=np.int64).reshape(len(slots), 3)
        visibility[i, slots] = triples[:, 0]
        landmarks[i, slots] = triples[:, 1:]
    box = np.array([r["bbox"] for r in records], dtype=np.float32).reshape(n, 4)
    return Annotations(
        root=Path(out),
        image_names=np.array([p.name for p in plans]),
        split=np.array([p.split for p in plans]),
        clothes_type=clothes_type,
        category=np.array([p.label - 1 for p in plans], dtype=np.int64),
        category_names=[name for name, _ in DEEPFASHION_CATEGORIES],
        category_types=np.array([t for _, t in DEEPFASHION_CATEGORIES], dtype=np.int64),
        attributes=np.array([r["attributes"] for r in records], dtype=np.int8).reshape(n, -1),
        attribute_names=[name for name, _ in SYNTHETIC_ATTRIBUTES],
        attribute_types=np.array([t for _, t in SYNTHETIC_ATTRIBUTES], dtype=np.int64),
        bbox=box - np.array([1, 1, 0, 0], dtype=np.float32),   # file boxes are 1-based inclusive
        landmarks=landmarks,
        landmark_visibility=visibility,
    )


# --------------------------------------------------------------------------------------------------
# Generation driver
# --------------------------------------------------------------------------------------------------

def _render_chunk(args: tuple) -> list[dict]:
    """Worker: render and save the JPEGs of a chunk of plans; return their records (no spec)."""
    root, seed, plans = args
    records = []
    for plan in plans:
        img, record = render_image(plan, seed)
        path = Path(root) / plan.name
        img.save(path, "JPEG", quality=JPEG_QUALITY)
        record.pop("spec")
        record["nbytes"] = path.stat().st_size
        records.append(record)
    return records


def _chunks(plans: list, size: int) -> list[list]:
    return [plans[i:i + size] for i in range(0, len(plans), size)]


def _process_pool(workers: int):
    """A process pool: 'fork' where available (no re-import of __main__, so it also works from
    notebooks, `python -c` and stdin scripts), else 'spawn'. A dying worker raises BrokenProcessPool
    instead of hanging."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=mp.get_context(method))


def _render_all(out: Path, seed: int, plans: list[ImagePlan], workers: int, progress: bool) -> list[dict]:
    """Render every plan (in-process or over a process pool), records returned in index order."""
    from tqdm.auto import tqdm

    chunk = max(4, min(64, len(plans) // max(1, workers * 8)))
    jobs = [(str(out), seed, c) for c in _chunks(plans, chunk)]
    records: list[dict] = []
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(plans), desc="synthetic", unit="img", disable=not progress))
        if workers > 1 and len(jobs) > 1:
            results = stack.enter_context(_process_pool(workers)).map(_render_chunk, jobs)
        else:
            results = map(_render_chunk, jobs)
        for res in results:
            records += res
            bar.update(len(res))
    return records


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename (no half-written annotation file survives a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text.encode("ascii"))
    os.replace(tmp, path)


def _prepare_out(out: Path) -> None:
    """Clear a previous synthetic tree (complete or interrupted); refuse to touch anything else."""
    if out.exists() and any(out.iterdir()):
        if not ((out / MARKER_DONE).exists() or (out / MARKER_BUSY).exists()):
            raise FileExistsError(f"{out} is not empty and is not a synthetic DeepFashion tree")
        for sub in ("img", "Anno", "Eval", MARKER_DONE):
            target = out / sub
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_BUSY).write_text("generation in progress\n")


def _cached_summary(out: Path, n: int, seed: int) -> dict | None:
    """The stored summary of a complete tree generated with the same arguments, else None."""
    done = out / MARKER_DONE
    if not done.exists() or (out / MARKER_BUSY).exists():
        return None
    meta = json.loads(done.read_text())
    if (meta.get("version"), meta.get("n"), meta.get("seed")) != (VERSION, n, seed):
        return None
    return meta


def generate(out, n: int, seed: int = 0, workers: int | None = None, progress: bool = True) -> dict:
    """Write a synthetic DeepFashion-C tree of `n` images under `out`; return a summary dict.

    Summary keys: out, n, seed, version, splits {train, val, test}, categories {name: count},
    bytes (total size of the written files), seconds, cached (True if an identical complete tree
    was already there and nothing was written).
    """
    start = time.perf_counter()
    out = Path(out)
    cached = _cached_summary(out, n, seed)
    if cached is not None:
        return dict(cached, out=str(out), seconds=time.perf_counter() - start, cached=True)
    workers = (os.cpu_count() or 1) if workers is None else workers
    _prepare_out(out)
    plans = plan_images(n, seed)
    for folder in sorted({p.name.rsplit("/", 1)[0] for p in plans}):
        (out / folder).mkdir(parents=True, exist_ok=True)
    records = _render_all(out, seed, plans, workers, progress)
    write_annotations(out, build_annotations(out, plans, records))
    text_bytes = sum((out / rel).stat().st_size for rel in ANNOTATION_FILES.values())
    summary = dict(
        n=n, seed=seed, version=VERSION,
        splits={s: sum(p.split == s for p in plans) for s in ("train", "val", "test")},
        categories={c: sum(p.category == c for p in plans) for c in RENDERED_CATEGORIES},
        bytes=sum(r["nbytes"] for r in records) + text_bytes)
    _write_text(out / MARKER_DONE, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    (out / MARKER_BUSY).unlink()
    return dict(summary, out=str(out), seconds=time.perf_counter() - start, cached=False)


def main(argv: list[str] | None = None) -> dict:
    """CLI: python -m vfu_nb.synthetic --out DIR --n N --seed S [--workers W] [--quiet]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    summary = generate(args.out, args.n, args.seed, args.workers, progress=not args.quiet)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
