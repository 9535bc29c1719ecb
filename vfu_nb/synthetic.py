"""Synthetic DeepFashion-C benchmark generator (version 2).

Writes a directory tree that a DeepFashion-C reader cannot tell from the real dataset
(``Anno/*.txt``, ``Eval/list_eval_partition.txt``, ``img/<Item_Folder>/img_XXXXXXXX.jpg``), filled with
procedurally drawn garments of 28 categories. The benchmark tests one idea: knowing where a garment's
functional parts are (collar, sleeve ends, waistline, hem) helps to read the local evidence there.
So, within a clothes type, categories share silhouette families and differ mainly in what is drawn
*at* those points (neckline or collar form, cuff, waist detail, hem finish) and in fabric/texture,
while the landmark geometry says only some of it:

* ``geometry_informativeness`` G: with probability G an image's silhouette (sleeve length, body and
  leg length, fit, flare, leg cut, skirt/legs/long body) is drawn from its own category's distribution,
  otherwise from the pooled distribution of its clothes type (that of a donor category drawn by
  frequency). G = 0: the silhouette says nothing about the category beyond the clothes type;
  G = 1: the silhouette comes from the category (version 1's behaviour).
* Landmarks are written with annotation noise: per-point jitter (``landmark_noise``, sd as a
  fraction of the box side) and a rate of wrong visible/occluded flags (``visibility_flip``).
  The rendered garment is not affected.
* ``evidence_placement``: "functional" (the benchmark) or "displaced", the negative control: every
  local part is moved as a whole to a random point of the garment's body, away from the landmarks,
  while labels, silhouette, view, colours, landmarks and boxes stay those of the functional tree.

Labels come only from what is rendered: a garment is sampled as a *spec* (one value per slot), the
attribute labels are a function of the spec, and the drawing code renders exactly that spec.
Attributes are correlated with the category (each category has its own slot distributions) but are
not a function of it. Clutter, occluders (visibility 1), truncation (visibility 2) and
scale/position/rotation jitter make the scenes harder. See docs/synthetic.md.

Usage::

    python -m vfu_nb.synthetic --out data/synth --n 4000 --seed 0 [--workers 2]
        [--geometry-informativeness 0.35] [--landmark-noise 0.02] [--visibility-flip 0.03]
        [--evidence-placement displaced]

    from vfu_nb.synthetic import generate
    summary = generate("data/synth", n=4000, seed=0, geometry_informativeness=0.35)

Re-running with the same arguments returns at once (``cached``); a tree written by another version
or with other settings is regenerated.

Determinism: image ``i`` is drawn from ``SeedSequence(seed, spawn_key=(1, i))`` (its annotation
noise from ``spawn_key=(3, i)``, its displaced part positions from ``spawn_key=(4, i)``) only, so the
output is byte-identical for any number of workers (on one platform/library stack) and the first ``k``
images of a run equal those of any larger run with the same seed and settings. Workers (a fork pool where available) write their own JPEGs; the parent
writes the annotation files in index order. ``synthetic.json`` is written last; a tree without it
(or with ``.synthetic_incomplete``) is an interrupted run.

Format decisions where the real data is silent: landmark x/y use the same 1-based pixel index as the
boxes (``floor(x) + 1``); truncated landmarks (visibility 2) are clamped into ``1..W`` / ``1..H``;
boxes are the 1-based inclusive extent of the garment pixels (occluded parts included) clipped to
the image, widened if needed to contain the clamped (noise-free) landmarks; written (noisy)
landmarks are clamped into the box.
"""

from __future__ import annotations

import argparse
import collections
import colorsys
import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vfu_nb.annotations import (
    ANNOTATION_FILES, NAME_COLUMN, SLOTS_BY_CLOTHES_TYPE, Annotations, write_annotations,
)

VERSION = 2
MAX_SIDE = 300
JPEG_QUALITY = 85
SPLIT_BLOCK = ("train",) * 14 + ("val",) * 3 + ("test",) * 3  # 70/15/15 in every 20 consecutive rows
MARKER_DONE = "synthetic.json"
MARKER_BUSY = ".synthetic_incomplete"

#: Default of the geometry dial (see the module docstring and docs/synthetic.md for how it was chosen).
DEFAULT_GEOMETRY_INFORMATIVENESS = 0.35
#: Default annotation noise: jitter sd of written landmarks (fraction of the box width/height) and rate
#: of swapped visible/occluded flags. State-of-the-art landmark detectors reach a normalised error of
#: about 0.04 on DeepFashion-C (Lee et al., ICCV Workshops 2019: 0.039; Liu & Lu, ECCV Workshops 2018:
#: 0.047); annotators are more precise than that: sd 0.02 per axis is a mean error of 0.025.
DEFAULT_LANDMARK_NOISE = 0.02
DEFAULT_VISIBILITY_FLIP = 0.03
#: Allowed ranges of the settings (inclusive).
SETTING_RANGES = {"geometry_informativeness": (0.0, 1.0), "landmark_noise": (0.0, 0.2),
                  "visibility_flip": (0.0, 0.5)}

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
    3: ["cropped", "fitted", "flared", "maxi", "mini", "oversized", "skinny", "wide-leg"],
    4: ["bell-sleeve", "belted", "buttoned", "collared", "crew neck", "cuffed", "double-breasted",
        "drawstring", "elasticized", "frayed", "fringe hem", "hooded", "long sleeve", "open-front",
        "pockets", "ribbed", "ruffle hem", "scoop neck", "short sleeve", "sleeveless", "square neck",
        "tie-neck", "turtle-neck", "v-neck", "zip-up"],
    5: ["earth tone", "graphic", "monochrome", "neon", "pastel"],
}
#: The synthetic attribute vocabulary (name, attribute_type), sorted by name like the real file.
SYNTHETIC_ATTRIBUTES: list[tuple[str, int]] = sorted(
    (name, t) for t, names in _ATTRIBUTE_GROUPS.items() for name in names)
_ATTRIBUTE_INDEX = {name: i for i, (name, _) in enumerate(SYNTHETIC_ATTRIBUTES)}


# --------------------------------------------------------------------------------------------------
# Garment specs: slots, their labels, and per-category distributions
# --------------------------------------------------------------------------------------------------

#: Silhouette slots: they set the outline and the keypoints (drawn from a donor category, see G).
SHAPE_SLOTS = ("sleeve", "drop", "length", "fit", "flare", "leg")
#: Local-evidence slots (drawn at the functional points) and surface slots (texture, fabric, colour).
PART_SLOTS = ("texture", "fabric", "palette", "neck", "front", "cuff", "hem", "waist", "pockets",
              "cords", "graphic")

#: slot -> {value: attribute name}; values missing from the map (and None) carry no label.
_SLOT_LABELS: dict[str, dict[str, str]] = {
    "sleeve": {"none": "sleeveless", "short": "short sleeve", "long": "long sleeve"},
    "drop": {},
    "length": {"cropped": "cropped", "mini": "mini", "maxi": "maxi"},
    "fit": {"fitted": "fitted", "oversized": "oversized"},
    "flare": {"flared": "flared"},
    "leg": {"tight": "skinny", "wide": "wide-leg"},
    "texture": {t: t for t in _ATTRIBUTE_GROUPS[1]},
    "fabric": {f: f for f in _ATTRIBUTE_GROUPS[2]},
    "palette": {"pastel": "pastel", "neon": "neon", "monochrome": "monochrome", "earth": "earth tone"},
    "neck": {"crew": "crew neck", "v": "v-neck", "scoop": "scoop neck", "square": "square neck",
             "collar": "collared", "lapel": "collared", "shawl": "collared", "hood": "hooded",
             "turtle": "turtle-neck", "tie": "tie-neck"},  # "stand" and "band" carry no label
    "front": {"buttons": "buttoned", "placket": "buttoned", "double": "double-breasted", "zip": "zip-up",
              "open": "open-front"},  # "wrap" carries no label
    "cuff": {"rib": "ribbed", "turnup": "cuffed", "button": "cuffed", "bell": "bell-sleeve"},
    "hem": {"rib": "ribbed", "ruffle": "ruffle hem", "fringe": "fringe hem", "frayed": "frayed"},
    "waist": {"elastic": "elasticized", "drawstring": "drawstring", "belt": "belted", "sash": "belted"},
    "pockets": {"patch": "pockets", "kangaroo": "pockets", "slant": "pockets", "flap": "pockets"},
    "cords": {"cords": "drawstring"},
    "graphic": {"graphic": "graphic"},
}
_MIN_POSITIVES, _MAX_POSITIVES = 2, 8
_THINNABLE = ("palette", "graphic", "pockets", "cords", "fabric")  # dropped first above the maximum

_DEFAULT_PARTS = {
    "texture": {"solid": .34, "striped": .14, "polka dot": .10, "plaid": .10, "floral": .12,
                "chevron": .08, "leopard": .12},
    "fabric": {None: .6, "knit": .08, "denim": .05, "lace": .07, "leather": .05, "satin": .08,
               "sheer": .07},
    "palette": {"default": .64, "pastel": .10, "neon": .06, "monochrome": .12, "earth": .08},
}
_TOP_GRAPHIC = {None: .9, "graphic": .1}


@dataclass(frozen=True)
class _Style:
    """How a rendered category is drawn: its silhouette family and slot distributions."""

    lower: str | None  # None: upper body only; "legs" / "skirt": lower part; "long": long upper body
    shape: dict        # SHAPE_SLOTS distributions (missing: the slot's empty value)
    parts: dict        # PART_SLOTS distributions (missing: defaults above, else empty)


def _style(lower, shape, **parts) -> _Style:
    return _Style(lower, shape, parts)


_SOLID_HEAVY = {"solid": .6, "striped": .12, "plaid": .06, "polka dot": .04, "floral": .04,
                "chevron": .06, "leopard": .08}

_STYLES: dict[str, _Style] = {
    # ---- upper body: one family of outlines; neckline, front, cuffs, hem and fabric tell them apart
    "Tee": _style(None, dict(sleeve={"short": .85, "long": .1, "none": .05},
                             fit={None: .6, "fitted": .2, "oversized": .2}, length={None: .8, "cropped": .2}),
                  neck={"crew": .85, "v": .1, "scoop": .05}, cuff={None: .92, "rib": .05, "turnup": .03},
                  hem={None: .95, "fringe": .03, "rib": .02}, front={None: .97, "placket": .03},
                  pockets={None: .9, "patch": .1}, graphic={None: .65, "graphic": .35},
                  fabric={None: .85, "knit": .05, "satin": .03, "lace": .03, "sheer": .04}),
    "Tank": _style(None, dict(sleeve={"none": .9, "short": .1}, fit={None: .6, "fitted": .3, "oversized": .1},
                              length={None: .75, "cropped": .25}, flare={None: .85, "flared": .15}),
                   neck={"scoop": .8, "v": .12, "square": .05, "crew": .03},
                   hem={None: .8, "ruffle": .08, "fringe": .08, "frayed": .04},
                   graphic={None: .8, "graphic": .2},
                   fabric={None: .7, "knit": .1, "lace": .07, "satin": .07, "sheer": .06}),
    "Blouse": _style(None, dict(sleeve={"long": .55, "short": .35, "none": .1},
                                fit={None: .6, "oversized": .25, "fitted": .15},
                                length={None: .8, "cropped": .1, "long": .1}, flare={None: .65, "flared": .35}),
                     neck={"tie": .55, "v": .2, "collar": .15, "square": .05, "scoop": .05},
                     cuff={"bell": .55, None: .25, "button": .2}, hem={None: .75, "ruffle": .25},
                     front={None: .7, "buttons": .3},
                     fabric={None: .3, "sheer": .25, "satin": .25, "lace": .2}, graphic={None: 1}),
    "Button-Down": _style(None, dict(sleeve={"long": .8, "short": .2}, length={"long": .5, None: .5},
                                     fit={None: .7, "fitted": .15, "oversized": .15}),
                          neck={"collar": .95, "v": .05}, front={"buttons": .95, "placket": .05},
                          cuff={"button": .75, "turnup": .15, None: .1}, pockets={"patch": .5, None: .5},
                          texture={"plaid": .3, "striped": .25, "solid": .3, "polka dot": .05, "floral": .05,
                                   "chevron": .03, "leopard": .02},
                          fabric={None: .85, "denim": .1, "satin": .05}, graphic={None: 1}),
    "Henley": _style(None, dict(sleeve={"long": .6, "short": .4}, fit={None: .6, "fitted": .3, "oversized": .1},
                                length={None: .9, "cropped": .1}),
                     neck={"crew": .85, "scoop": .15}, front={"placket": .9, None: .1},
                     cuff={None: .6, "rib": .3, "turnup": .1}, hem={None: .85, "rib": .15},
                     fabric={None: .65, "knit": .35}, graphic={None: .9, "graphic": .1}),
    "Turtleneck": _style(None, dict(sleeve={"long": .85, "none": .1, "short": .05},
                                    fit={"fitted": .5, None: .4, "oversized": .1}, length={None: .8, "cropped": .2}),
                         neck={"turtle": .95, "crew": .05}, cuff={"rib": .6, None: .4},
                         hem={"rib": .5, None: .5}, texture=_SOLID_HEAVY,
                         fabric={"knit": .6, None: .3, "satin": .1}, graphic={None: 1}),
    "Sweater": _style(None, dict(sleeve={"long": .95, "short": .05},
                                 fit={None: .5, "oversized": .35, "fitted": .15}, length={None: .8, "cropped": .2}),
                      neck={"crew": .6, "v": .3, "turtle": .05, "collar": .05}, front={None: .9, "buttons": .1},
                      cuff={"rib": .9, None: .1}, hem={"rib": .9, None: .07, "fringe": .03},
                      fabric={"knit": .8, None: .2}, graphic={None: .9, "graphic": .1}),
    "Cardigan": _style(None, dict(sleeve={"long": .9, "short": .1}, fit={None: .6, "oversized": .3, "fitted": .1},
                                  length={"long": .4, None: .5, "cropped": .1}),
                       neck={"v": .85, "crew": .15}, front={"buttons": .75, "open": .25},
                       cuff={"rib": .7, None: .3}, hem={"rib": .7, None: .3}, pockets={None: .7, "patch": .3},
                       fabric={"knit": .75, None: .25}, graphic={None: 1}),
    "Hoodie": _style(None, dict(sleeve={"long": 1}, fit={"oversized": .4, None: .5, "fitted": .1},
                                length={None: .85, "cropped": .15}),
                     neck={"hood": .95, "crew": .05}, cords={"cords": .65, None: .35},
                     front={None: .6, "zip": .4}, pockets={"kangaroo": .7, None: .3},
                     cuff={"rib": .85, None: .15}, hem={"rib": .85, None: .15}, texture=_SOLID_HEAVY,
                     graphic={None: .75, "graphic": .25}, fabric={None: .65, "knit": .35}),
    "Jacket": _style(None, dict(sleeve={"long": 1}, fit={None: .6, "oversized": .25, "fitted": .15},
                                length={None: .8, "cropped": .2}),
                     neck={"stand": .45, "collar": .3, "hood": .15, "lapel": .1},
                     front={"zip": .65, "buttons": .25, "open": .1}, pockets={"flap": .6, None: .4},
                     cuff={None: .5, "rib": .3, "button": .2}, hem={None: .7, "rib": .3},
                     fabric={None: .4, "denim": .3, "leather": .3}, texture=_SOLID_HEAVY, graphic={None: 1}),
    "Blazer": _style(None, dict(sleeve={"long": .9, "short": .1}, fit={"fitted": .4, None: .5, "oversized": .1},
                                length={"long": .5, None: .4, "cropped": .1}),
                     neck={"lapel": .95, "shawl": .05}, front={"buttons": .6, "double": .25, "open": .15},
                     pockets={"flap": .75, None: .25}, cuff={"button": .5, None: .5},
                     texture={"solid": .55, "plaid": .2, "striped": .1, "polka dot": .03, "floral": .04,
                              "chevron": .03, "leopard": .05},
                     fabric={None: .8, "satin": .05, "leather": .05, "knit": .05, "denim": .05}, graphic={None: 1}),
    "Top": _style(None, dict(sleeve={"none": .4, "short": .4, "long": .2},
                             fit={None: .5, "fitted": .3, "oversized": .2}, length={"cropped": .4, None: .6},
                             flare={None: .7, "flared": .3}, drop={None: .8, "drop": .2}),
                  neck={"square": .5, "scoop": .15, "v": .15, "tie": .1, "crew": .1},
                  cuff={None: .6, "bell": .35, "button": .05}, hem={"ruffle": .45, None: .45, "fringe": .1},
                  fabric={None: .5, "lace": .15, "satin": .15, "sheer": .2}, graphic={None: .9, "graphic": .1}),
    # ---- lower body: trousers and shorts share outlines; waistband, leg ends and fabric tell them apart
    "Shorts": _style("legs", dict(length={"short": 1}, leg={"straight": .5, "wide": .5},
                                  fit={None: .8, "fitted": .2}, flare={None: .85, "flared": .15}),
                     waist={"loops": .45, "elastic": .3, "drawstring": .15, "belt": .1},
                     cuff={None: .7, "turnup": .3}, hem={None: .9, "fringe": .05, "frayed": .05},
                     pockets={"slant": .5, None: .5},
                     fabric={None: .6, "denim": .25, "knit": .05, "lace": .05, "leather": .05}),
    "Skirt": _style("skirt", dict(length={None: .45, "mini": .3, "maxi": .25}, flare={None: .5, "flared": .5},
                                  fit={None: .75, "fitted": .25}),
                    waist={None: .45, "belt": .25, "elastic": .2, "sash": .1},
                    hem={None: .6, "ruffle": .25, "fringe": .15}, pockets={None: .85, "slant": .15},
                    fabric={None: .4, "denim": .1, "lace": .12, "knit": .04, "leather": .12, "satin": .12,
                            "sheer": .1}),
    "Jeans": _style("legs", dict(length={None: .8, "cropped": .2}, leg={"straight": .5, "tight": .35, "wide": .15},
                                 flare={None: .8, "flared": .2}, fit={None: .6, "fitted": .4}),
                    waist={"loops": .9, "belt": .1}, pockets={"slant": .9, None: .1},
                    cuff={None: .75, "turnup": .25}, hem={None: .85, "frayed": .15},
                    texture={"solid": .85, "striped": .05, "leopard": .03, "floral": .04, "polka dot": .03},
                    fabric={"denim": .85, None: .1, "leather": .05}),
    "Leggings": _style("legs", dict(length={None: .75, "cropped": .25}, leg={"tight": 1}, fit={"fitted": 1}),
                       waist={"wide": .85, "elastic": .15}, cuff={None: .9, "rib": .1},
                       pockets={None: .95, "slant": .05},
                       texture={"solid": .5, "leopard": .15, "striped": .1, "floral": .1, "chevron": .08,
                                "polka dot": .04, "plaid": .03},
                       fabric={None: .5, "leather": .25, "knit": .15, "sheer": .05, "satin": .05}),
    "Joggers": _style("legs", dict(length={None: .85, "cropped": .15}, leg={"taper": .9, "straight": .1},
                                   fit={None: .8, "oversized": .2}),
                      waist={"drawstring": .65, "elastic": .35}, cuff={"rib": .9, None: .1},
                      pockets={"slant": .5, None: .5}, texture=_SOLID_HEAVY,
                      fabric={None: .6, "knit": .3, "satin": .05, "leather": .05}),
    "Chinos": _style("legs", dict(length={None: .7, "cropped": .3}, leg={"straight": .7, "tight": .15, "wide": .15},
                                  fit={None: .7, "fitted": .3}),
                     waist={"loops": .85, "belt": .15}, cuff={"turnup": .45, None: .55},
                     pockets={"slant": .85, None: .15}, texture=_SOLID_HEAVY, fabric={None: 1},
                     palette={"default": .5, "earth": .35, "monochrome": .1, "pastel": .05}),
    "Sweatpants": _style("legs", dict(length={None: .9, "cropped": .1}, leg={"straight": .5, "taper": .3, "wide": .2},
                                      fit={None: .7, "oversized": .3}),
                         waist={"drawstring": .6, "elastic": .4}, cuff={None: .65, "rib": .35},
                         pockets={"slant": .4, None: .6}, texture=_SOLID_HEAVY, fabric={"knit": .5, None: .5},
                         palette={"default": .55, "monochrome": .3, "pastel": .1, "neon": .05}),
    "Cutoffs": _style("legs", dict(length={"short": 1}, leg={"straight": .6, "wide": .4},
                                   fit={None: .7, "fitted": .3}),
                      hem={"frayed": .9, "fringe": .1}, waist={"loops": .85, "belt": .15},
                      pockets={"slant": .6, None: .4}, texture=_SOLID_HEAVY,
                      fabric={"denim": .75, None: .25}),
    # ---- full body: dresses, one-pieces and long open garments
    "Dress": _style("skirt", dict(sleeve={"none": .45, "short": .35, "long": .2},
                                  length={None: .4, "mini": .3, "maxi": .3}, flare={None: .5, "flared": .5},
                                  fit={None: .6, "fitted": .3, "oversized": .1}),
                    neck={"v": .3, "scoop": .25, "crew": .2, "square": .15, "collar": .05, "tie": .05},
                    waist={None: .55, "belt": .25, "sash": .1, "elastic": .1},
                    hem={None: .7, "ruffle": .2, "fringe": .1}, cuff={None: .8, "bell": .15, "button": .05},
                    front={None: .9, "zip": .05, "buttons": .05}, pockets={None: .9, "slant": .1},
                    graphic={None: .93, "graphic": .07},
                    fabric={None: .4, "lace": .15, "satin": .15, "sheer": .1, "knit": .1, "denim": .05,
                            "leather": .05}),
    "Jumpsuit": _style("legs", dict(sleeve={"none": .5, "short": .3, "long": .2}, length={None: .8, "cropped": .2},
                                    leg={"wide": .5, "straight": .4, "tight": .1}, flare={None: .7, "flared": .3},
                                    fit={None: .7, "fitted": .2, "oversized": .1}),
                       neck={"v": .35, "collar": .25, "scoop": .15, "square": .1, "crew": .15},
                       waist={"belt": .45, "sash": .25, "elastic": .1, None: .2},
                       front={None: .55, "zip": .25, "buttons": .2}, pockets={"slant": .4, None: .6},
                       cuff={None: .75, "turnup": .25}, hem={None: .9, "frayed": .1},
                       fabric={None: .6, "denim": .2, "satin": .1, "knit": .1}),
    "Romper": _style("legs", dict(sleeve={"none": .5, "short": .4, "long": .1}, length={"short": 1},
                                  leg={"wide": .6, "straight": .4}, fit={None: .7, "fitted": .2, "oversized": .1}),
                     neck={"square": .35, "v": .25, "scoop": .2, "tie": .15, "crew": .05},
                     waist={"elastic": .6, "sash": .15, None: .25}, hem={"ruffle": .35, None: .55, "fringe": .1},
                     cuff={None: .7, "bell": .3}, front={None: .8, "buttons": .2},
                     fabric={None: .6, "lace": .1, "satin": .1, "sheer": .1, "denim": .1}),
    "Coat": _style("long", dict(sleeve={"long": 1}, length={None: .7, "maxi": .2, "cropped": .1},
                                fit={None: .6, "oversized": .3, "fitted": .1}, flare={None: .8, "flared": .2}),
                   neck={"lapel": .65, "collar": .2, "hood": .15}, front={"double": .45, "buttons": .35, "zip": .2},
                   waist={None: .6, "belt": .4}, pockets={"flap": .6, None: .4}, cuff={None: .6, "button": .4},
                   texture=_SOLID_HEAVY, fabric={None: .65, "leather": .15, "knit": .1, "denim": .05, "satin": .05}),
    "Kimono": _style("long", dict(sleeve={"long": 1}, drop={"drop": .9, None: .1},
                                  length={None: .55, "maxi": .3, "cropped": .15}),
                     neck={"band": 1}, front={None: .8, "open": .2}, waist={"sash": .5, None: .5},
                     hem={"fringe": .3, None: .7}, cuff={None: .8, "bell": .2},
                     texture={"floral": .4, "solid": .15, "striped": .1, "polka dot": .05, "plaid": .05,
                              "chevron": .1, "leopard": .15},
                     fabric={None: .45, "satin": .25, "sheer": .2, "lace": .1}),
    "Robe": _style("long", dict(sleeve={"long": .8, "short": .2}, drop={None: .7, "drop": .3},
                                length={None: .6, "maxi": .4}),
                   neck={"shawl": .9, "band": .1}, front={"wrap": .9, "open": .1}, waist={"sash": .85, None: .15},
                   cuff={"turnup": .5, None: .5}, pockets={"patch": .5, None: .5}, texture=_SOLID_HEAVY,
                   fabric={"knit": .4, "satin": .3, None: .3}),
    "Shirtdress": _style("skirt", dict(sleeve={"long": .4, "short": .5, "none": .1},
                                       length={None: .6, "mini": .2, "maxi": .2}, flare={None: .7, "flared": .3},
                                       fit={None: .7, "fitted": .2, "oversized": .1}),
                         neck={"collar": .95, "v": .05}, front={"buttons": .95, "placket": .05},
                         waist={"belt": .5, "sash": .15, None: .35}, cuff={"button": .4, "turnup": .2, None: .4},
                         pockets={"patch": .1, None: .9},
                         texture={"striped": .3, "plaid": .2, "solid": .35, "polka dot": .05, "floral": .1},
                         fabric={None: .8, "denim": .2}, graphic={None: 1}),
}

#: Real DeepFashion-C image counts of the rendered categories (Shirtdress is empty in the real data).
_REAL_COUNTS = {"Blazer": 7495, "Blouse": 24557, "Button-Down": 330, "Cardigan": 13311, "Henley": 716,
                "Hoodie": 4048, "Jacket": 10467, "Sweater": 13123, "Tank": 15429, "Tee": 36887, "Top": 10078,
                "Turtleneck": 146, "Chinos": 527, "Cutoffs": 1669, "Jeans": 7076, "Joggers": 4416,
                "Leggings": 5013, "Shorts": 19666, "Skirt": 14773, "Sweatpants": 3048, "Coat": 2120,
                "Dress": 72158, "Jumpsuit": 6153, "Kimono": 2294, "Robe": 150, "Romper": 7408, "Shirtdress": 0}
#: Sampling weights are max(count, floor) ** power: a long tail whose rarest class keeps ~1.3 % of the images.
_WEIGHT_FLOOR, _WEIGHT_POWER = 1500, 0.6
#: The rendered categories, in vocabulary order.
RENDERED_CATEGORIES: list[str] = [name for name, _ in DEEPFASHION_CATEGORIES if name in _STYLES]
#: The smallest tree: every rendered category could appear in each of the three splits.
MIN_IMAGES = 3 * len(RENDERED_CATEGORIES)


def category_weights() -> dict[str, float]:
    """Sampling probability of each rendered category (long-tailed, sums to 1)."""
    raw = {name: max(_REAL_COUNTS[name], _WEIGHT_FLOOR) ** _WEIGHT_POWER for name in RENDERED_CATEGORIES}
    total = sum(raw.values())
    return {name: w / total for name, w in raw.items()}


_CATEGORY_WEIGHTS = category_weights()
#: Category frequencies within each clothes type (the donor distribution of pooled silhouettes).
_TYPE_WEIGHTS = {t: {c: w for c, w in _CATEGORY_WEIGHTS.items() if _CATEGORY_TYPE[c] == t} for t in (1, 2, 3)}


def _empty(slot: str):
    """The unlabelled, undrawn value of a slot."""
    return "default" if slot == "palette" else None


def _part_distribution(category: str, slot: str) -> dict:
    """The value distribution of a part slot for a category."""
    style = _STYLES[category]
    if slot in style.parts:
        return style.parts[slot]
    if slot in _DEFAULT_PARTS:
        return _DEFAULT_PARTS[slot]
    if slot == "graphic" and _CATEGORY_TYPE[category] != 2:
        return _TOP_GRAPHIC
    return {_empty(slot): 1.0}


def _choice(rng: np.random.Generator, dist: dict):
    """Draw one key of a {value: weight} dict."""
    keys = list(dist)
    cumulative = np.cumsum([dist[k] for k in keys])
    return keys[min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], "right")),
                    len(keys) - 1)]


def spec_labels(spec: dict) -> list[str]:
    """The positive attribute names of a garment spec (a pure function of what is drawn), no repeats."""
    names = [_SLOT_LABELS[s][spec[s]] for s in SHAPE_SLOTS + PART_SLOTS if spec.get(s) in _SLOT_LABELS[s]]
    return list(dict.fromkeys(names))


def _applicable(spec: dict, slot: str, value) -> bool:
    """Whether `value` can be drawn on the garment sampled so far (labels must be rendered)."""
    if value == _empty(slot):
        return True
    ctype, lower = _CATEGORY_TYPE[spec["category"]], spec["lower"]
    if slot in ("neck", "front"):
        return ctype != 2
    if slot == "graphic":
        return ctype != 2 and spec.get("front") in (None, "zip", "placket")
    if slot == "cords":
        return spec.get("neck") == "hood"
    if slot == "cuff":  # sleeve ends (upper and full body) or trouser-leg ends (lower body)
        if ctype == 2:
            return lower == "legs" and value in ("rib", "turnup")
        return spec["sleeve"] != "none"
    if slot == "hem":
        if lower == "legs" and value == "rib":
            return False
        return not (ctype == 2 and spec.get("cuff") is not None)  # a leg ends in a cuff or a hem finish
    if slot == "waist":
        if ctype == 1:
            return False
        if ctype == 2:
            return value != "sash" or lower == "skirt"
        return value in (("belt", "sash") if lower == "long" else ("belt", "sash", "elastic", "drawstring"))
    if slot == "pockets":
        if value == "slant":
            return lower in ("legs", "skirt")
        if value == "kangaroo":
            return ctype == 1 and spec.get("front") in (None, "zip")
        return ctype != 2 and lower in (None, "long")
    if slot == "palette":  # denim has its own indigo colours
        return spec.get("fabric") != "denim"
    return True


def _labelled_options(spec: dict, slot: str, dist: dict) -> dict:
    """The applicable labelled values of a slot, with their weights."""
    return {k: w for k, w in dist.items()
            if w > 0 and k in _SLOT_LABELS[slot] and _applicable(spec, slot, k)}


def _draw_slot(spec: dict, slot: str, dist: dict, rng: np.random.Generator):
    """Sample a slot value among the applicable ones (the empty value if none applies)."""
    ok = {k: w for k, w in dist.items() if w > 0 and _applicable(spec, slot, k)}
    return _choice(rng, ok) if ok else _empty(slot)


def shape_source(category: str, rng: np.random.Generator,
                 geometry_informativeness: float = DEFAULT_GEOMETRY_INFORMATIVENESS) -> str:
    """The category whose silhouette distribution an image uses: its own with probability G, else a
    donor drawn by frequency from its clothes type (so, pooled over the type)."""
    if rng.random() < geometry_informativeness:
        return category
    return _choice(rng, _TYPE_WEIGHTS[_CATEGORY_TYPE[category]])


def sample_spec(category: str, rng: np.random.Generator, forced: dict | None = None,
                geometry_informativeness: float = DEFAULT_GEOMETRY_INFORMATIVENESS) -> dict:
    """Sample a garment spec: silhouette from :func:`shape_source`, local evidence and surface from the
    category; `forced` part slots (product title) are kept.

    Between _MIN_POSITIVES and (usually) _MAX_POSITIVES attributes: above the maximum, labelled values of
    secondary slots are dropped at random; below the minimum, a labelled part is added at random.
    Silhouette slots are never changed by this, so they keep the distribution of their source.
    """
    forced = dict(forced or {})
    donor = shape_source(category, rng, geometry_informativeness)
    spec: dict = {"category": category, "shape_source": donor, "lower": _STYLES[donor].lower}
    for slot in SHAPE_SLOTS:
        spec[slot] = _choice(rng, _STYLES[donor].shape.get(slot, {None: 1.0}))
    dists = {s: _part_distribution(category, s) for s in PART_SLOTS}
    for slot in PART_SLOTS:
        spec[slot] = forced[slot] if slot in forced else _draw_slot(spec, slot, dists[slot], rng)
    optional = [s for s in PART_SLOTS if s not in forced and dists[s].get(_empty(s), 0) > 0]
    while len(spec_labels(spec)) > _MAX_POSITIVES:
        labelled = [s for s in _THINNABLE if s in optional and spec[s] in _SLOT_LABELS[s]]
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
    forced = {}
    if rng.random() < 0.45:
        forced["texture"] = _choice(rng, _part_distribution(category, "texture"))
    fabric = _choice(rng, _part_distribution(category, "fabric"))
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
    weights = _CATEGORY_WEIGHTS
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


def _palette_colors(palette: str, rng: np.random.Generator, count: int = 3) -> np.ndarray:
    """`count` mutually contrasting colours (count, 3) of one palette."""
    colors = [_palette_color(palette, rng)]
    while len(colors) < count:
        c = _palette_color(palette, rng)
        if all(np.abs(c - o).sum() > 120 for o in colors) or rng.random() < 0.05:
            colors.append(c)
    return np.stack(colors)


def _denim_colors(rng: np.random.Generator) -> np.ndarray:
    """Garment colours (4, 3) of denim: dark, mid and faded indigo, and a light or dark trim."""
    hue, v = rng.uniform(.58, .64), rng.uniform(.3, .75)
    trim = _hsv(hue, .08, .92) if v < .55 else _hsv(hue, .6, .18)
    return np.stack([_hsv(hue, rng.uniform(.45, .75), v), _hsv(hue, rng.uniform(.2, .4), min(1., v + .3)),
                     _hsv(hue, rng.uniform(.5, .8), v * .55), trim])


def _random_palette(rng: np.random.Generator) -> str:
    return _choice(rng, _DEFAULT_PARTS["palette"])


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
    return dict(period=rng.uniform(.24, .4), angle=(0. if rng.random() < .6 else math.pi / 2)
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
    if name == "knit":  # cable-knit columns with chevron rows, coarse enough to survive a 64 px crop
        column = np.mod(u / 0.26, 1.0)
        cable = np.mod(v / 0.2 + 1.6 * np.abs(column - 0.5), 1.0) < 0.5
        return np.where(np.abs(column - 0.5) > 0.4, 0.62, np.where(cable, 1.08, 0.86)), one
    if name == "denim":  # indigo colours (see _denim_colors), diagonal twill and fading whiskers
        twill = np.mod((u + v) / 0.09, 1.0) < 0.5
        return np.where(twill, 1.0, 0.82) * (1.0 + 0.12 * np.sin(v * 4.0 + params["phase"] * 6)), one
    if name == "lace":  # a diamond net: light opaque threads over see-through cells
        p, q = _rotate(u, v, math.pi / 4)
        thread = (np.abs(np.mod(p / .12, 1.0) - .5) > .36) | (np.abs(np.mod(q / .12, 1.0) - .5) > .36)
        return np.where(thread, 1.3, 0.9), np.where(thread, 1.0, 0.3)
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
# The silhouette and the keypoints depend only on the SHAPE_SLOTS of a spec (and their own random
# stream); local parts are drawn on top and never move a keypoint.
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
    """Silhouette shapes, local parts that add to the garment mask, details and the 8 keypoints."""

    shapes: list = field(default_factory=list)   # the silhouette (from the shape slots only)
    extras: list = field(default_factory=list)   # mask polygons of local parts (hood, collar band, bell cuffs)
    strands: list = field(default_factory=list)  # (polyline, width) pairs that belong to the mask (fringes)
    details: list = field(default_factory=list)
    keypoints: np.ndarray = field(default_factory=lambda: np.full((8, 2), np.nan))
    parts: list = field(default_factory=list)    # _Part: which extras/strands/details each part drew


@dataclass
class _Part:
    """What one local part (a part function: neck, front, cuff, waist, hem...) added to a garment."""

    name: str
    extras: list
    strands: list
    details: list

    def points(self) -> np.ndarray:
        """Every vertex of its pieces (k, 2)."""
        return np.concatenate(self.extras + [s for s, _ in self.strands] + [d.pts for d in self.details])


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


def _proportions(spec: dict, rng: np.random.Generator) -> dict:
    """Body measurements (canonical units) for the spec's fit, length, flare and sleeve drop."""
    fit, length, flared = spec["fit"], spec["length"], spec["flare"] == "flared"
    widen = {"fitted": 0.92, "oversized": 1.14}.get(fit, 1.0)
    p = dict(nw=rng.uniform(.3, .37), sw=widen * rng.uniform(.96, 1.04),
             sy=.12 + (.12 if fit == "oversized" else 0.), wy=rng.uniform(1.45, 1.65),
             strap=rng.uniform(.15, .28), L=rng.uniform(2.25, 2.55))
    p["aw"] = p["sw"] * .92
    p["ay"] = (1.25 if spec["drop"] == "drop" else .8) + (.12 if fit == "oversized" else 0.)
    p["ww"] = p["aw"] * {"fitted": .8, "oversized": .98}.get(fit, .9)
    if spec["lower"] == "long":
        p["L"] = {"maxi": 4.8, "cropped": 2.9}.get(length, p["L"] * 1.65)
    else:
        p["L"] = {"cropped": p["L"] * .63, "long": p["L"] * 1.24}.get(length, p["L"])
    p["hw"] = p["aw"] * (1.35 if flared else .9 if fit == "fitted" else 1.0)
    return p


def _sleeve(p: dict, spec: dict, rng: np.random.Generator):
    """Left sleeve polygon (or None when sleeveless), its cuff frame, and the sleeve keypoint."""
    kind = spec["sleeve"]
    if kind == "none":
        return None, None, np.array([-p["aw"], p["ay"] + .05])
    if spec["drop"] == "drop":  # wide kimono sleeve from a dropped armhole
        theta, length, half = rng.uniform(65, 85), rng.uniform(1.2, 1.5), rng.uniform(.5, .62)
        length *= 1.0 if kind == "long" else .6
    elif kind == "short":
        theta, length, half = rng.uniform(40, 65), rng.uniform(.6, .75), rng.uniform(.3, .36)
    else:
        theta, length, half = rng.uniform(20, 45), rng.uniform(2.0, 2.3), rng.uniform(.18, .23)
    length += .15 if spec["fit"] == "oversized" else 0.
    t = math.radians(theta)
    top, bottom = np.array([-p["sw"], p["sy"]]), np.array([-p["aw"], p["ay"]])
    d = np.array([-math.sin(t), math.cos(t)])  # along the sleeve, outward-down (left side)
    n = np.array([-math.cos(t), -math.sin(t)])  # across the cuff, towards the shoulder edge
    cuff = (top + bottom) / 2 + length * d
    poly = np.array([top, cuff + half * n, cuff - half * n, bottom])
    return poly, (cuff, d, n, half), cuff


def _shoulders(p: dict, spec: dict) -> list:
    """Left outline from the neck corner down to the armpit (strap + armhole when sleeveless)."""
    if spec["sleeve"] != "none":
        return [(-p["nw"], 0.), (-p["sw"], p["sy"]), (-p["aw"], p["ay"])]
    s = p["nw"] + p["strap"]
    return [(-p["nw"], 0.), (-s, 0.), (-s - .04, .3), (-(p["aw"] - .1), p["ay"] - .1),
            (-p["aw"], p["ay"] + .05)]


_LEG_CUTS = {"tight": (.30, .42), "straight": (.42, .5), "taper": (.30, .5), "wide": (.62, .55)}
_SHORT_LEG_WIDTH = {"tight": .62, "straight": .72, "taper": .7, "wide": .85}


def _legs_chain(spec: dict, x0: float, y0: float, rng) -> tuple[list, dict]:
    """Left outline of trousers/shorts from the waist corner to the crotch, and the leg geometry."""
    cut, length = spec["leg"] or "straight", spec["length"]
    wo, lc = _LEG_CUTS[cut]
    ly = rng.uniform(3.4, 3.8)
    if length == "short":
        wo, lc, ly = _SHORT_LEG_WIDTH[cut], .55, ly * .4
    elif length == "cropped":
        ly *= .74
    if spec["fit"] == "fitted":
        wo *= .82
    elif spec["fit"] == "oversized":
        wo, lc = wo * 1.2, lc * 1.1
    hb = x0 * (1.1 if cut == "tight" else 1.2)
    knee = .5 if cut == "taper" else wo * .9
    kneed = cut == "taper" or spec["flare"] == "flared" and length != "short"
    if spec["flare"] == "flared":
        wo *= 1.8
    outer, inner = [(-(lc + wo / 2), y0 + ly)], [(-(lc - wo / 2), y0 + ly)]
    if kneed:
        outer.insert(0, (-(lc + knee / 2), y0 + ly * .6))
        inner.append((-(lc - knee / 2), y0 + ly * .6))
    chain = [(-x0, y0), (-hb, y0 + .6)] + outer + inner + [(0., y0 + 1.0)]
    bottom = y0 + ly
    return chain, dict(kind="legs", lc=lc, wo=wo, bottom=bottom, hb=hb,
                       segments=[(-(lc + wo / 2), -(lc - wo / 2), bottom)])


def _skirt_chain(spec: dict, x0: float, y0: float, rng) -> tuple[list, dict]:
    """Left outline of a skirt from the waist corner to the hem corner."""
    ls = rng.uniform(2.0, 2.5)
    ls = {"mini": ls * .58, "maxi": ls * 1.55}.get(spec["length"], ls)
    hb = x0 * 1.2
    hw = hb * (1.65 if spec["flare"] == "flared" else 1.0 if spec["fit"] == "fitted" else 1.18)
    bottom = y0 + ls
    return [(-x0, y0), (-hb, y0 + .55), (-hw, bottom)], dict(
        kind="skirt", hw=hw, bottom=bottom, hb=hb, side=(-hb, y0 + .55), segments=[(-hw, hw, bottom)])


def _torso_chain(p: dict) -> tuple[list, dict]:
    """Left outline below the armpit of an upper body that ends at its own hem (tops, coats)."""
    chain = [(-p["ww"], p["wy"])] if p["L"] > p["wy"] + .25 else []
    side = chain[0] if chain else (-p["aw"], p["ay"])
    return chain + [(-p["hw"], p["L"])], dict(kind="top", hw=p["hw"], bottom=p["L"], hb=p["hw"], side=side,
                                              segments=[(-p["hw"], p["hw"], p["L"])])


def build_garment(spec: dict, rng: np.random.Generator) -> _Garment:
    """Canonical silhouette, local parts and keypoints of a spec.

    Two random streams are split off `rng`: one for the silhouette (read only with the shape slots,
    so the keypoints do not depend on any local part) and one for the parts.
    """
    shape_rng, part_rng = (np.random.default_rng(int(s)) for s in rng.integers(1 << 62, size=2))
    has_top, lower = _CATEGORY_TYPE[spec["category"]] != 2, spec["lower"]
    g = _Garment()
    p = _proportions(spec, shape_rng)
    waist = (p["ww"], p["wy"]) if has_top else (shape_rng.uniform(.78, .88), 0.)
    chain, frame = [], None
    if has_top:
        chain += _shoulders(p, spec)
        sleeve, frame, g.keypoints[2] = _sleeve(p, spec, shape_rng)
        g.keypoints[0] = (-p["nw"], 0.)
        if sleeve is not None:
            g.shapes += _both(sleeve)
    if lower in (None, "long"):
        low, hem = _torso_chain(p)
    elif lower == "legs":
        low, hem = _legs_chain(spec, waist[0], waist[1], shape_rng)
    else:
        low, hem = _skirt_chain(spec, waist[0], waist[1], shape_rng)
    if lower is not None:
        g.keypoints[4] = (-waist[0], waist[1])
    g.keypoints[6] = (-hem["lc"] if hem["kind"] == "legs" else -hem["hw"], hem["bottom"])
    g.shapes.insert(0, _mirror(chain + low))
    for a, b in ((0, 1), (2, 3), (4, 5), (6, 7)):
        g.keypoints[b] = g.keypoints[a] * np.array([-1., 1.])
    _draw_parts(g, spec, p, waist, frame, hem, has_top, part_rng)
    return g


# --------------------------------------------------------------------------------------------------
# Local parts: neckline/collar, front, cuffs, waist, hem finish, pockets (canonical units)
# --------------------------------------------------------------------------------------------------

def _draw_parts(g: _Garment, spec: dict, p: dict, waist: tuple, frame, hem: dict, has_top: bool,
                rng: np.random.Generator) -> None:
    """Draw every local part of the spec over the silhouette (each recorded as a :class:`_Part`)."""
    def part(name, draw, *args):
        counts = len(g.extras), len(g.strands), len(g.details)
        result = draw(g, *args)
        added = [g.extras[counts[0]:], g.strands[counts[1]:], g.details[counts[2]:]]
        if any(added):
            g.parts.append(_Part(name, *added))
        return result

    if has_top:
        depth = part("neck", _neck, spec["neck"], p, hem["bottom"])
        part("front", _front, spec, p, depth, hem)
        part("cuff", _sleeve_cuff, spec["cuff"], frame)
        if spec["graphic"] == "graphic":
            part("graphic", _graphic, np.array([0., max(depth + .35, .95)]), rng)
        if spec["cords"] == "cords":
            part("cords", _drawstrings, .12)
    elif hem["kind"] == "legs":
        part("cuff", _leg_cuff, spec["cuff"], hem)
    part("waist", _waist, spec["waist"], waist, has_top, hem)
    part("hem", _hem_finish, spec["hem"], hem)
    part("pockets", _pockets, spec, p, waist, has_top, hem)
    if spec["fabric"] == "denim":
        part("topstitch", _topstitch, hem, waist, has_top)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def _ribs(g: _Garment, x0: float, x1: float, y0: float, y1: float, step: float = .08) -> None:
    """Vertical rib/gather lines over a band."""
    for x in np.arange(x0 + step / 2, x1, step):
        g.details.append(_Detail("line", np.array([(x, y0 + .02), (x, y1 - .02)]), None, "shade", .025))


_NECK_DEPTH = {"crew": .22, "scoop": .5, "v": .7, "square": .42, "collar": .2, "tie": .2, "lapel": .95,
               "shawl": .9, "stand": .15, None: .18}


def _neck(g: _Garment, neck: str | None, p: dict, bottom: float) -> float:
    """Neckline opening and collar/hood/turtleneck/bow; returns the front neck depth."""
    nw = p["nw"]
    if neck == "hood":  # a hood lying on the back, its lined opening framing the neck
        hood = _mirror([(0., -.32), (-.36, -.34), (-.64, -.2), (-.8, .06), (-nw - .1, .14)])
        g.extras.append(hood)
        g.details.append(_Detail("poly", hood, None, "edge", .03))
        lining = _mirror([(0., -.2), (-.3, -.2), (-.5, -.04), (-.42, .14), (0., .24)])
        g.details.append(_Detail("poly", lining, "band", "edge", .03))
        g.details.append(_Detail("poly", _mirror([(0., -.06), (-.2, -.06), (-.3, .06), (0., .16)]), "inner"))
        return .22
    if neck == "turtle":  # a tall ribbed band standing above the neckline
        band = _rect(-nw - .06, -.3, nw + .06, .1)
        g.extras.append(band)
        g.details.append(_Detail("poly", band, "band", "edge", .03))
        _ribs(g, -nw - .06, nw + .06, -.3, .1)
        g.details.append(_Detail("line", np.array([(-nw - .06, -.08), (nw + .06, -.08)]), None, "edge", .03))
        return .1
    depth = (p["wy"] - .1 if bottom > p["wy"] + .25 else bottom * .6) if neck == "band" else _NECK_DEPTH[neck]
    if neck in ("v", "lapel", "shawl", "band"):
        opening = np.array([(-nw, 0.), (0., depth), (nw, 0.)])
    elif neck == "square":
        opening = _rect(-nw * .95, 0., nw * .95, depth)
    else:
        t = np.linspace(0, math.pi, 13)
        opening = np.stack([-nw * np.cos(t), depth * np.sin(t)], axis=1)
    crew = neck == "crew"
    g.details.append(_Detail("poly", opening, "inner", "band" if crew else "edge", .14 if crew else .035))
    if neck == "collar":
        flap = [(-nw - .1, -.06), (-.02, .22), (-.22, .6), (-nw - .34, .4)]
        g.details += [_Detail("poly", s, "light", "edge", .025) for s in _both(flap)]
    elif neck == "lapel":
        lapel = [(-nw, 0.), (-.04, depth), (-.36, depth * .62), (-nw - .3, .3), (-nw - .12, .22)]
        g.details += [_Detail("poly", s, "shade", "edge", .025) for s in _both(lapel)]
    elif neck == "shawl":
        roll = [(-nw - .04, -.02), (-nw * .7, depth * .5), (-.06, depth)]
        g.details += [_Detail("line", s, None, "band", .2) for s in _both(roll)]
    elif neck == "band":  # kimono: a wide contrasting band along the neckline and the front edges
        edge = [(-nw - .02, 0.), (-.1, depth), (-.1, bottom - .03)]
        g.details += [_Detail("line", s, None, "band", .2) for s in _both(edge)]
    elif neck == "tie":
        _bow(g, 0., .24, "band", .36)
    elif neck == "stand":
        band = _rect(-nw - .03, -.1, nw + .03, .07)
        g.extras.append(band)
        g.details.append(_Detail("poly", band, "shade", "edge", .025))
    return depth


def _bow(g: _Garment, x: float, y: float, role: str, size: float) -> None:
    """A tied bow: two loops, a knot and two tails."""
    for s in (-1, 1):
        loop = np.array([(x, y), (x + s * size, y - size * .45), (x + s * size, y + size * .45)])
        g.details.append(_Detail("poly", loop, role, "edge", .02))
        tail = np.array([(x + s * .04, y), (x + s * size * .45, y + size * 1.5)])
        g.details.append(_Detail("line", tail, None, role, size * .25))
    g.details.append(_Detail("dot", np.array([(x, y)]), role, "edge", size * .22))


def _button_column(g: _Garment, x: float, top: float, bottom: float, spacing: float = .36) -> None:
    count = max(2, int((bottom - top) / spacing) + 1)
    for y in np.linspace(top, bottom, count):
        g.details.append(_Detail("dot", np.array([(x, y)]), "button", "edge", .09))


def _front(g: _Garment, spec: dict, p: dict, depth: float, hem: dict) -> None:
    """Front closure or opening along the centre line, from the neck down."""
    kind, bottom = spec["front"], hem["bottom"]
    end = p["wy"] if hem["kind"] == "legs" else bottom - .3
    if kind == "buttons":
        g.details.append(_Detail("line", np.array([(.08, depth), (.08, bottom)]), None, "shade", .025))
        _button_column(g, 0., depth + .15, end)
    elif kind == "placket":
        g.details.append(_Detail("poly", _rect(-.1, depth - .02, .1, depth + .66), "shade", "edge", .025))
        _button_column(g, 0., depth + .13, depth + .53, .2)
    elif kind == "zip":
        end = bottom if hem["kind"] == "top" else depth + .8
        g.details.append(_Detail("line", np.array([(0., depth), (0., end)]), None, "metal", .05))
        for y in np.arange(depth + .03, end, .07):
            g.details.append(_Detail("line", np.array([(-.05, y), (.05, y)]), None, "metal", .02))
        g.details.append(_Detail("poly", _rect(-.06, depth + .02, .06, depth + .26), "metal", "edge", .015))
    elif kind == "open":  # the garment hangs open over a light layer
        g.details.append(_Detail("poly", _rect(-.11, depth, .11, bottom - .02), "light", "edge", .035))
    elif kind == "double":
        g.details.append(_Detail("line", np.array([(.32, depth), (.32, bottom)]), None, "edge", .03))
        for x in (-.2, .2):
            _button_column(g, x, depth + .12, min(end, depth + 1.1), .45)
    elif kind == "wrap":  # the front panel crosses over diagonally
        edge = np.array([(0., depth), (hem.get("hw", .6) * .55, bottom)])
        g.details.append(_Detail("line", edge, None, "edge", .045))


def _sleeve_cuff(g: _Garment, kind: str | None, frame) -> None:
    """Rib, turn-up, buttoned or bell ends on both sleeves."""
    if kind is None or frame is None:
        return
    c, d, n, half = frame

    def band(length):
        return np.array([c + half * n, c - half * n, c - half * n - length * d, c + half * n - length * d])

    parts = []
    if kind == "rib":
        parts.append(_Detail("poly", band(.38), "band", "edge", .025))
        for t in np.linspace(-.65, .65, 4):
            parts.append(_Detail("line", np.array([c + t * half * n, c + t * half * n - .38 * d]), None, "shade", .025))
    elif kind == "turnup":
        parts.append(_Detail("poly", band(.4), "light", "edge", .03))
        parts.append(_Detail("line", np.array([c + half * n - .2 * d, c - half * n - .2 * d]), None, "shade", .025))
    elif kind == "button":
        parts.append(_Detail("poly", band(.3), "shade", "edge", .025))
        parts.append(_Detail("dot", (c - .15 * d + .45 * half * n)[None], "button", "edge", .09))
    elif kind == "bell":  # the sleeve flares out into a wide open end
        wide = half + min(half, .3)
        flare = np.array([c + half * n - .55 * d, c + wide * n + .08 * d, c - wide * n + .08 * d,
                          c - half * n - .55 * d])
        g.extras += _both(flare)
        parts.append(_Detail("line", np.array([c + wide * n + .08 * d, c - wide * n + .08 * d]), None, "edge", .045))
        for t in (-.6, 0., .6):
            parts.append(_Detail("line", np.array([c + t * half * n - .5 * d, c + t * wide * n + .06 * d]),
                                 None, "shade", .025))
    for det in parts:
        for pts in _both(det.pts):
            g.details.append(_Detail(det.kind, pts, det.fill, det.line, det.width))


def _leg_cuff(g: _Garment, kind: str | None, hem: dict) -> None:
    """Rib cuffs or turn-ups at both trouser-leg ends."""
    if kind is None:
        return
    for xl, xr, y in _segments(hem):
        if kind == "rib":
            g.details.append(_Detail("poly", _rect(xl + .02, y - .38, xr - .02, y), "band", "edge", .025))
            _ribs(g, xl + .02, xr - .02, y - .38, y, .07)
        else:
            g.details.append(_Detail("poly", _rect(xl - .02, y - .4, xr + .02, y), "light", "edge", .03))
            g.details.append(_Detail("line", np.array([(xl, y - .2), (xr, y - .2)]), None, "shade", .025))


def _segments(hem: dict) -> list[tuple]:
    """Hem lines (x_left, x_right, y): one across a top/skirt, one per trouser leg (both mirrored)."""
    if hem["kind"] != "legs":
        return hem["segments"]
    (xl, xr, y), = hem["segments"]
    return [(xl, xr, y), (-xr, -xl, y)]


def _band_above(hem: dict, seg: tuple, height: float) -> np.ndarray:
    """A band of `height` above one hem line, following the sides of a top or skirt."""
    xl, xr, y = seg
    if hem["kind"] == "legs":
        return _rect(xl, y - height, xr, y)
    sx, sy = hem["side"]
    shift = (sx - xl) * min(1., height / max(y - sy, 1e-6))
    return np.array([(xl + shift, y - height), (xr - shift, y - height), (xr, y), (xl, y)])


def _hem_finish(g: _Garment, kind: str | None, hem: dict) -> None:
    """Rib band, ruffle, fringe, frayed edge or contrast band along every hem line."""
    if kind is None:
        return
    for seg in _segments(hem):
        xl, xr, y = seg
        if kind == "rib":
            g.details.append(_Detail("poly", _band_above(hem, seg, .34), "band", "edge", .025))
            _ribs(g, xl, xr, y - .34, y)
        elif kind == "ruffle":
            band = _band_above(hem, seg, .45)
            g.details.append(_Detail("poly", band, "light", "edge", .035))
            xs = np.linspace(xl, xr, max(5, int((xr - xl) / .05)))
            ys = y + .07 * np.abs(np.sin(math.pi * (xs - xl) / .22))
            scallop = np.stack([xs, ys], axis=1)
            g.extras.append(np.vstack([[(xl, y - .02)], scallop, [(xr, y - .02)]]))
            g.details.append(_Detail("line", scallop, None, "edge", .035))
            for x in np.arange(xl + .1, xr - .05, .16):
                g.details.append(_Detail("line", np.array([(x, y - .41), (x + .02, y + .04)]), None, "shade", .025))
        elif kind == "fringe":
            g.details.append(_Detail("line", np.array([(xl, y - .3), (xr, y - .3)]), None, "edge", .05))
            for x in np.arange(xl + .03, xr, .075):
                strand = np.array([(x, y - .3), (x + .01, y + .12)])
                g.strands.append((strand, .03))
                g.details.append(_Detail("line", strand, None, "band", .03))
        elif kind == "frayed":
            g.details.append(_Detail("poly", _band_above(hem, seg, .22), "light"))
            xs = np.arange(xl, xr + 1e-9, .04)
            zig = np.stack([xs, y - .03 + .06 * (np.arange(len(xs)) % 2)], axis=1)
            g.details.append(_Detail("line", zig, None, "thread", .035))
            for x in np.arange(xl + .04, xr, .09):
                thread = np.array([(x, y - .02), (x + .02, y + .09)])
                g.strands.append((thread, .025))
                g.details.append(_Detail("line", thread, None, "thread", .025))
        elif kind == "band":
            g.details.append(_Detail("poly", _band_above(hem, seg, .28), "print", "edge", .025))


def _waist(g: _Garment, kind: str | None, waist: tuple, has_top: bool, hem: dict) -> None:
    """Waistband of a lower garment, or the waist seam/belt/sash/elastic of a full-body one."""
    wx, wy = waist
    legs = hem["kind"] == "legs"
    if not has_top:
        if kind in (None, "loops", "belt") and legs:  # fly
            g.details.append(_Detail("line", np.array([(.06, .26), (.08, .66), (0., .78)]), None, "shade", .025))
        if kind in (None, "loops", "belt"):
            g.details.append(_Detail("line", np.array([(-wx, .26), (wx, .26)]), None, "edge", .035))
        if kind == "loops":
            g.details.append(_Detail("poly", _rect(-wx, 0., wx, .26), "shade", "edge", .025))
            for x in (-.78 * wx, -.32 * wx, .32 * wx, .78 * wx):
                g.details.append(_Detail("poly", _rect(x - .04, -.02, x + .04, .33), "edge"))
            g.details.append(_Detail("dot", np.array([(0., .13)]), "metal", "edge", .09))
        elif kind in ("elastic", "drawstring"):
            g.details.append(_Detail("poly", _rect(-wx, 0., wx, .32), "band", "edge", .025))
            _ribs(g, -wx, wx, 0., .32, .07)
            if kind == "drawstring":
                _drawstrings(g, .14)
        elif kind == "belt":
            _belt(g, wx, .13)
        elif kind == "sash":
            g.details.append(_Detail("poly", _rect(-wx, 0., wx, .3), "band", "edge", .025))
            _bow(g, .35 * wx, .15, "band", .28)
        elif kind == "wide":
            g.details.append(_Detail("poly", _rect(-wx, 0., wx, .45), "shade", "edge", .03))
        return
    if hem["kind"] in ("legs", "skirt"):
        g.details.append(_Detail("line", np.array([(-wx, wy), (wx, wy)]), None, "edge", .025))
    if kind == "belt":
        _belt(g, wx, wy)
    elif kind == "sash":
        g.details.append(_Detail("poly", _rect(-wx - .03, wy - .14, wx + .03, wy + .14), "band", "edge", .02))
        _bow(g, .3 * wx, wy, "band", .28)
    elif kind in ("elastic", "drawstring"):
        g.details.append(_Detail("poly", _rect(-wx - .02, wy - .15, wx + .02, wy + .15), "band", "edge", .025))
        _ribs(g, -wx, wx, wy - .15, wy + .15, .07)
        if kind == "drawstring":
            _drawstrings(g, wy)


def _belt(g: _Garment, wx: float, y: float) -> None:
    """A dark belt with a metal buckle centred at height y."""
    g.details.append(_Detail("poly", _rect(-wx - .03, y - .1, wx + .03, y + .1), "belt", "edge", .02))
    g.details.append(_Detail("poly", _rect(-.12, y - .14, .12, y + .14), None, "metal", .045))


def _pockets(g: _Garment, spec: dict, p: dict, waist: tuple, has_top: bool, hem: dict) -> None:
    """Slanted hip pockets, a kangaroo pocket, or patch/flap pockets."""
    kind, bottom = spec["pockets"], hem["bottom"]
    if kind is None:
        return
    wx, wy = waist
    if kind == "slant":
        y0 = wy + (.1 if has_top else .26)
        slant = [(-wx * .55, y0), (-wx * .8, y0 + .28), (-hem["hb"] * .98, y0 + .45)]
        g.details += [_Detail("line", s, None, "edge", .035) for s in _both(slant)]
        if spec["fabric"] == "denim" and not has_top:
            g.details.append(_Detail("poly", _rect(wx * .5, .31, wx * .74, .49), None, "stitch", .025))
    elif kind == "kangaroo":
        y0, y1 = max(bottom - .8, p["ay"]), bottom - .25
        pocket = np.array([(-.55, y0), (.55, y0), (.72, y1), (-.72, y1)])
        g.details.append(_Detail("poly", pocket, "shade", "edge", .03))
    else:
        y = min(bottom - .55, p["wy"] + .55) if bottom > 1.8 else p["ay"] - .15
        x = .5 * p["hw"] if bottom > 1.8 else .45
        for s in _both(_rect(-x - .2, y - .18, -x + .2, y + .22)):
            g.details.append(_Detail("poly", s, None, "edge", .035))
            if kind == "flap":
                g.details.append(_Detail("poly", np.array([s[0], s[1], s[1] + (0, .14), s[0] + (0, .14)]),
                                         "shade", "edge", .025))


def _topstitch(g: _Garment, hem: dict, waist: tuple, has_top: bool) -> None:
    """Contrasting orange topstitching of denim along the hems (and the waistband)."""
    for xl, xr, y in _segments(hem):
        g.details.append(_Detail("line", np.array([(xl + .03, y - .1), (xr - .03, y - .1)]), None, "stitch", .03))
    if not has_top:
        g.details.append(_Detail("line", np.array([(-waist[0], .3), (waist[0], .3)]), None, "stitch", .03))


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


def _drawstrings(g: _Garment, y: float) -> None:
    """Two cords with metal tips hanging from the centre at height y."""
    for x in (-.12, .12):
        cord = np.array([(x, y), (x * 1.3, y + .48)])
        g.details.append(_Detail("line", cord, None, "cord", .035))
        g.details.append(_Detail("dot", cord[1:], "metal", "edge", .05))


# --------------------------------------------------------------------------------------------------
# Negative control: local parts displaced away from the functional points
# --------------------------------------------------------------------------------------------------

#: Where the local parts are drawn: at their functional points (the benchmark) or at random body points.
EVIDENCE_PLACEMENTS = ("functional", "displaced")
DEFAULT_EVIDENCE_PLACEMENT = "functional"
#: A displaced part is centred at least this far from every keypoint (canonical units; the shoulder
#: half-width is about 1), or as far as the body allows.
_DISPLACE_CLEARANCE = .8
_DISPLACE_CANDIDATES = 64


def _inside(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Which of `pts` (k, 2) lie inside the polygon (even-odd rule)."""
    x, y = pts[:, :1], pts[:, 1:]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (((y0 > y) != (y1 > y)) & (x < cross_x)).sum(1) % 2 == 1


def _body_point(g: _Garment, rng: np.random.Generator) -> np.ndarray:
    """A point drawn uniformly inside the body (the main silhouette polygon, sleeves excluded) among those
    at least _DISPLACE_CLEARANCE from every keypoint; the farthest of the candidates if none is."""
    body = g.shapes[0]
    lo, hi = body.min(0), body.max(0)
    keypoints = g.keypoints[~np.isnan(g.keypoints[:, 0])]
    candidates = np.empty((0, 2))
    while not len(candidates):
        candidates = lo + rng.random((_DISPLACE_CANDIDATES, 2)) * (hi - lo)
        candidates = candidates[_inside(body, candidates)]
    clearance = np.linalg.norm(candidates[:, None] - keypoints[None], axis=-1).min(1)
    clear = np.flatnonzero(clearance >= _DISPLACE_CLEARANCE)
    return candidates[clear[0] if len(clear) else clearance.argmax()]


def _halves(part: _Part) -> list[_Part]:
    """The left and right halves of a part none of whose pieces touches the centre line (a pair of cuffs,
    leg hems, pockets or cords), else the part itself."""
    halves = {side: _Part(part.name, [], [], []) for side in (-1, 1)}
    for kind, pieces, points in (("extras", part.extras, lambda e: e), ("strands", part.strands, lambda s: s[0]),
                                 ("details", part.details, lambda d: d.pts)):
        for piece in pieces:
            x = points(piece)[:, 0]
            side = -1 if x.max() < 0 else 1 if x.min() > 0 else 0
            if side == 0:
                return [part]
            getattr(halves[side], kind).append(piece)
    return [h for h in halves.values() if h.extras or h.strands or h.details]


def displace_parts(g: _Garment, rng: np.random.Generator) -> _Garment:
    """The negative control: a copy of `g` in which every local part (each half of a left/right pair on
    its own) is translated as a whole so that its centre lands on a :func:`_body_point`. The silhouette
    and the keypoints are shared with `g`."""
    moved = _Garment(shapes=g.shapes, keypoints=g.keypoints)
    for piece in (half for part in g.parts for half in _halves(part)):
        pts = piece.points()
        shift = _body_point(g, rng) - (pts.min(0) + pts.max(0)) / 2
        piece = _Part(piece.name, [e + shift for e in piece.extras], [(s + shift, w) for s, w in piece.strands],
                      [replace(d, pts=d.pts + shift) for d in piece.details])
        moved.extras += piece.extras
        moved.strands += piece.strands
        moved.details += piece.details
        moved.parts.append(piece)
    return moved


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
    """The silhouette's points (local parts do not change how the garment is framed)."""
    return np.concatenate(g.shapes)


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
    name = _choice(rng, _DEFAULT_PARTS["texture"])
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
    for shape in g.shapes + g.extras:
        draw.polygon(_pil_points(view.apply(shape)), fill=255)
    for strand, width in g.strands:
        draw.line(_pil_points(view.apply(strand)), fill=255, width=max(1, int(round(width * view.scale))))
    return np.asarray(img) > 0


def _paint_garment(canvas: np.ndarray, mask: np.ndarray, spec: dict, colors: np.ndarray,
                   view: _View, rng: np.random.Generator) -> None:
    """Texture x fabric x soft fold shading, in garment coordinates so it follows the garment.

    The texture's ink colours are toned down a little towards the base colour, and the fourth colour
    (the trim of the local parts) is not used, so that parts stand out from any pattern.
    """
    tex_params, fab_params = _texture_params(rng), _texture_params(rng)
    phase = rng.uniform(0, 2 * math.pi, 2)
    ys, xs = np.nonzero(mask)
    u, v = view.invert(xs.astype(np.float32) + .5, ys.astype(np.float32) + .5)
    inks = colors[:3].copy()
    inks[1:] = inks[0] + .6 * (inks[1:] - inks[0])
    rgb = _texture(spec["texture"], u, v, inks, tex_params)
    gain, alpha = _fabric(spec["fabric"], u, v, fab_params)
    shade = 1 + .07 * np.sin(1.3 * u + .7 * v + phase[0]) + .05 * np.sin(2.1 * v - .4 * u + phase[1])
    rgb = rgb * (gain * shade)[:, None]
    a = alpha[:, None]
    canvas[ys, xs] = canvas[ys, xs] * (1 - a) + rgb * a


def _detail_colors(colors: np.ndarray, rng: np.random.Generator) -> dict:
    """Colour of each detail role, derived from the garment colours (base, two inks, trim)."""
    c0, c1 = colors[0], colors[3]
    lum = float(c0 @ np.array([.299, .587, .114]))
    edge = c0 * .45 if lum > 60 else np.minimum(c0 + 70, 255)
    belt = [np.array([25., 22, 20]), np.array([100., 60, 30]), np.array([190., 150, 100]), c1][
        int(rng.integers(4))]
    metal = np.array([200., 200, 195]) if rng.random() < .6 else np.array([205., 170, 80])
    # tone steps large enough to read in a 64 px crop: darker on mid/light garments, lighter on dark ones
    shade = c0 * .55 if lum > 80 else np.minimum(c0 * .6 + 75, 255)
    light = np.minimum(c0 * .35 + 160, 255) if lum < 150 else c0 * .55
    inner = c0 * .3 if lum > 70 else np.minimum(c0 * .5 + 110, 255)
    return dict(edge=edge, shade=shade, light=light, inner=inner,
                band=c1, belt=belt, metal=metal, button=c1 * .8, print=colors[2],
                stitch=np.array([215., 150, 40]), cord=np.minimum(c1 + 40, 255),
                thread=np.array([236., 232, 222]))


def _draw_details(img: Image.Image, details: list, view: _View, roles: dict) -> None:
    """Draw collar, cuffs, closures, pockets, belts, prints... over the painted garment."""
    draw = ImageDraw.Draw(img)

    def rgb(role):
        return None if role is None else tuple(int(round(float(x))) for x in np.clip(roles[role], 0, 255))

    for det in details:
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


def _draw_outline(img: Image.Image, shapes: list, view: _View, color) -> None:
    """Thin seam/edge lines around every shape."""
    draw = ImageDraw.Draw(img)
    col = tuple(int(round(float(x))) for x in np.clip(color, 0, 255))
    for shape in shapes:
        pts = view.apply(shape)
        draw.line(_pil_points(np.vstack([pts, pts[:1]])), fill=col, width=1)


def _draw_garment(img: Image.Image, g: _Garment, view: _View, roles: dict, clip: np.ndarray | None) -> Image.Image:
    """Outline the silhouette, then draw the local parts (extras' outlines and details); with a `clip`
    mask, the local parts only inside it."""
    _draw_outline(img, g.shapes, view, roles["edge"])
    layer = img if clip is None else img.copy()
    _draw_outline(layer, g.extras, view, roles["edge"])
    _draw_details(layer, g.details, view, roles)
    return layer if clip is None else Image.composite(layer, img, Image.fromarray(clip))


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


def _landmarks(keypoints_px: np.ndarray, covered: np.ndarray) -> list[tuple]:
    """(visibility, x, y) per keypoint: 1-based pixel index clamped into the image; 2 outside, 1 occluded."""
    h, w = covered.shape
    out = []
    for x, y in keypoints_px:
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


def annotate_landmarks(keypoints_px: np.ndarray, truth: list[tuple], box: tuple, landmark_noise: float,
                       visibility_flip: float, rng: np.random.Generator) -> list[tuple]:
    """The landmarks as an annotator writes them: the true points jittered (sd `landmark_noise` x the box
    width/height), clamped into the box, and visible/occluded flags swapped at rate `visibility_flip`.

    Always draws the same random numbers, so the noise level changes nothing else in the tree.
    """
    x1, y1, x2, y2 = box
    jitter = rng.standard_normal((len(truth), 2)) * landmark_noise * np.array([x2 - x1 + 1, y2 - y1 + 1])
    flip = rng.random(len(truth)) < visibility_flip
    out = []
    for (vis, col, row), (x, y), (jx, jy), swap in zip(truth, keypoints_px, jitter, flip):
        if landmark_noise > 0:  # jitter the continuous point (truncated ones from their clamped pixel)
            x, y = (x, y) if vis != 2 else (col - .5, row - .5)
            col, row = math.floor(x + jx) + 1, math.floor(y + jy) + 1
        vis = 1 - vis if swap and vis in (0, 1) else vis
        out.append((vis, min(max(col, x1), x2), min(max(row, y1), y2)))
    return out


@dataclass
class _Scene:
    """A rendered image with what the evidence measure needs: the garment as drawn, the view, the clip."""

    img: Image.Image
    record: dict
    garment: _Garment          # as drawn (its parts displaced in the negative control)
    view: _View
    clip: np.ndarray | None    # the body mask that displaced parts are drawn inside (None: functional)


def render_image(plan: ImagePlan, seed: int, settings: dict | None = None) -> tuple[Image.Image, dict]:
    """Render one image and its annotation record (category, attributes, bbox, written landmarks).

    `settings`: geometry_informativeness, landmark_noise, visibility_flip, evidence_placement (defaults
    where missing). The record also holds the spec, the true (noise-free) landmarks and the keypoints
    in pixels.
    """
    scene = _render(plan, seed, settings)
    return scene.img, scene.record


def _render(plan: ImagePlan, seed: int, settings: dict | None) -> _Scene:
    """See :func:`render_image`. In the negative control the parts are moved by :func:`displace_parts`
    (from their own stream, ``spawn_key=(4, i)``) and drawn only inside the silhouette, which is then
    painted without the parts' extras; the box stays that of the functional garment, so every label,
    box and landmark is the functional tree's."""
    settings = {**default_settings(), **(settings or {})}
    placement = settings.get("evidence_placement", DEFAULT_EVIDENCE_PLACEMENT)
    _check_placement(placement)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, plan.index)))
    spec = sample_spec(plan.category, rng, dict(plan.forced), settings["geometry_informativeness"])
    w, h = _sample_size(rng)
    garment = build_garment(spec, rng)
    view = _sample_view(garment, w, h, rng)
    colors = _denim_colors(rng) if spec["fabric"] == "denim" else _palette_colors(spec["palette"], rng, 4)
    canvas = _background(w, h, rng)
    mask = _garment_mask(garment, view, w, h)
    drawn, clip = garment, None
    if placement == "displaced":
        part_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4, plan.index)))
        drawn, clip = displace_parts(garment, part_rng), _garment_mask(_Garment(shapes=garment.shapes), view, w, h)
    _paint_garment(canvas, mask if clip is None else clip, spec, colors, view, rng)
    img = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    roles = _detail_colors(colors, rng)
    img = _draw_garment(img, drawn, view, roles, clip)
    canvas = np.asarray(img, dtype=np.float32).copy()
    keypoints_px = view.apply(garment.keypoints)[SLOTS_BY_CLOTHES_TYPE[plan.clothes_type]]
    covered = _occlude(canvas, keypoints_px, view.scale, rng)
    img = _finish(canvas, rng)
    truth = _landmarks(keypoints_px, covered)
    box = _bbox(mask, truth)
    noise_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, plan.index)))
    written = annotate_landmarks(keypoints_px, truth, box, settings["landmark_noise"],
                                 settings["visibility_flip"], noise_rng)
    record = dict(index=plan.index, width=w, height=h, spec=spec, attributes=attribute_vector(spec),
                  bbox=box, landmarks=written, true_landmarks=truth, keypoints=keypoints_px)
    return _Scene(img, record, drawn, view, clip)


# --------------------------------------------------------------------------------------------------
# How far the drawn evidence lies from the landmarks (the negative control's check)
# --------------------------------------------------------------------------------------------------

def _part_mask(part: _Part, view: _View, w: int, h: int) -> np.ndarray:
    """The pixels a part covers: its extra polygons, strands and details."""
    img = Image.new("RGB", (w, h))
    _draw_details(img, part.details, view, collections.defaultdict(lambda: np.full(3, 255.)))
    extras = _garment_mask(_Garment(extras=part.extras, strands=part.strands), view, w, h)
    return extras | (np.asarray(img)[..., 0] > 0)


def _offsets(scene: _Scene, radius: float) -> list[dict]:
    """See :func:`evidence_offsets`."""
    record = scene.record
    visible = record["keypoints"][[v == 0 for v, _, _ in record["true_landmarks"]]]
    if not len(visible):
        return []
    x1, y1, x2, y2 = record["bbox"]
    diagonal = math.hypot(x2 - x1 + 1, y2 - y1 + 1)
    rows = []
    for part in (half for part in scene.garment.parts for half in _halves(part)):
        covered = _part_mask(part, scene.view, record["width"], record["height"])
        if scene.clip is not None:
            covered &= scene.clip
        ys, xs = np.nonzero(covered)
        if not len(xs):
            continue
        pixels = np.column_stack([xs, ys]) + .5
        near = np.linalg.norm(pixels[:, None] - visible[None], axis=-1).min(1) / diagonal
        centre = np.linalg.norm(pixels.mean(0) - visible, axis=1).min() / diagonal
        rows.append(dict(part=part.name, centre=float(centre), near=float(np.mean(near < radius))))
    return rows


def evidence_offsets(plan: ImagePlan, seed: int, settings: dict | None = None, radius: float = .1) -> list[dict]:
    """Where the local evidence of one image is drawn, relative to its visible (true) landmarks.

    One row per drawn part (each half of a left/right pair on its own; parts hidden by the frame or
    images without a visible landmark give none): ``part`` (neck, front, cuff, graphic, cords, waist,
    hem, pockets, topstitch), ``centre`` the distance from the centroid of its pixels to the nearest
    visible landmark, and ``near`` the share of its pixels within `radius` of one, distances in box
    diagonals. Occluders are ignored.
    """
    return _offsets(_render(plan, seed, settings), radius)


def placement_report(n: int = 400, seed: int = 0, radius: float = .1, **settings) -> dict:
    """The negative control measured on the first `n` images of a tree, rendered in both placements.

    ``parts``: {part: {placement: count, centre mean/median, near mean}} of :func:`evidence_offsets`
    (and ``all`` parts together); ``changed``: mean/median share of the image and of the box pixels
    that differ between the placements by more than 2 levels in a channel (before JPEG coding; the
    contrast step of :func:`_finish`, around the image mean, moves the other pixels by 1 at most);
    ``box_margin``: share of the displaced images whose drawn garment is smaller than the (functional)
    box, and among those the median of the largest gap between them, as a share of the box side.
    """
    plans = plan_images(n, seed)
    rows: dict = {p: [] for p in EVIDENCE_PLACEMENTS}
    image_changed, box_changed, gaps = [], [], []
    for plan in plans:
        scenes = [_render(plan, seed, dict(settings, evidence_placement=p)) for p in EVIDENCE_PLACEMENTS]
        for placement, scene in zip(EVIDENCE_PLACEMENTS, scenes):
            rows[placement] += _offsets(scene, radius)
        functional, displaced = scenes
        diff = (np.abs(np.asarray(functional.img, np.int16) - np.asarray(displaced.img, np.int16)) > 2).any(-1)
        box = np.array(functional.record["bbox"])
        image_changed.append(diff.mean())
        box_changed.append(diff[box[1] - 1:box[3], box[0] - 1:box[2]].mean())
        extent = np.array(_bbox(displaced.clip, displaced.record["true_landmarks"]))
        gaps.append(np.max(np.abs(extent - box) / np.tile(box[2:] - box[:2] + 1, 2)))

    def stats(found):
        if not found:
            return dict(count=0)
        centre = [r["centre"] for r in found]
        return dict(count=len(found), centre_mean=float(np.mean(centre)), centre_median=float(np.median(centre)),
                    near_mean=float(np.mean([r["near"] for r in found])))

    names = list(dict.fromkeys(r["part"] for p in EVIDENCE_PLACEMENTS for r in rows[p]))
    parts = {name: {p: stats([r for r in rows[p] if r["part"] == name]) for p in EVIDENCE_PLACEMENTS}
             for name in names}
    parts["all"] = {p: stats(rows[p]) for p in EVIDENCE_PLACEMENTS}
    gaps = np.array(gaps)
    return dict(n=n, seed=seed, radius=radius, settings=settings, parts=parts,
                changed=dict(image_mean=float(np.mean(image_changed)), image_median=float(np.median(image_changed)),
                             box_mean=float(np.mean(box_changed)), box_median=float(np.median(box_changed))),
                box_margin=dict(share=float(np.mean(gaps > 0)),
                                median_gap=float(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 0.))


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
    """Worker: render and save the JPEGs of a chunk of plans; return their written records."""
    root, seed, settings, plans = args
    records = []
    for plan in plans:
        img, record = render_image(plan, seed, settings)
        path = Path(root) / plan.name
        img.save(path, "JPEG", quality=JPEG_QUALITY)
        for key in ("spec", "true_landmarks", "keypoints"):
            record.pop(key)
        record["nbytes"] = path.stat().st_size
        records.append(record)
    return records


def _chunks(plans: list, size: int) -> list[list]:
    return [plans[i:i + size] for i in range(0, len(plans), size)]


def _process_pool(workers: int):
    """A process pool: 'fork' where available (no re-import of __main__, so it also works from
    notebooks, `python -c` and stdin scripts), else 'spawn'. A dying worker raises BrokenProcessPool
    instead of hanging; a dying parent takes its workers with it."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from vfu_nb import lifeline

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    # the workers die with this process (vfu_nb.lifeline): a killed generator leaves no orphans
    return ProcessPoolExecutor(workers, mp_context=mp.get_context(method), **lifeline.pool_options())


def _render_all(out: Path, seed: int, settings: dict, plans: list[ImagePlan], workers: int,
                progress: bool) -> list[dict]:
    """Render every plan (in-process or over a process pool), records returned in index order."""
    from tqdm.auto import tqdm

    chunk = max(4, min(64, len(plans) // max(1, workers * 8)))
    jobs = [(str(out), seed, settings, c) for c in _chunks(plans, chunk)]
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


def default_settings() -> dict:
    """The benchmark settings of the default tree (those recorded in synthetic.json). The evidence
    placement is recorded only when it is not the default, so trees written before it existed stay
    current."""
    return dict(geometry_informativeness=DEFAULT_GEOMETRY_INFORMATIVENESS,
                landmark_noise=DEFAULT_LANDMARK_NOISE, visibility_flip=DEFAULT_VISIBILITY_FLIP)


class OptionError(ValueError):
    """A bad generator option; ``option`` is its Python name, ``detail`` what is allowed."""

    def __init__(self, option: str, detail: str):
        self.option, self.detail = option, detail
        super().__init__(f"{option}: {detail}")


def check_options(n, seed, settings: dict, workers=None) -> None:
    """Raise :class:`OptionError` naming the first option outside its allowed range."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < MIN_IMAGES:
        raise OptionError("n", f"must be an integer >= {MIN_IMAGES} ({len(RENDERED_CATEGORIES)} rendered "
                               f"categories x 3 splits), got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise OptionError("seed", f"must be an integer >= 0, got {seed!r}")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise OptionError("workers", f"must be an integer >= 1 (or None for all cores), got {workers!r}")
    for name, (lo, hi) in SETTING_RANGES.items():
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise OptionError(name, f"must be a number in [{lo:g}, {hi:g}], got {value!r}")
    _check_placement(settings.get("evidence_placement", DEFAULT_EVIDENCE_PLACEMENT))


def _check_placement(value) -> None:
    """Raise :class:`OptionError` unless `value` is one of EVIDENCE_PLACEMENTS."""
    if not isinstance(value, str) or value not in EVIDENCE_PLACEMENTS:
        raise OptionError("evidence_placement", f"must be one of {', '.join(EVIDENCE_PLACEMENTS)}, got {value!r}")


def _cached_summary(out: Path, n: int, seed: int, settings: dict) -> dict | None:
    """The stored summary of a complete tree generated with the same arguments, else None."""
    done = out / MARKER_DONE
    if not done.exists() or (out / MARKER_BUSY).exists():
        return None
    try:
        meta = json.loads(done.read_text())
    except ValueError:
        return None
    if (meta.get("version"), meta.get("n"), meta.get("seed"), meta.get("settings")) != (VERSION, n, seed, settings):
        return None
    return meta


def generate(out, n: int, seed: int = 0, workers: int | None = None, progress: bool = True, *,
             geometry_informativeness: float = DEFAULT_GEOMETRY_INFORMATIVENESS,
             landmark_noise: float = DEFAULT_LANDMARK_NOISE,
             visibility_flip: float = DEFAULT_VISIBILITY_FLIP,
             evidence_placement: str = DEFAULT_EVIDENCE_PLACEMENT) -> dict:
    """Write a synthetic DeepFashion-C tree of `n` images under `out`; return a summary dict.

    Settings (see the module docstring): geometry_informativeness in [0, 1], landmark_noise (jitter sd
    as a fraction of the box) in [0, 0.2], visibility_flip (rate of swapped flags) in [0, 0.5],
    evidence_placement "functional" or "displaced" (the negative control, see :func:`displace_parts`).
    Bad options raise :class:`OptionError` (a ValueError) naming the option and its allowed range.

    Summary keys: out, n, seed, version, settings, splits {train, val, test}, categories {name: count},
    bytes (total size of the written files), seconds, cached (True if an identical complete tree
    was already there and nothing was written).
    """
    start = time.perf_counter()
    settings = dict(geometry_informativeness=geometry_informativeness, landmark_noise=landmark_noise,
                    visibility_flip=visibility_flip)
    check_options(n, seed, dict(settings, evidence_placement=evidence_placement), workers)
    settings = {k: float(v) for k, v in settings.items()}
    if evidence_placement != DEFAULT_EVIDENCE_PLACEMENT:
        settings["evidence_placement"] = evidence_placement
    n, seed = int(n), int(seed)
    out = Path(out)
    cached = _cached_summary(out, n, seed, settings)
    if cached is not None:
        return dict(cached, out=str(out), seconds=time.perf_counter() - start, cached=True)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    _prepare_out(out)
    plans = plan_images(n, seed)
    for folder in sorted({p.name.rsplit("/", 1)[0] for p in plans}):
        (out / folder).mkdir(parents=True, exist_ok=True)
    records = _render_all(out, seed, settings, plans, workers, progress)
    write_annotations(out, build_annotations(out, plans, records))
    text_bytes = sum((out / rel).stat().st_size for rel in ANNOTATION_FILES.values())
    summary = dict(
        n=n, seed=seed, version=VERSION, settings=settings,
        splits={s: sum(p.split == s for p in plans) for s in ("train", "val", "test")},
        categories={c: sum(p.category == c for p in plans) for c in RENDERED_CATEGORIES},
        bytes=sum(r["nbytes"] for r in records) + text_bytes)
    _write_text(out / MARKER_DONE, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    (out / MARKER_BUSY).unlink()
    return dict(summary, out=str(out), seconds=time.perf_counter() - start, cached=False)


def main(argv: list[str] | None = None) -> dict:
    """CLI: python -m vfu_nb.synthetic --out DIR --n N [--seed S] [--workers W] [--quiet]
    [--geometry-informativeness G] [--landmark-noise SD] [--visibility-flip P]
    [--evidence-placement {functional,displaced}]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--n", type=int, required=True, help=f"number of images (at least {MIN_IMAGES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--geometry-informativeness", type=float, default=DEFAULT_GEOMETRY_INFORMATIVENESS,
                        metavar="G", help="0: silhouette independent of the category within a clothes type; "
                        f"1: silhouette from the category (default {DEFAULT_GEOMETRY_INFORMATIVENESS})")
    parser.add_argument("--landmark-noise", type=float, default=DEFAULT_LANDMARK_NOISE, metavar="SD",
                        help="jitter sd of the written landmarks, fraction of the box (0: none; default "
                        f"{DEFAULT_LANDMARK_NOISE})")
    parser.add_argument("--visibility-flip", type=float, default=DEFAULT_VISIBILITY_FLIP, metavar="P",
                        help=f"rate of swapped visible/occluded flags (default {DEFAULT_VISIBILITY_FLIP})")
    parser.add_argument("--evidence-placement", choices=EVIDENCE_PLACEMENTS, default=DEFAULT_EVIDENCE_PLACEMENT,
                        help="where the local parts are drawn: at the functional points (default) or, for the "
                        "negative control, at random points of the body (labels, boxes, landmarks unchanged)")
    args = parser.parse_args(argv)
    options = dict(geometry_informativeness=args.geometry_informativeness,
                   landmark_noise=args.landmark_noise, visibility_flip=args.visibility_flip,
                   evidence_placement=args.evidence_placement)
    try:
        check_options(args.n, args.seed, options, args.workers)
    except OptionError as err:
        parser.error(f"argument --{err.option.replace('_', '-')}: {err.detail}")
    summary = generate(args.out, args.n, args.seed, args.workers, progress=not args.quiet, **options)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
