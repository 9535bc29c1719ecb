"""Prediction helpers for widgets and notebooks: load a trained run, predict one crop, read an uploaded image.

    model, config = load_run("runs/default/mtl")         # config.json + checkpoints/best.pt, eval mode, CPU
    pred = predict(model, dataset[0]["image"])           # Prediction: probabilities, landmarks, maps (numpy)
    top_categories(pred.category_probs, names)           # [(name, probability), ...]

Every model call runs under ``torch.no_grad()`` in eval mode on the model's own device (CPU unless you moved it);
the model's training flag is restored afterwards. Landmarks are decoded with :func:`vfu_nb.models.decode_landmarks`
(crop units, conventions.md).

Uploaded images (:func:`read_upload`): JPEG or PNG up to 20 MB and 40 megapixels. Pixel modes that have a faithful
8-bit RGB equivalent are converted, with a note for the user: grey and bilevel, palette, YCbCr, transparency
(RGBA, LA, PA, palette with a transparent colour: composited onto white), CMYK (converted without a colour profile,
so colours are approximate) and 16-bit grey (scaled 0..65535 -> 0..255; Pillow already reduces 16-bit RGB PNGs to
8 bits). Modes without a defined display range are refused: 32-bit integer ("I") and floating point ("F") pixels
(depth maps, scientific data), and any mode Pillow cannot convert to RGB. Other failures (not an image, truncated
or corrupt data, too large) raise :class:`UploadError` with a one-line message meant for the user.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from vfu_nb.data import (
    ATTRIBUTE_TYPE_NAMES, IMAGENET_MEAN, IMAGENET_STD, crop_and_resize, crop_window, normalize_images,
)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
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
# Trained runs


def load_run(run_dir, checkpoint: str = "best", map_location="cpu"):
    """Rebuild a trained model from a run directory: ``(model in eval mode, config dict)``.

    ``checkpoints/<checkpoint>.pt`` is loaded by :func:`vfu_nb.runs.load_model`; a run without ``best.pt``
    falls back to ``last.pt``.
    """
    from vfu_nb.runs import load_model

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.json (not a training run directory)")
    which = checkpoint
    if checkpoint == "best" and not (run_dir / "checkpoints" / "best.pt").exists():
        which = "last"
    if not (run_dir / "checkpoints" / f"{which}.pt").exists():
        raise FileNotFoundError(f"{run_dir}: no checkpoints/{checkpoint}.pt (or last.pt)")
    return load_model(run_dir, which, device=str(map_location)), json.loads(config_path.read_text())


def find_runs(root) -> dict:
    """Run directories under ``root`` (itself included) that hold ``config.json`` and a checkpoint.

    Returns ``{model name: run dir}``, the first run (in sorted path order) of each model name.
    """
    root = Path(root)
    found: dict = {}
    candidates = [root] + sorted(p.parent for p in root.rglob("config.json"))
    for run in candidates:
        ckpts = run / "checkpoints"
        if not (run / "config.json").exists() or not ((ckpts / "best.pt").exists() or (ckpts / "last.pt").exists()):
            continue
        try:
            name = json.loads((run / "config.json").read_text()).get("model")
        except (OSError, ValueError):
            continue
        if name and name not in found:
            found[name] = run
    return found


# ----------------------------------------------------------------------------------------------------------
# Prediction


@dataclass
class Prediction:
    """What one model says about one crop (numpy, batch dimension removed).

    ``landmarks`` (L,2) crop units, ``heatmaps`` (L,S,S) raw, ``attention`` (S,S) = mean over channels of the
    attention output upsampled bilinearly to the input size; all three None for models without a landmark
    branch. ``feature_energy`` (S,S) = mean |conv4_3 features| upsampled: a class-agnostic map every model has.
    """

    category_probs: np.ndarray
    attribute_scores: np.ndarray
    feature_energy: np.ndarray
    landmarks: np.ndarray | None = None
    heatmaps: np.ndarray | None = None
    attention: np.ndarray | None = None

    def heatmap(self, landmark: int | None = None) -> np.ndarray | None:
        """One landmark's heatmap, or (``None``) the maximum over all maps."""
        if self.heatmaps is None:
            return None
        return self.heatmaps.max(axis=0) if landmark is None else self.heatmaps[landmark]


def _upsample(maps: torch.Tensor, size: int) -> np.ndarray:
    """(1,h,w) -> (S,S) float32 numpy, bilinear (align_corners=False, the pixel-centre convention)."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                         align_corners=False)[0, 0].cpu().numpy()


def predict(model: torch.nn.Module, image: torch.Tensor) -> Prediction:
    """Run ``model`` on one normalised image (3,S,S) (or a batch of one) and decode its outputs.

    No gradients, eval mode (the model's previous mode is restored), on the device of the model's parameters.
    """
    from vfu_nb.models import decode_landmarks

    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"predict takes one image (3,S,S), got {tuple(image.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(image.to(device=device, dtype=torch.float32))
    finally:
        model.train(was_training)
    size = image.shape[-1]
    pred = Prediction(
        category_probs=torch.softmax(out["category_logits"].float(), dim=1)[0].cpu().numpy(),
        attribute_scores=torch.sigmoid(out["attribute_logits"].float())[0].cpu().numpy(),
        feature_energy=_upsample(out["features"].float().abs().mean(dim=1), size),
    )
    if "landmark_heatmaps" in out:
        heatmaps = out["landmark_heatmaps"].float()
        pred.heatmaps = heatmaps[0].cpu().numpy()
        pred.landmarks = decode_landmarks(heatmaps)[0].cpu().numpy()
    if "attention" in out:
        pred.attention = _upsample(out["attention"].float().mean(dim=1), size)
    return pred


def landmark_error(predicted, landmarks, visibility) -> float:
    """Normalised error of one image: mean distance in crop units over its visible landmarks (nan if none).

    The per-image form of :func:`vfu_nb.metrics.landmark_normalized_error` (visible = visibility code 0).
    """
    from vfu_nb.metrics import landmark_normalized_error

    p = np.asarray(predicted, np.float64)[None]
    g = np.asarray(landmarks, np.float64)[None]
    v = np.asarray(visibility)[None] == 0
    return landmark_normalized_error(p, g, v)["mean"]


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
