"""What the three widgets share: the figure widget (:class:`FigureWidget`), predictions as HTML, and dataset items
of any split at any image size."""

from __future__ import annotations

import html
import logging
from collections import OrderedDict
from contextlib import contextmanager

import ipywidgets as W
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from vfu_nb.conventions import ATTRIBUTE_TYPE_NAMES
from vfu_nb.data.crops import IMAGENET_MEAN, IMAGENET_STD, crop_window, normalize_images
from vfu_nb.data.dataset import DeepFashionC
from vfu_nb.plots.draw import figure_png

log = logging.getLogger("vfu_nb.widgets")

#: Resolution of a widget's figure when its ``dpi`` argument is left out (the tests lower it: fewer pixels to draw).
DPI = 80


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


def error_html(text: str) -> str:
    return f"<span style='color:#b00020'>&#9888; {html.escape(text)}</span>"


def note_html(text: str) -> str:
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
# Data access shared by the widgets


def _image_size_of(path) -> tuple[int, int]:
    with Image.open(path) as im:      # header only
        return im.size


def windows(ann, row: int, pad_to_square: bool):
    """(plain bbox window as explore.draw_sample uses it, the window the model's crop was cut from)."""
    size = _image_size_of(ann.image_path(row))
    return crop_window(ann.bbox[row], size, False), crop_window(ann.bbox[row], size, pad_to_square)


def to_plain_units(points, model_window, plain_window):
    """Crop units of the model's window -> crop units of the plain bbox window (equal unless padded)."""
    if points is None:
        return None
    mx1, my1, mx2, my2 = model_window
    x1, y1, x2, y2 = plain_window
    pixels = np.asarray(points) * [mx2 - mx1, my2 - my1] + [mx1, my1]
    return (pixels - [x1, y1]) / [x2 - x1, y2 - y1]


class DatasetPool:
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


def model_size(model, default: int) -> int:
    return int(getattr(model, "image_size", default))


def as_model_dict(models) -> "OrderedDict[str, torch.nn.Module]":
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


class FigureWidget(W.VBox):
    """A VBox holding one Figure rendered to ``self.image`` (PNG) and an HTML ``self.message``."""

    def __init__(self, nrows: int, ncols: int, figsize, dpi: int | None, **kwargs):
        super().__init__(**kwargs)
        self.figure = Figure(figsize=figsize, dpi=DPI if dpi is None else dpi)
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
            self.message.value = error_html(f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _show(self):
        self.image.value = figure_png(self.figure)
        self.renders += 1
