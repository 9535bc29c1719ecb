"""Images of DeepFashion-C: decoding, the box crop resized to ``S x S``, landmarks in crop units, normalisation.

Images are cropped to their bounding box and resized to ``S x S`` without keeping aspect, as the published
systems do, or padded to a square first (``pad_to_square=True``); the padding is the ImageNet mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)   # normalises to zero


class BadImageError(OSError):
    """An image file that is missing or cannot be decoded; the message names its path."""


_DEVICE_CONSTANTS: dict = {}   # (name, device) -> tensor, made once per device


def _device_constant(name: str, device: torch.device, values, dtype=torch.float32) -> torch.Tensor:
    """A small constant tensor on ``device``, copied there once: no host->device copy (a sync) per step."""
    key = (name, device)
    if key not in _DEVICE_CONSTANTS:
        _DEVICE_CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return _DEVICE_CONSTANTS[key]


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) in 0..255 -> float32 ImageNet-normalised, on the tensor's device.

    The mean and std tensors are made once per device, so a training step copies nothing to the device.
    """
    mean = _device_constant("imagenet_mean", images.device, IMAGENET_MEAN).view(3, 1, 1)
    std = _device_constant("imagenet_std", images.device, IMAGENET_STD).view(3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def crop_windows(boxes, image_sizes, pad_to_square: bool) -> np.ndarray:
    """The windows (N, 4) x1, y1, x2, y2 cut from N images: each bbox clamped to its image (width, height), or
    the square around it. Raises ValueError naming the first box that is empty inside its image."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    sizes = np.asarray(image_sizes, np.float64).reshape(-1, 2)
    x1, y1 = np.maximum(0.0, boxes[:, 0]), np.maximum(0.0, boxes[:, 1])
    x2, y2 = np.minimum(sizes[:, 0], boxes[:, 2]), np.minimum(sizes[:, 1], boxes[:, 3])
    empty = (x2 - x1 < 1) | (y2 - y1 < 1)
    if empty.any():
        k = int(np.argmax(empty))
        raise ValueError(f"bounding box {tuple(boxes[k].tolist())} is empty inside an image of "
                         f"{int(sizes[k, 0])}x{int(sizes[k, 1])}")
    if pad_to_square:
        side = np.maximum(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x1, y1, x2, y2 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    return np.stack([x1, y1, x2, y2], axis=1)


def crop_window(box, image_size: tuple[int, int], pad_to_square: bool) -> tuple[float, float, float, float]:
    """The window (x1, y1, x2, y2) cut from one image: the bbox clamped to the image, or its enclosing square."""
    return tuple(crop_windows([box], [image_size], pad_to_square)[0].tolist())


def crop_and_resize(image: Image.Image, window, size: int) -> np.ndarray:
    """Cut ``window`` (may extend past the image; filled with the ImageNet mean) and resize to size x size."""
    x1, y1, x2, y2 = window
    if x1 < 0 or y1 < 0 or x2 > image.width or y2 > image.height:
        canvas = Image.new("RGB", (round(x2 - x1), round(y2 - y1)), PAD_FILL)
        canvas.paste(image, (round(-x1), round(-y1)))
        image, x1, y1, x2, y2 = canvas, 0, 0, canvas.width, canvas.height
    crop = image.resize((size, size), Image.BILINEAR, box=(x1, y1, x2, y2))
    return np.array(crop, dtype=np.uint8)


def landmarks_in_window(landmarks: np.ndarray, visibility: np.ndarray, window):
    """Pixel landmarks (..., 8, 2) -> units of their crop ``window`` (..., 4); visibility becomes 2 (truncated)
    for points outside the window, and absent slots (visibility -1) get (0, 0)."""
    window = np.asarray(window, np.float64)
    origin = window[..., None, :2].astype(np.float32)
    extent = (window[..., None, 2:] - window[..., None, :2]).astype(np.float32)
    units = (landmarks - origin) / extent
    vis = visibility.copy()
    outside = (units < 0).any(-1) | (units > 1).any(-1)
    vis[(vis >= 0) & outside] = 2
    units[vis < 0] = 0.0   # slots this clothes type does not have
    return units.astype(np.float32), vis


def load_rgb(path: Path) -> Image.Image:
    """Decode an image to RGB, raising :class:`BadImageError` that names the path."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise BadImageError(f"{path}: image file not found") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadImageError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
