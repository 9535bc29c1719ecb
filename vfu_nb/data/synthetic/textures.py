"""Colours and textures, vectorised over arrays of garment coordinates u, v: palettes, denim colours, seven
texture patterns and six fabrics (a luminance multiplier and an opacity per pixel)."""

from __future__ import annotations

import colorsys
import math

import numpy as np

from vfu_nb.data.synthetic.specs import _DEFAULT_PARTS, _choice


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
