"""Uploaded files for :func:`vfu_nb.widgets.predict_image`: size, format and pixel-mode checks, conversion to 8-bit
RGB, the optional box and the crop the model sees (the policy is in :mod:`vfu_nb.widgets`' docstring)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from vfu_nb.data.crops import crop_and_resize, crop_window, normalize_images

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
