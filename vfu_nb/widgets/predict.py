"""Try your own image: upload a JPEG or PNG and see the model's categories, attributes, landmarks and attention."""

from __future__ import annotations

import numpy as np
import torch
import ipywidgets as W
from PIL import Image

from vfu_nb.plots.draw import draw_map_overlay, draw_message, draw_predicted_landmarks, draw_prediction_on_image
from vfu_nb.training.runs import predict_one
from vfu_nb.widgets.base import (
    FigureWidget, error_html, log, model_size, note_html, predictions_html, top_categories, unnormalize,
)
from vfu_nb.widgets.upload import MAX_UPLOAD_BYTES, UploadError, parse_box, prepare_crop, read_upload


def _upload_entries(value) -> list:
    """FileUpload values as a list of dicts with name, type, size, content (ipywidgets 8; 7's dict accepted)."""
    if isinstance(value, dict):          # ipywidgets 7: {name: {"metadata": {...}, "content": bytes}}
        return [{"name": k, **v.get("metadata", {}), "content": v["content"]} for k, v in value.items()]
    return list(value or ())


class PredictImage(FigureWidget):
    """See :func:`predict_image`."""

    def __init__(self, model, category_names, attribute_names=None, attribute_types=None, *,
                 max_bytes: int = MAX_UPLOAD_BYTES, pad_to_square: bool = False, alpha: float = 0.5,
                 top_k: int = 5, top_attr: int = 3, dpi: int | None = None):
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
        self.message.value = note_html(f"Upload a JPEG or PNG (at most {max_bytes / 2**20:.0f} MB); optionally "
                                        "type a box around the garment.")
        self._show()

    def _problem(self, text: str):
        self.error = text
        self.message.value = error_html(text)
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
            crop, window = prepare_crop(self.source, box, model_size(self.model, 224), self.pad_to_square)
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
            draw_predicted_landmarks(zoom, [(u * size, v * size) for u, v in pred.landmarks])
        else:
            self._overlay = draw_map_overlay(zoom, unnormalize(crop), pred.feature_energy, extent, self.opacity.value,
                                             "model input with conv4_3 feature energy\n(class-agnostic)")
        self.predictions.value = predictions_html(
            f"{getattr(self.model, 'name', 'model')} on {self.filename or 'image'}", pred.category_probs,
            self.category_names, pred.attribute_scores, self.attribute_names, self.attribute_types, self.top_k,
            self.top_attr)
        self.error = None
        box_text = "whole image" if box is None else "box " + " ".join(f"{v:g}" for v in box)
        self.message.value = note_html("; ".join([f"{self.filename}: {box_text}"] + self.notes))
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
