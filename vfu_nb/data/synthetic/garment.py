"""Garment geometry in canonical units (x to the image right, y down, neck base at y = 0, shoulder half-width
about 1): the silhouette and the 8 keypoints from a spec's shape slots, then the local parts on top.
"Left" landmarks are on the image-left (negative x) side. The silhouette and the keypoints depend only on the
SHAPE_SLOTS of a spec (and their own random stream); local parts never move a keypoint."""

from __future__ import annotations

import math

import numpy as np

from vfu_nb.data.synthetic.parts import _draw_parts
from vfu_nb.data.synthetic.shapes import _both, _Garment, _mirror
from vfu_nb.data.synthetic.specs import _CATEGORY_TYPE


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
