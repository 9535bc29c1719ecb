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

Modules: :mod:`~vfu_nb.widgets.base` (the figure widget, predictions as HTML, dataset items at any split and
size), :mod:`~vfu_nb.widgets.browser`, :mod:`~vfu_nb.widgets.explorer`, :mod:`~vfu_nb.widgets.predict` (one
widget each) and :mod:`~vfu_nb.widgets.upload` (reading an uploaded file). The drawing primitives (box,
landmarks, legend, map overlays) are :mod:`vfu_nb.plots.draw`, shared with the notebooks' figures.

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

from vfu_nb.plots.draw import draw_map_overlay, draw_prediction_on_image, figure_png, scale_map
from vfu_nb.widgets.base import predictions_html, top_attributes, top_categories
from vfu_nb.widgets.browser import LandmarkBrowser, landmark_browser
from vfu_nb.widgets.explorer import AttentionExplorer, attention_explorer, explorer_from_runs
from vfu_nb.widgets.predict import PredictImage, predict_image
from vfu_nb.widgets.upload import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, UploadError, read_upload, to_rgb

__all__ = ["landmark_browser", "attention_explorer", "predict_image", "explorer_from_runs", "LandmarkBrowser",
           "AttentionExplorer", "PredictImage", "draw_map_overlay", "draw_prediction_on_image", "figure_png",
           "predictions_html", "read_upload", "to_rgb", "scale_map", "top_attributes", "top_categories",
           "UploadError", "MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS"]
