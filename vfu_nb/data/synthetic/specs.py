"""Garment specs: the vocabularies, the slots and their labels, and the per-category distributions.

The tables (categories, attributes, slot labels, each category's slot distributions, real counts) live in
``tables.yaml`` beside this module. A garment is sampled as a *spec* (one value per slot); its attribute
labels are a function of the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from vfu_nb.data.synthetic.settings import DEFAULT_GEOMETRY_INFORMATIVENESS

#: The distribution tables (tables.yaml), in file order: a distribution is sampled in the order it lists its values.
_TABLES = yaml.safe_load(Path(__file__).with_name("tables.yaml").read_text())


# --------------------------------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------------------------------

#: The real DeepFashion-C category vocabulary (name, category_type), in file order (1-based ids).
DEEPFASHION_CATEGORIES: list[tuple[str, int]] = [
    (name, t) for t, names in _TABLES["categories"].items() for name in names]
_CATEGORY_ID = {name: i + 1 for i, (name, _) in enumerate(DEEPFASHION_CATEGORIES)}
_CATEGORY_TYPE = dict(DEEPFASHION_CATEGORIES)

_ATTRIBUTE_GROUPS: dict[int, list[str]] = _TABLES["attribute_groups"]
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

#: Slots whose values are attribute names of one attribute type (texture: 1, fabric: 2).
_SELF_LABELLED = {"texture": 1, "fabric": 2}
#: slot -> {value: attribute name}; values missing from the map (and None) carry no label.
_SLOT_LABELS: dict[str, dict[str, str]] = {
    slot: ({v: v for v in _ATTRIBUTE_GROUPS[_SELF_LABELLED[slot]]} if slot in _SELF_LABELLED
           else _TABLES["slot_labels"][slot]) for slot in SHAPE_SLOTS + PART_SLOTS}
_MIN_POSITIVES, _MAX_POSITIVES = 2, 8
_THINNABLE = ("palette", "graphic", "pockets", "cords", "fabric")  # dropped first above the maximum

_DEFAULT_PARTS: dict[str, dict] = _TABLES["default_parts"]
_TOP_GRAPHIC: dict = _TABLES["top_graphic"]

@dataclass(frozen=True)
class _Style:
    """How a rendered category is drawn: its silhouette family and slot distributions."""

    lower: str | None  # None: upper body only; "legs" / "skirt": lower part; "long": long upper body
    shape: dict        # SHAPE_SLOTS distributions (missing: the slot's empty value)
    parts: dict        # PART_SLOTS distributions (missing: defaults above, else empty)


_STYLES: dict[str, _Style] = {name: _Style(style["lower"], style["shape"], style["parts"])
                              for name, style in _TABLES["styles"].items()}

#: Real DeepFashion-C image counts of the rendered categories (Shirtdress is empty in the real data).
_REAL_COUNTS: dict[str, int] = _TABLES["real_counts"]
#: Sampling weights are max(count, floor) ** power: a long tail whose rarest class keeps ~1.3 % of the images.
_WEIGHT_FLOOR, _WEIGHT_POWER = _TABLES["weight_floor"], _TABLES["weight_power"]
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
