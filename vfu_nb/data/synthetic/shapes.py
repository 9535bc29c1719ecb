"""What a garment is made of in canonical units: drawn details, the garment (silhouette, local parts, keypoints)
and the record of what each local part drew; left/right helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
