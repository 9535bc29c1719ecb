"""The landmark browser: images with their box and landmarks, filtered by split, clothes type and category, with
a model's predictions."""

from __future__ import annotations

import html
from collections import OrderedDict

import ipywidgets as W
import numpy as np

from vfu_nb.conventions import CLOTHES_TYPE_NAMES, SPLITS
from vfu_nb.data.dataset import DeepFashionC
from vfu_nb.plots.draw import draw_message, landmark_legend
from vfu_nb.plots.explore import draw_sample
from vfu_nb.training.runs import landmark_errors, predict_one
from vfu_nb.widgets.base import DatasetPool, FigureWidget, model_size, to_plain_units, top_categories, windows


class LandmarkBrowser(FigureWidget):
    """See :func:`landmark_browser`."""

    def __init__(self, dataset: DeepFashionC, model=None, *, dpi: int | None = None, cache_size: int = 64):
        has_model = model is not None
        super().__init__(1, 2, (8.5, 4.6), dpi)
        self.dataset, self.model, self.annotations = dataset, model, dataset.annotations
        self.pool = DatasetPool(dataset)
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
            item = self.pool.item(split, row, model_size(self.model, self.dataset.image_size))
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
            plain, model_window = windows(ann, row, self.dataset.pad_to_square)
            predicted = to_plain_units(pred.landmarks, model_window, plain)
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
    ``.prediction``, ``.error``. Keyword arguments: ``dpi`` (:data:`vfu_nb.widgets.base.DPI`), ``cache_size``
    (64 predictions).
    """
    return LandmarkBrowser(dataset, model, **kwargs)
