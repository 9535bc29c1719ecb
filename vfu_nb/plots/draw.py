"""Drawing primitives shared by the figures (:mod:`vfu_nb.plots`) and the widgets (:mod:`vfu_nb.widgets`): the
bounding box, predicted landmarks, the landmark legend, a map over an image, an empty panel with a message, and
PNG bytes of a figure. Each takes an Axes (or a Figure) and knows nothing about notebooks or widgets.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from vfu_nb.conventions import LANDMARK_COLORS, LANDMARK_NAMES, VISIBILITY_MARKERS, VISIBILITY_NAMES

MAP_CMAP = "viridis"


def figure_png(fig: Figure, dpi=None) -> bytes:
    """PNG bytes of a figure (no timestamp metadata, so equal drawings give equal bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def box_patch(window) -> Rectangle:
    """The bounding box ``(x1, y1, x2, y2)`` as an unfilled yellow rectangle."""
    x1, y1, x2, y2 = window
    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="yellow", lw=1.5)


def draw_predicted_landmarks(ax, points) -> None:
    """Predicted landmarks (axes coordinates, one ``(x, y)`` per slot) as "P" markers in their slot's colour."""
    for s, (x, y) in enumerate(points):
        ax.plot(x, y, "P", color=LANDMARK_COLORS[s], ms=8, mec="white")


def draw_prediction_on_image(ax, image, window, landmarks=None, title: str = ""):
    """A whole (uploaded) PIL image with the crop window and predicted landmarks (crop units of ``window``)."""
    ax.imshow(image)
    x1, y1, x2, y2 = window
    ax.add_patch(box_patch(window))
    if landmarks is not None:
        draw_predicted_landmarks(ax, [(x1 + u * (x2 - x1), y1 + v * (y2 - y1)) for u, v in np.asarray(landmarks)])
    ax.set_xlim(min(0, x1), max(image.width, x2))
    ax.set_ylim(max(image.height, y2), min(0, y1))
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def landmark_handles(with_prediction: bool = False) -> list:
    """Legend handles: slot colours, visibility markers (as plots.explore.draw_sample draws them), and optionally
    the prediction marker."""
    handles = [Line2D([], [], ls="", marker="o", color=c, label=n) for c, n in zip(LANDMARK_COLORS, LANDMARK_NAMES)]
    handles += [Line2D([], [], ls="", marker=m, color="gray", mfc="none" if v else "gray", label=VISIBILITY_NAMES[v])
                for v, m in VISIBILITY_MARKERS.items()]
    if with_prediction:
        handles.append(Line2D([], [], ls="", marker="P", color="white", mec="gray", ms=8, label="predicted"))
    return handles


def landmark_legend(fig: Figure, with_prediction: bool) -> None:
    """The figure's legend of :func:`landmark_handles` below the panels."""
    fig.legend(handles=landmark_handles(with_prediction), loc="lower center", ncol=6, fontsize=7, frameon=False)


def scale_map(values: np.ndarray) -> np.ndarray:
    """A map scaled to 0..1 by its own range (constant maps -> zeros), for display."""
    values = np.asarray(values, np.float32)
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def draw_overlay(ax, background: np.ndarray, values, extent, cmap: str, alpha: float, vmin=None, vmax=None,
                 background_interpolation=None):
    """``background`` (an image) with the map ``values`` over it in ``cmap``, both stretched over ``extent`` =
    (left, right, bottom, top) in the axes' coordinates; axes limited to the extent and hidden.

    Returns the overlay AxesImage (None without a map), so that callers can later change only its alpha or data.
    """
    ax.imshow(background, extent=extent, interpolation=background_interpolation)
    overlay = None
    if values is not None:
        overlay = ax.imshow(values, extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha,
                            interpolation="bilinear")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_axis_off()
    return overlay


def draw_map_overlay(ax, background: np.ndarray, values: np.ndarray | None, extent, alpha: float, title: str = ""):
    """The model's input crop (S,S,3 in 0..1) with a map (S,S) over it in viridis, scaled to its own range.

    ``extent`` = (left, right, bottom, top) in the axes' coordinates. Returns the overlay AxesImage (None without
    a map).
    """
    overlay = draw_overlay(ax, background, None if values is None else scale_map(values), extent, MAP_CMAP, alpha,
                           0, 1, background_interpolation="bilinear")
    ax.set_title(title, fontsize=8)
    return overlay


def draw_message(ax, text: str):
    """An empty panel that says ``text`` (no image, no data)."""
    ax.clear()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True, transform=ax.transAxes)
    ax.set_axis_off()
