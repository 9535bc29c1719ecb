"""Interactive widgets (ipywidgets 8): landmark browser, attention explorer, try-your-own-image.

    from vfu_nb.widgets import landmark_browser, attention_explorer, predict_image
    landmark_browser(DeepFashionC(data_root, "val", image_size=224), model=None)
    attention_explorer({"MTL": mtl, "CAT": cat}, DeepFashionC(data_root, "test", image_size=224))
    predict_image(mtl, dataset.annotations)          # names taken from the annotations

Models come from run directories: ``vfu_nb.training.runs.load_model(run_dir)``. Design:

* Each widget owns ONE matplotlib :class:`~matplotlib.figure.Figure`, created once outside pyplot (so it is never
  auto-displayed or leaked), drawn into by plain functions that take an Axes, and shown as PNG bytes in an
  ``ipywidgets.Image`` (``w.image``). This renders the same headless, in JupyterLab, Notebook 7 and Voila, and
  "the picture changed" is a byte comparison in tests.
* Redraw only what changed: model outputs are cached per image; moving the opacity slider only changes the alpha
  of the overlays, choosing another landmark only swaps the heatmap data; sliders use ``continuous_update=False``.
* Every widget is a ``VBox`` subclass exposing its controls and state as attributes (``w.slider``, ``w.image``,
  ``w.message``, ``w.label``, ...). Errors inside callbacks never surface as tracebacks: they are shown in
  ``w.message`` and logged at ERROR level to the ``vfu_nb.widgets`` logger (tests assert nothing is logged).
* Models run under ``torch.no_grad()`` in eval mode, fp32, on their own device
  (:func:`vfu_nb.training.runs.predict_one`). Maps are drawn with viridis (perceptually uniform), scaled to their
  own range.

Uploaded images (:func:`read_upload`): JPEG or PNG up to :data:`MAX_UPLOAD_BYTES` (8 MiB) and 40 megapixels. The
file travels from the browser to the kernel in one websocket message, and the Jupyter server drops the connection
on a message over its ``websocket_max_message_size`` (tornado's default: 10 MiB). 8 MiB leaves room for the
message's header; ``make lab`` raises the server's limit to 64 MiB (``jupyter_server_config.py``) so that a larger
file gets this module's message instead of a lost connection. Pixel modes with a faithful 8-bit RGB equivalent are
converted, with a note for the user: grey and bilevel, palette, YCbCr, transparency (RGBA, LA, PA, palette with a
transparent colour: composited onto white), CMYK (converted without a colour profile, so colours are approximate)
and 16-bit grey (scaled 0..65535 -> 0..255; Pillow already reduces 16-bit RGB PNGs to 8 bits). Modes without a
defined display range are refused: 32-bit integer ("I") and floating point ("F") pixels (depth maps, scientific
data), and any mode Pillow cannot convert to RGB. Other failures (not an image, truncated or corrupt data, too
large) raise :class:`UploadError` with a one-line message meant for the user.

The screenshot of the attention explorer in the README is made by ``tests/browser.py screenshot`` (JupyterLab +
Chromium) from :func:`explorer_from_runs`.
"""

from __future__ import annotations

import html
import io
import logging
import warnings
from collections import OrderedDict
from contextlib import contextmanager

import ipywidgets as W
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageOps, UnidentifiedImageError

from vfu_nb.conventions import (
    ATTRIBUTE_TYPE_NAMES, CLOTHES_TYPE_NAMES, LANDMARK_COLORS, LANDMARK_NAMES, SPLITS, VISIBILITY_MARKERS,
    VISIBILITY_NAMES,
)
from vfu_nb.data.crops import IMAGENET_MEAN, IMAGENET_STD, crop_and_resize, crop_window, normalize_images
from vfu_nb.data.dataset import DeepFashionC
from vfu_nb.paths import resolve
from vfu_nb.plots.explore import draw_sample
from vfu_nb.training.rundir import RunDir
from vfu_nb.training.runs import find_runs, landmark_errors, load_model, predict_one

log = logging.getLogger(__name__)

__all__ = ["landmark_browser", "attention_explorer", "predict_image", "LandmarkBrowser", "AttentionExplorer",
           "PredictImage", "draw_map_overlay", "draw_prediction_on_image", "predictions_html", "read_upload",
           "UploadError"]

MAP_CMAP = "viridis"

#: Largest upload: one websocket message must carry it (tornado's default limit is 10 MiB; see the docstring).
MAX_UPLOAD_BYTES = 8 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000
UPLOAD_FORMATS = ("JPEG", "PNG")
#: modes converted to RGB, with the note shown to the user (None: nothing worth saying)
CONVERTED_MODES = {
    "RGB": None, "L": None, "1": None, "P": None, "YCbCr": None, "RGBX": None,
    "RGBA": "transparent areas were composited onto white",
    "LA": "transparent areas were composited onto white",
    "PA": "transparent areas were composited onto white",
    "CMYK": "converted from CMYK without a colour profile: colours are approximate",
    "I;16": "16-bit grey scaled to 8 bits", "I;16L": "16-bit grey scaled to 8 bits",
    "I;16B": "16-bit grey scaled to 8 bits", "I;16N": "16-bit grey scaled to 8 bits",
}
REFUSED_MODES = {
    "I": "32-bit integer pixels have no defined display range (depth map or scientific image?)",
    "F": "floating-point pixels have no defined display range (depth map or scientific image?)",
}


class UploadError(ValueError):
    """An uploaded file that cannot be used; ``str(err)`` is a short message for the user."""


# ----------------------------------------------------------------------------------------------------------
# Plain drawing functions (take an Axes, know nothing about widgets)


def figure_png(fig: Figure, dpi=None) -> bytes:
    """PNG bytes of a figure (no timestamp metadata, so equal drawings give equal bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def scale_map(values: np.ndarray) -> np.ndarray:
    """A map scaled to 0..1 by its own range (constant maps -> zeros), for display."""
    values = np.asarray(values, np.float32)
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def draw_map_overlay(ax, background: np.ndarray, values: np.ndarray | None, extent, alpha: float, title: str = ""):
    """The model's input crop (S,S,3 in 0..1) with a map (S,S) over it, scaled to its own range.

    ``extent`` = (left, right, bottom, top) in the axes' coordinates. Returns the overlay AxesImage (None without
    a map), so that callers can later change only its alpha or data.
    """
    ax.imshow(background, extent=extent, interpolation="bilinear")
    overlay = None
    if values is not None:
        overlay = ax.imshow(scale_map(values), extent=extent, cmap=MAP_CMAP, vmin=0, vmax=1, alpha=alpha,
                            interpolation="bilinear")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
    return overlay


def draw_prediction_on_image(ax, image: Image.Image, window, landmarks=None, title: str = ""):
    """A whole (uploaded) image with the crop window and predicted landmarks (crop units of ``window``)."""
    ax.imshow(image)
    x1, y1, x2, y2 = window
    ax.add_patch(_rectangle(x1, y1, x2, y2))
    if landmarks is not None:
        for s, (u, v) in enumerate(np.asarray(landmarks)):
            ax.plot(x1 + u * (x2 - x1), y1 + v * (y2 - y1), "P", color=LANDMARK_COLORS[s], ms=8, mec="white")
    ax.set_xlim(min(0, x1), max(image.width, x2))
    ax.set_ylim(max(image.height, y2), min(0, y1))
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def _rectangle(x1, y1, x2, y2):
    from matplotlib.patches import Rectangle
    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="yellow", lw=1.5)


def draw_message(ax, text: str):
    """An empty panel that says ``text`` (no image, no data)."""
    ax.clear()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def landmark_legend(fig: Figure, with_prediction: bool):
    """Figure legend: slot colours, visibility markers (as explore.draw_sample draws them), prediction marker."""
    handles = [Line2D([], [], ls="", marker="o", color=c, label=n) for c, n in zip(LANDMARK_COLORS, LANDMARK_NAMES)]
    handles += [Line2D([], [], ls="", marker=m, color="gray", mfc="none" if v else "gray", label=VISIBILITY_NAMES[v])
                for v, m in VISIBILITY_MARKERS.items()]
    if with_prediction:
        handles.append(Line2D([], [], ls="", marker="P", color="white", mec="gray", ms=8, label="predicted"))
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)


def predictions_html(title: str, probs, category_names, attribute_scores=None, attribute_names=None,
                     attribute_types=None, top_k: int = 5, top_attr: int = 3, truth: str | None = None) -> str:
    """An HTML block: top-k categories and the top attributes of every type, with their scores."""
    rows = []
    for name, p in top_categories(probs, category_names, top_k):
        mark = " &#10003;" if truth is not None and name == truth else ""
        rows.append(f"<tr><td {_CELL}>{html.escape(name)}{mark}</td><td {_CELL}>{p:.3f}</td></tr>")
    parts = [f"<div style='min-width:16em;line-height:1.3'><b>{html.escape(title)}</b>",
             f"<table style='font-size:90%'><tr><th {_CELL}>category</th><th {_CELL}>p</th></tr>",
             *rows, "</table>"]
    if attribute_scores is not None and attribute_names is not None and attribute_types is not None:
        parts.append(f"<table style='font-size:90%'><tr><th {_CELL}>attribute type</th>"
                     f"<th {_CELL}>top {top_attr} (score)</th></tr>")
        for type_name, items in top_attributes(attribute_scores, attribute_names, attribute_types, top_attr).items():
            text = ", ".join(f"{html.escape(a)} ({s:.2f})" for a, s in items)
            parts.append(f"<tr><td {_CELL}>{type_name}</td><td {_CELL}>{text}</td></tr>")
        parts.append("</table>")
    parts.append("</div>")
    return "".join(parts)


_CELL = "style='padding:1px 8px;text-align:left'"


def _error_html(text: str) -> str:
    return f"<span style='color:#b00020'>&#9888; {html.escape(text)}</span>"


def _note_html(text: str) -> str:
    return f"<span style='color:#555'>{html.escape(text)}</span>"


# ----------------------------------------------------------------------------------------------------------
# Predictions as text, images for display


def top_categories(probs, names, k: int = 5) -> list:
    """The ``k`` most probable categories: ``[(name, probability), ...]``, best first."""
    probs = np.asarray(probs)
    order = np.argsort(-probs, kind="stable")[:k]
    return [(str(names[i]), float(probs[i])) for i in order]


def top_attributes(scores, names, types, k: int = 3) -> dict:
    """The ``k`` highest-scoring attributes of every type: ``{type name: [(attribute, score), ...]}``."""
    scores, types = np.asarray(scores), np.asarray(types)
    out = {}
    for t, type_name in ATTRIBUTE_TYPE_NAMES.items():
        idx = np.flatnonzero(types == t)
        if len(idx):
            best = idx[np.argsort(-scores[idx], kind="stable")[:k]]
            out[type_name] = [(str(names[i]), float(scores[i])) for i in best]
    return out


def unnormalize(image: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised (3,S,S) -> displayable float (S,S,3) in 0..1."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.detach().cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------------------
# Your own images


def prepare_crop(image: Image.Image, box, image_size: int, pad_to_square: bool = False):
    """Crop ``box`` (x1 y1 x2 y2 pixels; None = whole image) and resize as the dataset does.

    Returns ``(normalised tensor (3,S,S), window (x1, y1, x2, y2))``; raises UploadError for a box that is empty
    inside the image.
    """
    box = (0, 0, image.width, image.height) if box is None else box
    try:
        window = crop_window(box, image.size, pad_to_square)
    except ValueError as exc:
        raise UploadError(str(exc)) from None
    pixels = crop_and_resize(image, window, image_size)
    return normalize_images(torch.from_numpy(pixels).permute(2, 0, 1)), window


def parse_box(text: str):
    """``"x1 y1 x2 y2"`` (spaces or commas) -> 4 floats; empty -> None; anything else raises UploadError."""
    text = (text or "").replace(",", " ").strip()
    if not text:
        return None
    parts = text.split()
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UploadError(f"box {text!r}: expected four numbers x1 y1 x2 y2") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise UploadError(f"box {text!r}: expected four numbers x1 y1 x2 y2")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise UploadError(f"box {text!r}: x2 must be greater than x1 and y2 greater than y1")
    return values


def to_rgb(image: Image.Image) -> tuple[Image.Image, list]:
    """Convert a decoded image to 8-bit RGB by the policy of this module; ``(rgb, notes)`` or UploadError."""
    mode = image.mode
    if mode in REFUSED_MODES:
        raise UploadError(f"pixel mode {mode} is not supported: {REFUSED_MODES[mode]}; save it as an 8-bit "
                          "RGB JPEG or PNG")
    has_transparency = mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    notes = []
    if mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.uint16)
        return Image.fromarray((array >> 8).astype(np.uint8), "L").convert("RGB"), [CONVERTED_MODES["I;16"]]
    if mode not in CONVERTED_MODES:
        raise UploadError(f"pixel mode {mode} is not supported; save the image as an 8-bit RGB JPEG or PNG")
    if has_transparency:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        notes.append(CONVERTED_MODES["RGBA"])
        return canvas.convert("RGB"), notes
    if CONVERTED_MODES[mode]:
        notes.append(CONVERTED_MODES[mode])
    return image.convert("RGB"), notes


def read_upload(content, name: str = "", size: int | None = None,
                max_bytes: int = MAX_UPLOAD_BYTES) -> tuple[Image.Image, list]:
    """Bytes of an uploaded file -> ``(8-bit RGB PIL image, notes)``, or :class:`UploadError` saying why not.

    Checks, in order: size (``size`` if given, else ``len(content)``) <= ``max_bytes``; decodable by Pillow; JPEG or
    PNG; at most :data:`MAX_UPLOAD_PIXELS`; complete pixel data; pixel mode (see the module docstring). EXIF
    orientation is applied; of an animated PNG only the first frame is used.
    """
    label = f"{name}: " if name else ""
    nbytes = len(content) if size is None else int(size)
    if nbytes > max_bytes:
        raise UploadError(f"{label}file is {nbytes / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    if nbytes == 0 or len(content) == 0:
        raise UploadError(f"{label}the file is empty")
    data = bytes(content)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UploadError(f"{label}not an image (or not a format Pillow can read); upload a JPEG or PNG") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f"{label}image has too many pixels (decompression-bomb check)") from None
    except Exception as exc:   # PIL raises many types for malformed headers
        raise UploadError(f"{label}cannot read the image ({type(exc).__name__}: {exc})") from None
    if image.format not in UPLOAD_FORMATS:
        raise UploadError(f"{label}{image.format} images are not supported; upload a JPEG or PNG")
    width, height = image.size
    if width * height > MAX_UPLOAD_PIXELS:
        raise UploadError(f"{label}image is {width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is "
                          f"{MAX_UPLOAD_PIXELS / 1e6:.0f}")
    notes = []
    if getattr(image, "n_frames", 1) > 1:
        notes.append("animated image: the first frame is used")
    try:
        image.load()
        orientation = image.getexif().get(0x0112, 1)
        if orientation not in (None, 1):
            image = ImageOps.exif_transpose(image)
            notes.append("rotated as its EXIF orientation says")
    except Exception as exc:   # truncated or corrupt pixel data
        raise UploadError(f"{label}the image data is truncated or corrupt ({exc})") from None
    rgb, mode_notes = to_rgb(image)
    return rgb, notes + mode_notes


# ----------------------------------------------------------------------------------------------------------
# Data access shared by the widgets


def _image_size_of(path) -> tuple[int, int]:
    with Image.open(path) as im:      # header only
        return im.size


def _windows(ann, row: int, pad_to_square: bool):
    """(plain bbox window as explore.draw_sample uses it, the window the model's crop was cut from)."""
    size = _image_size_of(ann.image_path(row))
    return crop_window(ann.bbox[row], size, False), crop_window(ann.bbox[row], size, pad_to_square)


def _to_plain_units(points, model_window, plain_window):
    """Crop units of the model's window -> crop units of the plain bbox window (equal unless padded)."""
    if points is None:
        return None
    mx1, my1, mx2, my2 = model_window
    x1, y1, x2, y2 = plain_window
    pixels = np.asarray(points) * [mx2 - mx1, my2 - my1] + [mx1, my1]
    return (pixels - [x1, y1]) / [x2 - x1, y2 - y1]


class _DatasetPool:
    """Items of any split at any image size for the rows of one annotation set.

    The given dataset is used where split and size match (and it does not augment); otherwise a twin
    ``DeepFashionC`` with the same root, annotations and crop mode is built on first use.
    """

    def __init__(self, dataset: DeepFashionC):
        self.base = dataset
        self._sets: dict = {}

    def rows(self, split: str) -> np.ndarray:
        if split == self.base.split:
            return np.asarray(self.base.rows)
        return self.base.annotations.indices(split)

    def _get(self, split: str, size: int):
        key = (split, int(size))
        if key not in self._sets:
            base = self.base
            if base.split == split and base.image_size == size and not base.augment:
                ds = base
            else:
                ds = DeepFashionC(base.root, split, size, annotations=base.annotations,
                                  pad_to_square=base.pad_to_square, progress=False)
            self._sets[key] = (ds, {int(r): k for k, r in enumerate(ds.rows)})
        return self._sets[key]

    def item(self, split: str, row: int, size: int) -> dict:
        ds, position = self._get(split, size)
        item = ds[position[int(row)]]
        if item["image"].dtype == torch.uint8:
            item["image"] = normalize_images(item["image"])
        return item


def _model_size(model, default: int) -> int:
    return int(getattr(model, "image_size", default))


def _as_model_dict(models) -> "OrderedDict[str, torch.nn.Module]":
    if isinstance(models, torch.nn.Module):
        models = [models]
    if isinstance(models, dict):
        return OrderedDict((str(k), m) for k, m in models.items())
    out: OrderedDict = OrderedDict()
    for m in models:
        name = str(getattr(m, "name", type(m).__name__)).upper()
        base, n = name, 2
        while name in out:
            name, n = f"{base} ({n})", n + 1
        out[name] = m
    if not out:
        raise ValueError("attention_explorer needs at least one model")
    return out


# ----------------------------------------------------------------------------------------------------------
# Widget base


class _FigureWidget(W.VBox):
    """A VBox holding one Figure rendered to ``self.image`` (PNG) and an HTML ``self.message``."""

    def __init__(self, nrows: int, ncols: int, figsize, dpi: int, **kwargs):
        super().__init__(**kwargs)
        self.figure = Figure(figsize=figsize, dpi=dpi)
        self.axes = self.figure.subplots(nrows, ncols, squeeze=False)
        self.image = W.Image(format="png", layout=W.Layout(max_width="100%", height="auto"))
        self.message = W.HTML()
        self.renders = 0          # how many PNGs were produced (tests: cheap controls do not re-run models)
        self._quiet = False

    @contextmanager
    def _hold(self):
        """Change controls without triggering redraws."""
        old, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = old

    def _on(self, action):
        """An observer that runs ``action`` unless held, showing (and logging) any exception in the widget."""
        def handler(change=None):
            if self._quiet:
                return
            self._safely(action)
        return handler

    def _safely(self, action):
        try:
            action()
        except Exception as exc:   # a widget callback must never raise into the comm layer
            log.error("%s.%s failed", type(self).__name__, getattr(action, "__name__", "action"), exc_info=True)
            self.message.value = _error_html(f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _show(self):
        self.image.value = figure_png(self.figure)
        self.renders += 1


# ----------------------------------------------------------------------------------------------------------
# 1. Landmark browser


class LandmarkBrowser(_FigureWidget):
    """See :func:`landmark_browser`."""

    def __init__(self, dataset: DeepFashionC, model=None, *, dpi: int = 80, cache_size: int = 64):
        has_model = model is not None
        super().__init__(1, 2, (8.5, 4.6), dpi)
        self.dataset, self.model, self.annotations = dataset, model, dataset.annotations
        self.pool = _DatasetPool(dataset)
        ann = self.annotations
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        splits = [s for s in SPLITS if s == dataset.split or (ann.split == s).any()]
        self.split = W.Dropdown(options=splits, value=dataset.split, description="split",
                                layout=W.Layout(width="12em"))
        self.clothes_type = W.Dropdown(options=[("all", 0)] + [(n, t) for t, n in CLOTHES_TYPE_NAMES.items()],
                                       value=0, description="clothes", layout=W.Layout(width="13em"))
        self.category = W.Dropdown(options=[("all", -1)], value=-1, description="category",
                                   layout=W.Layout(width="20em"))
        self.slider = W.IntSlider(value=0, min=0, max=0, description="image", continuous_update=False,
                                  layout=W.Layout(width="40em"))
        self.prev = W.Button(description="previous", icon="arrow-left", layout=W.Layout(width="8em"))
        self.next = W.Button(description="next", icon="arrow-right", layout=W.Layout(width="8em"))
        self.label = W.HTML()
        self.rows = np.zeros(0, dtype=np.int64)   # annotation rows passing the filters
        self.row: int | None = None               # the row on screen
        self.prediction = None                    # vfu_nb.training.runs.Prediction of that row (with a model)
        self.error: float | None = None           # its landmark NE (crop units, visible landmarks)
        landmark_legend(self.figure, has_model)
        self.figure.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.17, wspace=0.08)
        self.children = [W.HBox([self.split, self.clothes_type, self.category]),
                         W.HBox([self.slider, self.prev, self.next]), self.label, self.image, self.message]
        self.split.observe(self._on(self._filters_changed), "value")
        self.clothes_type.observe(self._on(self._filters_changed), "value")
        self.category.observe(self._on(self._refilter), "value")
        self.slider.observe(self._on(self.draw), "value")
        self.prev.on_click(lambda _: self.step(-1))
        self.next.on_click(lambda _: self.step(+1))
        self._safely(self._filters_changed)

    # ----- controls -------------------------------------------------------------------------
    def step(self, k: int):
        """Move the slider by ``k`` images (wrapping around)."""
        if len(self.rows):
            self.slider.value = (self.slider.value + k) % len(self.rows)

    def _split_rows(self) -> np.ndarray:
        rows = self.pool.rows(self.split.value)
        if self.clothes_type.value:
            rows = rows[self.annotations.clothes_type[rows] == self.clothes_type.value]
        return rows

    def _filters_changed(self):
        """Split or clothes type changed: offer the categories present, then refilter."""
        ann = self.annotations
        rows = self._split_rows()
        counts = np.bincount(ann.category[rows], minlength=len(ann.category_names))
        options = [(f"all ({len(rows)})", -1)] + [(f"{ann.category_names[c]} ({counts[c]})", int(c))
                                                  for c in np.flatnonzero(counts)]
        keep = self.category.value if self.category.value in [v for _, v in options] else -1
        with self._hold():
            self.category.options = options
            self.category.value = keep
        self._refilter()

    def _refilter(self):
        rows = self._split_rows()
        if self.category.value >= 0:
            rows = rows[self.annotations.category[rows] == self.category.value]
        self.rows = rows
        with self._hold():
            self.slider.max = max(0, len(rows) - 1)
            self.slider.value = 0
            self.slider.disabled = len(rows) == 0
        self.draw()

    # ----- drawing --------------------------------------------------------------------------
    def _predict(self, split: str, row: int):
        key = (split, row)
        if key not in self._cache:
            item = self.pool.item(split, row, _model_size(self.model, self.dataset.image_size))
            pred = predict_one(self.model, item["image"])
            error = None if pred.landmarks is None else float(landmark_errors(
                pred.landmarks[None], item["landmarks"].numpy()[None], item["landmark_visibility"].numpy()[None])[0])
            self._cache[key] = (pred, error)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def draw(self):
        """Draw the image under the slider (both panels) and update the label."""
        ann = self.annotations
        full, crop = self.axes[0]
        self.message.value = ""
        if not len(self.rows):
            self.row, self.prediction, self.error = None, None, None
            for ax in (full, crop):
                draw_message(ax, "no images match the filters")
            self.label.value = "<i>no images match the filters</i>"
            self._show()
            return
        row = int(self.rows[min(self.slider.value, len(self.rows) - 1)])
        self.row = row
        pred = error = predicted = None
        if self.model is not None:
            pred, error = self._predict(self.split.value, row)
            plain, model_window = _windows(ann, row, self.dataset.pad_to_square)
            predicted = _to_plain_units(pred.landmarks, model_window, plain)
        self.prediction, self.error = pred, error
        full.clear()
        crop.clear()
        draw_sample(full, ann, row)
        draw_sample(crop, ann, row, predicted=predicted, crop=True)
        category = ann.category_names[ann.category[row]]
        text = [f"<b>{html.escape(category)}</b> ({CLOTHES_TYPE_NAMES[ann.clothes_type[row]]})",
                f"{self.split.value} image {self.slider.value + 1} of {len(self.rows)}",
                f"row {row}: {html.escape(str(ann.image_names[row]))}"]
        crop_title = "crop"
        if pred is not None:
            name, p = top_categories(pred.category_probs, ann.category_names, 1)[0]
            text.append(f"predicted <b>{html.escape(name)}</b> ({p:.2f})")
            crop_title = f"predicted: {name} ({p:.2f})"
            if error is not None:
                ne = "n/a (no visible landmark)" if np.isnan(error) else f"{error:.3f}"
                text.append(f"landmark error {ne}")
                crop_title += f"\nlandmark error {ne} (crop units)"
            elif not getattr(self.model, "has_landmark_branch", False):
                crop_title += "\n(no landmark branch)"
        crop.set_title(crop_title, fontsize=9)
        self.label.value = " &middot; ".join(text)
        self._show()


def landmark_browser(dataset: DeepFashionC, model=None, **kwargs) -> LandmarkBrowser:
    """Browse images with their box and 8 landmarks (marker style = visibility), filtered by split, category and
    clothes type; with a ``model``, its predicted landmarks (white crosses joined to the ground truth), its top
    category and the image's landmark error (NE in crop units over the visible landmarks).

    ``dataset`` is a :class:`vfu_nb.data.dataset.DeepFashionC`; the split filter switches between the splits of its
    annotations (other splits and other image sizes are read through twin datasets built on first use).
    Returns a VBox with ``.split``, ``.clothes_type``, ``.category``, ``.slider``, ``.prev``, ``.next``,
    ``.label``, ``.image`` (PNG), ``.message``, ``.figure``/``.axes`` and state ``.rows``, ``.row``,
    ``.prediction``, ``.error``. Keyword arguments: ``dpi`` (80), ``cache_size`` (64 predictions).
    """
    return LandmarkBrowser(dataset, model, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# 2. Attention explorer


class AttentionExplorer(_FigureWidget):
    """See :func:`attention_explorer`."""

    def __init__(self, models, dataset: DeepFashionC, *, landmark: str | int = "all", alpha: float = 0.5,
                 top_k: int = 5, top_attr: int = 3, dpi: int = 80, cache_size: int = 32):
        self.models = _as_model_dict(models)
        n = len(self.models)
        height = 3.1 * n + 0.7
        super().__init__(n, 3, (9.0, height), dpi)
        self.dataset, self.annotations = dataset, dataset.annotations
        self.pool = _DatasetPool(dataset)
        self.top_k, self.top_attr = top_k, top_attr
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        options = [("all (max over maps)", -1)] + [(name, i) for i, name in enumerate(LANDMARK_NAMES)]
        value = -1 if landmark in ("all", None, -1) else (LANDMARK_NAMES.index(landmark)
                                                          if isinstance(landmark, str) else int(landmark))
        self.slider = W.IntSlider(value=0, min=0, max=max(0, len(dataset) - 1), description="image",
                                  continuous_update=False, layout=W.Layout(width="40em"))
        self.prev = W.Button(description="previous", icon="arrow-left", layout=W.Layout(width="8em"))
        self.next = W.Button(description="next", icon="arrow-right", layout=W.Layout(width="8em"))
        self.landmark = W.Dropdown(options=options, value=value, description="heatmap",
                                   layout=W.Layout(width="20em"))
        self.opacity = W.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="opacity",
                                     continuous_update=False, readout_format=".2f")
        self.label = W.HTML()
        self.predictions = W.HTML()
        self.row: int | None = None
        self.outputs: dict = {}            # model name -> (item, Prediction) on screen
        self._heat: dict = {}              # model name -> heatmap overlay AxesImage
        self._overlays: list = []          # every overlay AxesImage (opacity applies to all)
        landmark_legend(self.figure, with_prediction=True)
        self.figure.subplots_adjust(left=0.01, right=0.99, top=1 - 0.45 / height, bottom=0.6 / height,
                                    wspace=0.05, hspace=0.3)
        self.children = [W.HBox([self.slider, self.prev, self.next]), W.HBox([self.landmark, self.opacity]),
                         self.label, self.image, self.predictions, self.message]
        self.slider.observe(self._on(self.draw), "value")
        self.landmark.observe(self._on(self._landmark_changed), "value")
        self.opacity.observe(self._on(self._opacity_changed), "value")
        self.prev.on_click(lambda _: self.step(-1))
        self.next.on_click(lambda _: self.step(+1))
        if len(dataset):
            self._safely(self.draw)
        else:
            draw_message(self.axes[0, 0], "the dataset is empty")
            self._show()

    def step(self, k: int):
        if len(self.dataset):
            self.slider.value = (self.slider.value + k) % len(self.dataset)

    def _outputs(self, k: int) -> dict:
        if k not in self._cache:
            row = int(self.dataset.rows[k])
            out = {}
            for name, model in self.models.items():
                item = self.pool.item(self.dataset.split, row, _model_size(model, self.dataset.image_size))
                out[name] = (item, predict_one(model, item["image"]))
            self._cache[k] = out
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(k)
        return self._cache[k]

    def _heat_title(self) -> str:
        i = self.landmark.value
        return "heatmap: max over all 8 maps" if i < 0 else f"heatmap: {LANDMARK_NAMES[i]}"

    def _heat_map(self, pred):
        return pred.heatmap(None if self.landmark.value < 0 else self.landmark.value)

    def draw(self):
        """Draw the image under the slider for every model (one row of three panels each)."""
        ann = self.annotations
        k = self.slider.value
        row = int(self.dataset.rows[k])
        self.row = row
        self.message.value = ""
        self.outputs = self._outputs(k)
        plain, model_window = _windows(ann, row, self.dataset.pad_to_square)
        x1, y1 = plain[0], plain[1]
        extent = (model_window[0] - x1, model_window[2] - x1, model_window[3] - y1, model_window[1] - y1)
        truth = ann.category_names[ann.category[row]]
        alpha = self.opacity.value
        self._heat, self._overlays = {}, []
        blocks = []
        for r, (name, (item, pred)) in enumerate(self.outputs.items()):
            ax_img, ax_heat, ax_attn = self.axes[r]
            for ax in (ax_img, ax_heat, ax_attn):
                ax.clear()
            draw_sample(ax_img, ann, row, predicted=_to_plain_units(pred.landmarks, model_window, plain), crop=True)
            ax_img.set_xlim(extent[0], extent[1])
            ax_img.set_ylim(extent[2], extent[3])
            top_name, top_p = top_categories(pred.category_probs, ann.category_names, 1)[0]
            ax_img.set_title(f"{name}: {top_name} ({top_p:.2f})\ntruth: {truth}", fontsize=8)
            background = unnormalize(item["image"])
            if pred.heatmaps is not None:
                heat = draw_map_overlay(ax_heat, background, self._heat_map(pred), extent, alpha,
                                        f"{name} {self._heat_title()}")
                self._heat[name] = heat
                self._overlays.append(heat)
                attn = draw_map_overlay(ax_attn, background, pred.attention, extent, alpha,
                                        f"{name} attention (mean over channels)")
            else:
                draw_map_overlay(ax_heat, background, None, extent, alpha, f"{name}: no landmark branch")
                ax_heat.text(0.5, 0.5, "no heatmaps\n(no landmark branch)", ha="center", va="center", fontsize=8,
                             color="white", transform=ax_heat.transAxes,
                             bbox=dict(facecolor="black", alpha=0.5, lw=0))
                attn = draw_map_overlay(ax_attn, background, pred.feature_energy, extent, alpha,
                                        f"{name} conv4_3 feature energy\n(mean |features|, class-agnostic)")
            self._overlays.append(attn)
            blocks.append(predictions_html(name, pred.category_probs, ann.category_names, pred.attribute_scores,
                                           ann.attribute_names, ann.attribute_types, self.top_k, self.top_attr,
                                           truth=truth))
        self.label.value = (f"<b>{html.escape(truth)}</b> ({CLOTHES_TYPE_NAMES[ann.clothes_type[row]]}) &middot; "
                            f"{self.dataset.split} image {k + 1} of {len(self.dataset)} &middot; "
                            f"row {row}: {html.escape(str(ann.image_names[row]))} &middot; "
                            "maps are scaled to their own range")
        self.predictions.value = ("<div style='display:flex;gap:2em;flex-wrap:wrap'>" + "".join(blocks) + "</div>")
        self._show()

    def _landmark_changed(self):
        """Only the heatmap overlays change (no model call)."""
        for name, artist in self._heat.items():
            _, pred = self.outputs[name]
            artist.set_data(scale_map(self._heat_map(pred)))
            artist.axes.set_title(f"{name} {self._heat_title()}", fontsize=8)
        self._show()

    def _opacity_changed(self):
        """Only the overlays' alpha changes (no model call, no new artists)."""
        for artist in self._overlays:
            artist.set_alpha(self.opacity.value)
        self._show()


def attention_explorer(models, dataset: DeepFashionC, **kwargs) -> AttentionExplorer:
    """Look at what the models attend to, image by image.

    Args:
        models: one model, a list of models (named by ``model.name``) or a dict ``{label: model}``, e.g.
            ``{"MTL": mtl, "CAT": cat}``; each model is shown in its own row, side by side for comparison.
        dataset: a :class:`vfu_nb.data.dataset.DeepFashionC` split; the slider walks its items. Models with another
            ``image_size`` than the dataset get the same rows cropped at their size.
        landmark: heatmap shown at start: ``"all"`` (max over the 8 maps), a landmark name or a slot index.
        alpha: initial overlay opacity (0..1). top_k: categories listed (5). top_attr: attributes per type (3).

    Each row: the crop with ground-truth landmarks (marker = visibility) and predicted ones, titled with the
    top category; the predicted heatmap over the crop; and the attention map (mean over channels of the
    ``attention`` output, upsampled) over the crop. Models without a landmark branch (CAT) have no heatmap or
    attention: their third panel shows the conv4_3 feature energy (mean |features|), labelled class-agnostic.
    Maps are scaled to their own range. Below: top-k categories and top attributes per type with scores.

    Returns a VBox with ``.slider``, ``.prev``, ``.next``, ``.landmark``, ``.opacity``, ``.label``, ``.image``
    (PNG), ``.predictions`` (HTML), ``.message``, ``.figure``/``.axes`` and state ``.row`` and ``.outputs``
    ({label: (dataset item, vfu_nb.training.runs.Prediction)}).
    """
    return AttentionExplorer(models, dataset, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# 3. Try your own image


def _upload_entries(value) -> list:
    """FileUpload values as a list of dicts with name, type, size, content (ipywidgets 8; 7's dict accepted)."""
    if isinstance(value, dict):          # ipywidgets 7: {name: {"metadata": {...}, "content": bytes}}
        return [{"name": k, **v.get("metadata", {}), "content": v["content"]} for k, v in value.items()]
    return list(value or ())


class PredictImage(_FigureWidget):
    """See :func:`predict_image`."""

    def __init__(self, model, category_names, attribute_names=None, attribute_types=None, *,
                 max_bytes: int = MAX_UPLOAD_BYTES, pad_to_square: bool = False, alpha: float = 0.5,
                 top_k: int = 5, top_attr: int = 3, dpi: int = 80):
        if hasattr(category_names, "category_names"):      # Annotations or DeepFashionC
            source = getattr(category_names, "annotations", category_names)
            category_names = source.category_names
            attribute_names = source.attribute_names if attribute_names is None else attribute_names
            attribute_types = source.attribute_types if attribute_types is None else attribute_types
        super().__init__(1, 2, (8.5, 4.2), dpi)
        self.model = model
        self.category_names = list(category_names)
        self.attribute_names = None if attribute_names is None else list(attribute_names)
        self.attribute_types = None if attribute_types is None else np.asarray(attribute_types)
        self.max_bytes, self.pad_to_square, self.top_k, self.top_attr = max_bytes, pad_to_square, top_k, top_attr
        self.upload = W.FileUpload(accept="image/jpeg,image/png,.jpg,.jpeg,.png", multiple=False,
                                   description="upload JPEG/PNG", layout=W.Layout(width="15em"))
        self.box = W.Text(value="", placeholder="x1 y1 x2 y2 in pixels (empty: whole image)", description="box",
                          continuous_update=False, layout=W.Layout(width="28em"))
        self.opacity = W.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="opacity",
                                     continuous_update=False, readout_format=".2f")
        self.predictions = W.HTML()
        self.filename: str | None = None
        self.source: Image.Image | None = None     # the uploaded image, 8-bit RGB
        self.notes: list = []                      # conversions applied to it
        self.window = None                          # crop window the model saw
        self.crop: torch.Tensor | None = None       # normalised model input
        self.prediction = None
        self.error: str | None = None              # last problem shown in .message (None: all well)
        self._overlay = None
        self.figure.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.03, wspace=0.08)
        self.children = [W.HBox([self.upload, self.box]), self.opacity, self.message, self.image, self.predictions]
        self.upload.observe(self._on(self._uploaded), "value")
        self.box.observe(self._on(self._box_changed), "value")
        self.opacity.observe(self._on(self._opacity_changed), "value")
        for ax in self.axes[0]:
            draw_message(ax, "upload a JPEG or PNG image")
        self.message.value = _note_html(f"Upload a JPEG or PNG (at most {max_bytes / 2**20:.0f} MB); optionally "
                                        "type a box around the garment.")
        self._show()

    def _problem(self, text: str):
        self.error = text
        self.message.value = _error_html(text)
        log.info("predict_image: %s", text)

    def _uploaded(self):
        entries = _upload_entries(self.upload.value)
        if not entries:
            return
        entry = entries[-1]
        with self._hold():
            self.upload.value = ()          # do not keep the file in the widget state; the same file re-uploads
        name = str(entry.get("name", ""))
        try:
            image, notes = read_upload(entry.get("content", b""), name, entry.get("size"), self.max_bytes)
        except UploadError as exc:
            self.source = self.prediction = None
            for ax in self.axes[0]:
                draw_message(ax, "no usable image")
            self.predictions.value = ""
            self._show()
            self._problem(str(exc))
            return
        self.filename, self.source, self.notes = name, image, notes
        self.run()

    def _box_changed(self):
        if self.source is not None:
            self.run()

    def run(self):
        """Crop the current image (box or whole), predict, draw, list the predictions."""
        try:
            box = parse_box(self.box.value)
            crop, window = prepare_crop(self.source, box, _model_size(self.model, 224), self.pad_to_square)
        except UploadError as exc:
            self._problem(str(exc))
            return
        self.crop, self.window = crop, window
        self.prediction = pred = predict_one(self.model, crop)
        full, zoom = self.axes[0]
        full.clear()
        zoom.clear()
        name, p = top_categories(pred.category_probs, self.category_names, 1)[0]
        draw_prediction_on_image(full, self.source, window, pred.landmarks,
                                 f"{self.filename or 'image'} ({self.source.width}x{self.source.height})\n"
                                 f"predicted: {name} ({p:.2f})")
        size = crop.shape[-1]
        extent = (0, size, size, 0)
        if pred.attention is not None:
            self._overlay = draw_map_overlay(zoom, unnormalize(crop), pred.attention, extent, self.opacity.value,
                                             "model input with attention\n(mean over channels)")
            for s, (u, v) in enumerate(pred.landmarks):
                zoom.plot(u * size, v * size, "P", color=LANDMARK_COLORS[s], ms=8, mec="white")
        else:
            self._overlay = draw_map_overlay(zoom, unnormalize(crop), pred.feature_energy, extent, self.opacity.value,
                                             "model input with conv4_3 feature energy\n(class-agnostic)")
        self.predictions.value = predictions_html(
            f"{getattr(self.model, 'name', 'model')} on {self.filename or 'image'}", pred.category_probs,
            self.category_names, pred.attribute_scores, self.attribute_names, self.attribute_types, self.top_k,
            self.top_attr)
        self.error = None
        box_text = "whole image" if box is None else "box " + " ".join(f"{v:g}" for v in box)
        self.message.value = _note_html("; ".join([f"{self.filename}: {box_text}"] + self.notes))
        self._show()

    def _opacity_changed(self):
        if self._overlay is not None:
            self._overlay.set_alpha(self.opacity.value)
            self._show()


def predict_image(model, category_names, attribute_names=None, attribute_types=None, **kwargs) -> PredictImage:
    """Upload a JPEG or PNG of your own and see the model's categories, attributes, landmarks and attention.

    Args:
        model: a trained network (e.g. :func:`vfu_nb.training.runs.load_model`); CAT shows feature energy instead
            of attention and no landmarks.
        category_names: the 50 names, or an ``Annotations``/``DeepFashionC`` to take names and attribute
            names/types from.
        attribute_names, attribute_types: for the top attributes per type (optional).
        max_bytes (8 MiB, :data:`MAX_UPLOAD_BYTES`), pad_to_square (False), alpha (0.5), top_k (5), top_attr (3): keyword options.

    The optional box (``"x1 y1 x2 y2"`` in pixels of the uploaded image) is cropped and resized like the dataset
    crops its bounding boxes; empty means the whole image. Files that are not JPEG/PNG images, larger than
    ``max_bytes``, truncated, or in a pixel mode without a defined range (32-bit integer, float) are refused
    with a message in ``.message``; CMYK, 16-bit grey and transparent images are converted with a note (see
    this module's docstring). Returns a VBox with ``.upload``, ``.box``, ``.opacity``, ``.message``, ``.image``,
    ``.predictions`` and state ``.source``, ``.window``, ``.crop``, ``.prediction``, ``.notes``, ``.error``.
    """
    return PredictImage(model, category_names, attribute_names, attribute_types, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# The explorer of trained runs (README screenshot)


def explorer_from_runs(runs=None, data_root=None, split: str = "test", index: int = 0, untrained: bool = False,
                       image_size: int = 128, width: float = 0.25, seed: int = 0, **kwargs) -> AttentionExplorer:
    """The attention explorer for the MTL and CAT runs under ``runs`` (or untrained models with ``untrained``).

    Trained: every run directory below ``runs`` with ``config.json`` and a checkpoint (first run per model name,
    MTL and CAT first, :func:`vfu_nb.training.runs.find_runs`), images at the runs' size from ``data_root``
    (default: the first run's ``data_root``). Untrained: ``build_model("mtl"/"cat", ..., image_size, width)``
    seeded with ``seed``.
    """
    from vfu_nb.models import build_model

    models: OrderedDict = OrderedDict()
    if untrained:
        if data_root is None:
            raise ValueError("untrained models need a data_root")
        dataset = DeepFashionC(resolve(data_root), split, image_size, progress=False)
        ann = dataset.annotations
        for name in ("mtl", "cat"):
            torch.manual_seed(seed)
            models[f"{name.upper()} (untrained)"] = build_model(name, len(ann.category_names),
                                                                len(ann.attribute_names), 8, image_size, width).eval()
    else:
        found = find_runs(runs)
        order = sorted(found, key=lambda n: ({"mtl": 0, "cat": 1}.get(n, 2), n))
        if not order:
            raise FileNotFoundError(f"no run directories with config.json and checkpoints under {runs}")
        for name in order:
            models[name.upper()] = load_model(found[name])
        first = RunDir(found[order[0]]).read_config()
        root = resolve(data_root if data_root is not None else first.get("data_root", ""))
        if not root.is_dir():
            raise FileNotFoundError(f"data_root {root} of {found[order[0]]} not found; pass data_root")
        dataset = DeepFashionC(root, split, int(first.get("image_size", 224)), progress=False,
                               pad_to_square=bool(first.get("pad_to_square", False)))
    explorer = AttentionExplorer(models, dataset, **kwargs)
    explorer.slider.value = min(index, len(dataset) - 1)
    return explorer
