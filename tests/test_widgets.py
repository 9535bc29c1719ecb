"""Headless tests of the widgets (vfu_nb.widgets): drawing, controls, uploads and the upload size limit.

Widgets are built on a small synthetic tree with tiny random models; controls are driven by setting ``.value``
(observers run synchronously) or ``.click()``; assertions look at what was drawn (artists on the axes, PNG
bytes, HTML text). Button callbacks and widget comms swallow exceptions into the log, so every test also fails
on any WARNING-or-worse log record.
"""

import datetime
import io
import json
import logging
import os

import ipywidgets as W
import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle
from PIL import Image

from vfu_nb.conventions import VISIBILITY_MARKERS
from vfu_nb.data.crops import BadImageError
from vfu_nb.data.dataset import DeepFashionC
from vfu_nb.models import build_model
from vfu_nb.paths import repo_root
from vfu_nb.training.config import TrainConfig
from vfu_nb.training.rundir import save_checkpoint
from vfu_nb.training.runs import landmark_errors, predict_one
from vfu_nb.widgets import base as widgets_base
from vfu_nb.widgets import (
    MAX_UPLOAD_BYTES, UploadError, attention_explorer, explorer_from_runs, landmark_browser, predict_image,
    read_upload, scale_map, to_rgb, top_attributes, top_categories,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tree(synth_root):
    return synth_root          # the session's tree (conftest.py): all three clothes types in every split


@pytest.fixture(scope="module")
def train_ds(tree):
    return DeepFashionC(tree, "train", image_size=32, progress=False)


@pytest.fixture(scope="module")
def ann(train_ds):
    return train_ds.annotations


class Counted(torch.nn.Module):
    """Wraps a model and counts forward calls (attributes like image_size/name pass through)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, 0
        self.name, self.image_size = model.name, model.image_size
        self.has_landmark_branch = model.has_landmark_branch

    def forward(self, images):
        self.calls += 1
        return self.inner(images)


def tiny(name, ann, size=32):
    torch.manual_seed(0)
    return build_model(name, len(ann.category_names), len(ann.attribute_names), image_size=size, width=0.125)


@pytest.fixture(scope="module")
def mtl(ann):
    return tiny("mtl", ann, 32)


@pytest.fixture(scope="module")
def cat(ann):
    return tiny("cat", ann, 64)      # another input size than the dataset: exercises the twin datasets


@pytest.fixture(autouse=True)
def low_resolution(monkeypatch):
    """Figures at 40 dpi instead of 80: the tests read artists, bytes and HTML, and a quarter of the pixels draws
    faster."""
    monkeypatch.setattr(widgets_base, "DPI", 40)


@pytest.fixture(autouse=True)
def no_logged_problems(caplog):
    """Fail on any WARNING+ record (ipywidgets' 'Exception in callback', our own ERROR logs, ...)."""
    caplog.set_level(logging.WARNING)
    yield caplog
    bad = [f"{r.name}: {r.getMessage()}" for r in caplog.get_records("call") if r.levelno >= logging.WARNING]
    W.Widget.close_all()
    assert not bad, "problems were logged:\n" + "\n".join(bad)


def upload_value(name, content: bytes, mime="image/jpeg", size=None):
    """A FileUpload value as ipywidgets 8 holds it after a browser upload."""
    return ({"name": name, "type": mime, "size": len(content) if size is None else size,
             "content": memoryview(content),
             "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def garment_jpeg(ann, row=0) -> bytes:
    return encoded(Image.open(ann.image_path(row)).convert("RGB"), "JPEG", quality=90)


# ----------------------------------------------------------------------------------------------------------
# Landmark browser


def present_slots(ann, row):
    return [s for s in range(8) if ann.landmark_visibility[row, s] >= 0]


def test_browser_draws_box_and_landmarks_with_visibility_markers(train_ds, ann):
    w = landmark_browser(train_ds)
    assert isinstance(w, W.VBox) and bytes(w.image.value).startswith(PNG_MAGIC)
    full, crop = w.axes[0]
    row = w.row
    assert row == train_ds.rows[0]
    assert sum(isinstance(p, Rectangle) for p in full.patches) == 1          # the bounding box
    slots = present_slots(ann, row)
    assert len(full.lines) == len(slots) == len(crop.lines)
    for line, s in zip(full.lines, slots):
        assert line.get_marker() == VISIBILITY_MARKERS[ann.landmark_visibility[row, s]]
    category = ann.category_names[ann.category[row]]
    assert category in w.label.value and category in full.get_title()
    assert w.message.value == ""


def test_browser_slider_and_buttons_redraw(train_ds):
    w = landmark_browser(train_ds)
    before, renders = w.image.value, w.renders
    w.slider.value = 5
    assert w.row == w.rows[5] and w.image.value != before and w.renders == renders + 1
    assert f"image 6 of {len(w.rows)}" in w.label.value
    w.next.click()
    assert w.slider.value == 6
    w.slider.value = 0
    w.prev.click()                               # wraps around
    assert w.slider.value == len(w.rows) - 1


def test_browser_filters_split_clothes_type_and_category(train_ds, ann):
    w = landmark_browser(train_ds)
    w.split.value = "val"
    assert set(w.rows) == set(ann.indices("val")) and "val image 1" in w.label.value
    w.clothes_type.value = 2                      # lower body
    assert len(w.rows) and (ann.clothes_type[w.rows] == 2).all()
    offered = [v for _, v in w.category.options if v >= 0]
    assert offered and all(ann.category_types[c] == 2 for c in offered)
    w.clothes_type.value = 0
    w.category.value = offered[0]
    assert (ann.category[w.rows] == offered[0]).all()
    assert ann.category_names[offered[0]] in w.label.value
    assert w.slider.max == len(w.rows) - 1 and w.slider.value == 0
    w.clothes_type.value = 1                      # that category is not upper body: back to "all"
    assert w.category.value == -1 and (ann.clothes_type[w.rows] == 1).all()
    w.split.value = "train"                       # the dataset's own split: its rows
    assert set(w.rows) <= set(train_ds.rows)


def test_browser_says_when_nothing_matches(tree):
    empty = DeepFashionC(tree, "val", image_size=32, max_items=0)
    w = landmark_browser(empty)
    assert len(w.rows) == 0 and w.slider.disabled and w.row is None
    assert "no images match" in w.label.value
    assert bytes(w.image.value).startswith(PNG_MAGIC)


def test_browser_with_model_draws_predictions_and_error(train_ds, ann, mtl):
    model = Counted(mtl)
    w = landmark_browser(train_ds, model)
    full, crop = w.axes[0]
    slots = present_slots(ann, w.row)
    assert len(full.lines) == len(slots)                   # ground truth only
    assert len(crop.lines) == 3 * len(slots)               # + a joining line and a predicted marker per slot
    assert sum(line.get_marker() == "P" for line in crop.lines) == len(slots)
    item = train_ds[0]
    predicted = predict_one(mtl, item["image"]).landmarks
    expected = landmark_errors(predicted[None], item["landmarks"][None], item["landmark_visibility"][None])[0]
    assert w.error == pytest.approx(expected)
    assert f"landmark error {expected:.3f}" in w.label.value and "predicted" in w.label.value
    calls = model.calls
    w.slider.value = 1
    w.slider.value = 0                                     # cached: no new model call
    assert model.calls == calls + 1


def test_browser_with_model_on_another_split_and_size(train_ds, ann, cat):
    w = landmark_browser(train_ds, cat)                    # CAT runs at 64 px, the dataset is 32 px
    w.split.value = "test"
    assert w.prediction is not None and w.error is None
    assert len(w.axes[0, 1].lines) == len(present_slots(ann, w.row))   # no landmark predictions
    assert "no landmark branch" in w.axes[0, 1].get_title()


def test_errors_are_shown_in_the_widget_and_logged(train_ds, no_logged_problems):
    w = landmark_browser(train_ds, tiny("mtl", train_ds.annotations))

    def broken(*args):
        raise BadImageError("img/x.jpg: cannot decode image")

    w.pool.item = broken
    w.slider.value = 2                                       # must not raise into the caller
    assert "cannot decode image" in w.message.value
    records = [r for r in no_logged_problems.records if r.levelno >= logging.ERROR]
    assert records and records[0].name == "vfu_nb.widgets"
    no_logged_problems.clear()                               # expected here; the fixture checks the rest


# ----------------------------------------------------------------------------------------------------------
# Attention explorer


def test_explorer_shows_mtl_and_cat_side_by_side(train_ds, ann, mtl, cat):
    w = attention_explorer({"MTL": mtl, "CAT": cat}, train_ds)
    assert w.axes.shape == (2, 3) and bytes(w.image.value).startswith(PNG_MAGIC)
    truth = ann.category_names[ann.category[w.row]]
    (img_m, heat_m, attn_m), (img_c, heat_c, attn_c) = w.axes
    assert "MTL" in img_m.get_title() and truth in img_m.get_title()
    assert "heatmap" in heat_m.get_title() and "attention" in attn_m.get_title()
    assert "no landmark branch" in heat_c.get_title()
    assert "feature energy" in attn_c.get_title() and "class-agnostic" in attn_c.get_title()
    assert [len(ax.images) for ax in (heat_m, attn_m, heat_c, attn_c)] == [2, 2, 1, 2]   # background + overlay
    assert w.outputs["CAT"][0]["image"].shape[-1] == 64 and w.outputs["MTL"][0]["image"].shape[-1] == 32
    html = w.predictions.value
    assert "MTL" in html and "CAT" in html and truth in w.label.value
    top = top_categories(w.outputs["MTL"][1].category_probs, ann.category_names, 5)
    assert all(name in html for name, _ in top)
    for type_name in ("texture", "fabric", "shape", "part", "style"):
        assert type_name in html
    slots = present_slots(ann, w.row)
    assert len(img_m.lines) == 3 * len(slots) and len(img_c.lines) == len(slots)


def test_explorer_cheap_controls_do_not_run_the_models(train_ds, mtl, cat):
    m, c = Counted(mtl), Counted(cat)
    w = attention_explorer({"MTL": m, "CAT": c}, train_ds, alpha=0.4)
    calls = (m.calls, c.calls)
    before = w.image.value
    w.opacity.value = 0.8
    overlays = [ax.images[-1] for ax in w.axes[:, 1:].flat if len(ax.images) == 2]
    assert overlays and all(o.get_alpha() == 0.8 for o in overlays)
    assert w.image.value != before
    heat = w.axes[0, 1].images[-1]
    w.landmark.value = 3
    assert np.allclose(heat.get_array(), scale_map(w.outputs["MTL"][1].heatmaps[3]))
    assert "right sleeve" in w.axes[0, 1].get_title()
    w.landmark.value = -1
    assert np.allclose(heat.get_array(), scale_map(w.outputs["MTL"][1].heatmaps.max(axis=0)))
    assert (m.calls, c.calls) == calls
    before = w.image.value
    w.next.click()
    assert w.slider.value == 1 and w.image.value != before
    assert (m.calls, c.calls) == (calls[0] + 1, calls[1] + 1)
    assert w.axes[0, 1].images[-1].get_alpha() == 0.8          # the new image keeps the chosen opacity


def test_explorer_takes_one_model_or_a_list(train_ds, mtl, cat):
    one = attention_explorer(mtl, train_ds, landmark="left hem")
    assert one.axes.shape == (1, 3) and one.landmark.value == 6 and "left hem" in one.axes[0, 1].get_title()
    both = attention_explorer([mtl, cat], train_ds)
    assert list(both.outputs) == ["MTL", "CAT"]


# ----------------------------------------------------------------------------------------------------------
# Try your own image


@pytest.fixture
def uploader(ann, mtl):
    return predict_image(mtl, ann)


def test_predict_image_on_a_jpeg(uploader, ann):
    w = uploader
    before = w.image.value
    w.upload.value = upload_value("dress.jpg", garment_jpeg(ann))
    assert w.error is None and w.prediction is not None
    assert w.source.size == Image.open(ann.image_path(0)).size and w.source.mode == "RGB"
    assert w.image.value != before and "whole image" in w.message.value
    assert w.window == (0.0, 0.0, float(w.source.width), float(w.source.height))
    top1 = top_categories(w.prediction.category_probs, ann.category_names, 1)[0][0]
    assert top1 in w.predictions.value and top1 in w.axes[0, 0].get_title()
    assert len(w.axes[0, 0].lines) == 8 and len(w.axes[0, 1].lines) == 8      # predicted landmarks, both panels
    assert w.upload.value == ()                                                # content not kept in widget state
    before = w.image.value
    w.box.value = "20, 30 150 200"
    assert w.window == (20.0, 30.0, 150.0, 200.0) and w.image.value != before
    assert "box 20 30 150 200" in w.message.value
    w.box.value = "20 30 oops"
    assert "expected four numbers" in w.message.value and w.error
    w.box.value = "150 30 20 200"
    assert "x2 must be greater than x1" in w.message.value
    w.box.value = "500 500 900 900"                            # outside the image
    assert "empty inside an image" in w.message.value
    before, alpha_renders = w.image.value, w.renders
    w.box.value = ""
    w.opacity.value = 0.9
    assert w.renders == alpha_renders + 2 and w.image.value != before


def test_predict_image_with_cat_shows_feature_energy(ann, cat):
    w = predict_image(cat, ann.category_names, ann.attribute_names, ann.attribute_types)
    w.upload.value = upload_value("dress.jpg", garment_jpeg(ann))
    assert w.prediction.landmarks is None and "feature energy" in w.axes[0, 1].get_title()
    assert len(w.axes[0, 0].lines) == 0 and w.crop.shape == (3, 64, 64)


def _png(image):
    return encoded(image, "PNG")


REFUSED = {
    "text file": (lambda ann: b"just some text\n" * 10, "notes.txt", "text/plain", None, "not an image"),
    "too large (size field)": (lambda ann: garment_jpeg(ann), "big.jpg", "image/jpeg", 25 * 2**20,
                               "limit is 8 MB"),
    "too large (content)": (lambda ann: b"\xff\xd8" + bytes(9 * 2**20), "huge.jpg", "image/jpeg", None,
                            "limit is 8 MB"),
    "empty": (lambda ann: b"", "empty.png", "image/png", None, "empty"),
    "gif": (lambda ann: encoded(Image.new("P", (20, 20)), "GIF"), "a.gif", "image/gif", None,
            "GIF images are not supported"),
    "truncated jpeg": (lambda ann: garment_jpeg(ann)[:3000], "cut.jpg", "image/jpeg", None,
                       "truncated or corrupt"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_predict_image_refuses_with_a_message(uploader, ann, case):
    make, name, mime, size, expected = REFUSED[case]
    w = uploader
    w.upload.value = upload_value("dress.jpg", garment_jpeg(ann))    # a good image first ...
    assert w.prediction is not None
    w.upload.value = upload_value(name, make(ann), mime, size)       # ... then the bad one replaces it
    assert expected in w.message.value and expected in w.error
    assert name in w.message.value
    assert w.source is None and w.prediction is None and w.predictions.value == ""


def _cmyk_jpeg(ann):
    return encoded(Image.open(ann.image_path(0)).convert("CMYK"), "JPEG")


def _gray16_png(ann):
    grey = np.asarray(Image.open(ann.image_path(0)).convert("L"), dtype=np.uint16) * 257
    return _png(Image.fromarray(grey))


def _palette_transparent_png(ann):
    image = Image.open(ann.image_path(0)).convert("RGB").quantize(16)
    return encoded(image, "PNG", transparency=0)


CONVERTED = {
    "cmyk jpeg": (_cmyk_jpeg, "CMYK", "CMYK"),
    "16-bit grey png": (_gray16_png, "I;16", "16-bit grey scaled to 8 bits"),
    "palette with transparency": (_palette_transparent_png, "P", "composited onto white"),
    "rgba png": (lambda ann: _png(Image.open(ann.image_path(0)).convert("RGBA")), "RGBA", "composited onto white"),
    "greyscale jpeg": (lambda ann: encoded(Image.open(ann.image_path(0)).convert("L"), "JPEG"), "L", None),
}


@pytest.mark.parametrize("case", CONVERTED, ids=list(CONVERTED))
def test_predict_image_converts_odd_modes_with_a_note(uploader, ann, case):
    make, mode, note = CONVERTED[case]
    content = make(ann)
    assert Image.open(io.BytesIO(content)).mode == mode
    w = uploader
    w.upload.value = upload_value("odd.png", content, "image/png")
    assert w.error is None and w.prediction is not None and w.source.mode == "RGB"
    if note:
        assert note in w.message.value
    if mode == "I;16":        # scaled, not clipped: the grey levels match the 8-bit original
        original = np.asarray(Image.open(ann.image_path(0)).convert("L"), dtype=np.int16)
        assert np.abs(np.asarray(w.source)[..., 0].astype(np.int16) - original).max() <= 1


def test_to_rgb_refuses_modes_without_a_range():
    for mode in ("F", "I"):
        with pytest.raises(UploadError, match="no defined display range"):
            to_rgb(Image.new(mode, (4, 4)))


def test_read_upload_applies_exif_orientation(ann):
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6                                   # rotate 90 degrees clockwise to display
    rotated, notes = read_upload(encoded(image, "JPEG", exif=exif.tobytes()), "phone.jpg")
    assert rotated.size == (20, 40) and any("EXIF" in n for n in notes)


# ----------------------------------------------------------------------------------------------------------
# The upload limit, prediction text, the explorer of runs


def test_the_upload_limit_fits_one_websocket_message(ann, monkeypatch):
    """A file reaches the kernel in one websocket message; a larger one than the server takes drops the connection."""
    import tornado.websocket
    from traitlets.config import Config

    header = 2**20                                           # the message's JSON header: far less than this
    assert MAX_UPLOAD_BYTES + header <= tornado.websocket._default_max_message_size     # any Jupyter server
    c = Config()
    config = repo_root() / "jupyter_server_config.py"
    # the config file extends JUPYTER_CONFIG_PATH, as it does in the server: undone after the test, or every Jupyter
    # server this test process starts later (the browser tests' control server) would carry the project's settings
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", os.environ.get("JUPYTER_CONFIG_PATH", ""))
    exec(config.read_text(), {"c": c, "get_config": lambda: c, "__file__": str(config)})
    assert str(repo_root() / "jupyter") in os.environ["JUPYTER_CONFIG_PATH"].split(os.pathsep)
    raised = c.ServerApp.tornado_settings["websocket_max_message_size"]                # `make lab`
    assert raised >= 4 * MAX_UPLOAD_BYTES
    w = predict_image(tiny("mtl", ann), ann)
    assert f"at most {MAX_UPLOAD_BYTES // 2**20} MB" in w.message.value
    with pytest.raises(UploadError, match=f"the limit is {MAX_UPLOAD_BYTES // 2**20} MB"):
        read_upload(b"x", "big.jpg", size=MAX_UPLOAD_BYTES + 1)


def fake_run(root, name, ann, size):
    model = tiny(name, ann, size)
    run = root / f"{name}_seed0"
    (run / "checkpoints").mkdir(parents=True)
    config = TrainConfig(model=name, image_size=size, width=0.125, run_dir=str(run), data_root=str(ann.root))
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    save_checkpoint(run / "checkpoints" / "best.pt",
                    {"model": model.state_dict(), "num_categories": len(ann.category_names),
                     "num_attributes": len(ann.attribute_names), "model_name": name, "epoch": 1})
    return run, model


def test_top_attributes_per_type(ann):
    scores = np.linspace(0, 1, len(ann.attribute_names))
    tops = top_attributes(scores, ann.attribute_names, ann.attribute_types, k=2)
    for t, items in tops.items():
        assert len(items) <= 2 and items == sorted(items, key=lambda x: -x[1])


def test_explorer_from_runs_trained_and_untrained(tmp_path, tree, ann):
    fake_run(tmp_path, "cat", ann, 32)
    fake_run(tmp_path, "mtl", ann, 32)
    trained = explorer_from_runs(tmp_path, data_root=tree, split="val", index=2)
    assert list(trained.outputs) == ["MTL", "CAT"] and trained.slider.value == 2
    untrained = explorer_from_runs(None, data_root=tree, split="test", untrained=True, image_size=32, width=0.125)
    assert list(untrained.outputs) == ["MTL (untrained)", "CAT (untrained)"]


def test_explorer_on_a_cached_uint8_dataset(tmp_path, tree, mtl):
    # what notebook 05 passes (vfu_nb.training.runs.dataset_for): memory-mapped uint8 crops, normalised by the widget
    cached = DeepFashionC(tree, "test", image_size=32, cache=True, uint8=True, cache_dir=tmp_path, progress=False)
    plain = DeepFashionC(tree, "test", image_size=32, progress=False)
    w = attention_explorer({"mtl": mtl}, cached)
    image = w.outputs["mtl"][0]["image"]
    assert image.dtype == torch.float32 and torch.allclose(image, plain[0]["image"], atol=1e-5)
