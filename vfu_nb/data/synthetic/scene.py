"""Rendering one image: view transform, background clutter, garment painting, details, occluders, then the
box and the landmarks as an annotator writes them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vfu_nb.data.annotations import SLOTS_BY_CLOTHES_TYPE
from vfu_nb.data.synthetic.displaced import displace_parts
from vfu_nb.data.synthetic.garment import build_garment
from vfu_nb.data.synthetic.planning import ImagePlan
from vfu_nb.data.synthetic.settings import DEFAULT_EVIDENCE_PLACEMENT, MAX_SIDE, _check_placement, default_settings
from vfu_nb.data.synthetic.shapes import _Garment
from vfu_nb.data.synthetic.specs import _DEFAULT_PARTS, _choice, attribute_vector, sample_spec
from vfu_nb.data.synthetic.textures import (
    _denim_colors, _fabric, _hsv, _palette_color, _palette_colors, _random_palette, _rotate, _texture,
    _texture_params,
)


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
