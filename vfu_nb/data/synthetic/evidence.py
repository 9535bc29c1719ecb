"""How far the drawn evidence lies from the landmarks: the negative control's check, per image
(:func:`evidence_offsets`) and over the first images of a tree in both placements (:func:`placement_report`)."""

from __future__ import annotations

import collections
import math

import numpy as np
from PIL import Image

from vfu_nb.data.synthetic.displaced import _halves
from vfu_nb.data.synthetic.planning import ImagePlan, plan_images
from vfu_nb.data.synthetic.scene import _bbox, _draw_details, _garment_mask, _render, _Scene, _View
from vfu_nb.data.synthetic.settings import EVIDENCE_PLACEMENTS
from vfu_nb.data.synthetic.shapes import _Garment, _Part


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
