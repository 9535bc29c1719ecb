"""The attention explorer: models side by side on the same images, with their heat maps and attention (or feature
energy) over the crop; and :func:`explorer_from_runs`, the explorer of trained runs (the README's screenshot)."""

from __future__ import annotations

import html
from collections import OrderedDict

import ipywidgets as W
import torch

from vfu_nb.conventions import CLOTHES_TYPE_NAMES, LANDMARK_NAMES
from vfu_nb.data.dataset import DeepFashionC
from vfu_nb.paths import resolve
from vfu_nb.plots.draw import draw_map_overlay, draw_message, landmark_legend, scale_map
from vfu_nb.plots.explore import draw_sample
from vfu_nb.training.rundir import RunDir
from vfu_nb.training.runs import find_runs, load_model, predict_one
from vfu_nb.widgets.base import (
    DatasetPool, FigureWidget, as_model_dict, model_size, predictions_html, to_plain_units, top_categories,
    unnormalize, windows,
)


class AttentionExplorer(FigureWidget):
    """See :func:`attention_explorer`."""

    def __init__(self, models, dataset: DeepFashionC, *, landmark: str | int = "all", alpha: float = 0.5,
                 top_k: int = 5, top_attr: int = 3, dpi: int | None = None, cache_size: int = 32):
        self.models = as_model_dict(models)
        n = len(self.models)
        height = 3.1 * n + 0.7
        super().__init__(n, 3, (9.0, height), dpi)
        self.dataset, self.annotations = dataset, dataset.annotations
        self.pool = DatasetPool(dataset)
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
                item = self.pool.item(self.dataset.split, row, model_size(model, self.dataset.image_size))
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
        plain, model_window = windows(ann, row, self.dataset.pad_to_square)
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
            draw_sample(ax_img, ann, row, predicted=to_plain_units(pred.landmarks, model_window, plain), crop=True)
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
