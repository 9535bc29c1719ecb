"""Local parts, drawn over the silhouette in canonical units: neckline/collar, front, cuffs, waist, hem
finish, pockets, chest graphic, drawstrings, denim topstitching."""

from __future__ import annotations

import math

import numpy as np

from vfu_nb.data.synthetic.shapes import _both, _Detail, _Garment, _mirror, _Part


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
