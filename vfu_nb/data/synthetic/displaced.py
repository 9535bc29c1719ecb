"""The negative control: local parts displaced, each as a whole, from the functional points to random points
of the garment's body, away from every keypoint."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from vfu_nb.data.synthetic.shapes import _Garment, _Part


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
