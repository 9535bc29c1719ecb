"""DeepFashion-C as a torch Dataset: bbox crop, resize, landmarks in crop units, optional uint8 cache.

The annotation files are parsed by :mod:`vfu_nb.annotations` (re-exported here). Images are cropped to
their bounding box and resized to ``S x S`` without keeping aspect, as the published systems do, or
padded to a square first (``pad_to_square=True``). Decoding JPEGs every epoch is slow, so ``cache=True``
decodes, crops and resizes each image once into a uint8 memory-mapped array (one per root, split, size
and crop mode), rebuilt when the annotation files change; that first pass is also where bad images are
found.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vfu_nb.annotations import (  # noqa: F401  (re-exported API)
    ATTRIBUTE_TYPE_NAMES, CLOTHES_TYPE_NAMES, FLIP_PAIRS, LANDMARK_NAMES, SLOTS_BY_CLOTHES_TYPE, SPLITS,
    AnnotationError, Annotations, annotation_paths, image_root, load_annotations, read_partition,
    read_records, read_vocabulary,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)   # normalises to zero
CACHE_VERSION = 1
_FLIP_ORDER = [j for pair in FLIP_PAIRS for j in reversed(pair)]   # slot i <- slot _FLIP_ORDER[i]


class BadImageError(OSError):
    """An image file that is missing or cannot be decoded; the message names its path."""


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) in 0..255 -> float32 ImageNet-normalised, on the tensor's device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def crop_window(box, image_size: tuple[int, int], pad_to_square: bool) -> tuple[float, float, float, float]:
    """The window (x1, y1, x2, y2) cut from the image: the bbox clamped to the image, or its enclosing square."""
    width, height = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, y1 = max(0.0, x1), max(0.0, y1)
    x2, y2 = min(float(width), x2), min(float(height), y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise ValueError(f"bounding box {tuple(box)} is empty inside an image of {width}x{height}")
    if pad_to_square:
        side = max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x1, y1, x2, y2 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    return x1, y1, x2, y2


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
    """Pixel landmarks -> crop units; visibility becomes 2 (truncated) for points outside the window."""
    x1, y1, x2, y2 = window
    units = (landmarks - np.array([x1, y1], np.float32)) / np.array([x2 - x1, y2 - y1], np.float32)
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


def _decode_rows(job):
    """Worker: decode, crop and resize rows, writing them into the memmap (if given).

    Returns ``(sizes, failures)``: each image's (width, height), -1 where it failed, and (row, reason) pairs.
    """
    paths, windows, size, cache_file, offset, total = job
    out = None if cache_file is None else np.memmap(cache_file, np.uint8, "r+", shape=(total, size, size, 3))
    sizes = np.full((len(paths), 2), -1, dtype=np.int64)
    failures = []
    for k, (path, window) in enumerate(zip(paths, windows)):
        try:
            image = load_rgb(Path(path))
            if out is not None:
                out[offset + k] = crop_and_resize(image, window(image.size), size)
            sizes[k] = image.size
        except (BadImageError, ValueError) as exc:
            failures.append((offset + k, str(exc)))
    if out is not None:
        out.flush()
    return sizes, failures


class _Window:
    """Picklable ``image_size -> crop window`` for one bbox."""

    def __init__(self, box, pad_to_square):
        self.box, self.pad = tuple(float(v) for v in box), pad_to_square

    def __call__(self, image_size):
        return crop_window(self.box, image_size, self.pad)


def scan_images(paths, windows, size, cache_file=None, workers=None, progress=True, desc="images"):
    """Decode every image once (in parallel), optionally filling a uint8 memmap.

    Returns ``(sizes, failures)`` as :func:`_decode_rows` does, for all rows.
    """
    from tqdm.auto import tqdm

    total = len(paths)
    workers = workers or min(16, os.cpu_count() or 1)
    step = max(16, min(512, total // (4 * workers) + 1))
    jobs = [(paths[s:s + step], windows[s:s + step], size, cache_file, s, total) for s in range(0, total, step)]
    sizes, failures = [np.zeros((0, 2), np.int64)], []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    pool = None if workers == 1 or len(jobs) == 1 else ProcessPoolExecutor(workers, mp_context=get_context("fork"))
    try:
        for job, (job_sizes, job_failures) in zip(jobs, (pool.map if pool else map)(_decode_rows, jobs)):
            sizes.append(job_sizes)
            failures += job_failures
            bar.update(len(job[0]))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    return np.concatenate(sizes), sorted(failures)


def _files_fingerprint(paths: dict) -> str:
    """Size and modification time of each annotation file (None where missing), as one string."""
    stats = [(k, os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.exists(p) else (k, None)
             for k, p in sorted(paths.items())]
    return json.dumps(stats)


@lru_cache(maxsize=4)
def _load_cached(root: str, fingerprint: str) -> Annotations:
    return load_annotations(root)


def cached_annotations(root) -> Annotations:
    """load_annotations, memoised per root while its files are unchanged."""
    return _load_cached(str(Path(root).resolve()), _files_fingerprint(annotation_paths(root)))


class DeepFashionC(Dataset):
    """One split of DeepFashion-C (or the synthetic benchmark in the same format).

    Items are dicts: ``image`` (float 3xSxS ImageNet-normalised, or uint8 with ``uint8=True``),
    ``category`` (int64), ``attributes`` (float 0/1 over A), ``attributes_known``, ``landmarks``
    (float 8x2 crop units), ``landmark_visibility`` (int64 8: 0 visible, 1 occluded, 2 truncated or
    outside the crop, -1 absent) and ``index`` (row in the annotations).

    ``augment=True`` adds a horizontal flip (x mirrored, left/right slots swapped) and a small scale and
    shift jitter applied to image and landmarks together. ``on_bad_image="skip"`` leaves out missing or
    undecodable images (listed in ``self.skipped``) instead of raising.
    """

    def __init__(self, root, split, image_size=224, augment=False, on_bad_image="raise", *,
                 annotations: Annotations | None = None, cache=False, cache_dir=None, uint8=False,
                 pad_to_square=False, max_items=None, subset_seed=0, workers=None, progress=True):
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        self.root = Path(root)
        self.annotations = annotations if annotations is not None else cached_annotations(root)
        self.split, self.image_size, self.augment = split, int(image_size), augment
        self.uint8, self.pad_to_square, self.on_bad_image = uint8, pad_to_square, on_bad_image
        rows = self.annotations.indices(split)
        if max_items is not None and max_items < len(rows):
            rows = np.sort(np.random.default_rng(subset_seed).permutation(rows)[:max_items])
        self.rows = rows
        self.skipped: list[tuple[str, str]] = []
        self._cache = None
        self._jitter = v2.RandomAffine(degrees=0, translate=(0.05, 0.05), scale=(0.9, 1.1))
        if cache:
            self._open_cache(Path(cache_dir) if cache_dir else self.root / ".vfu_cache", workers, progress)
        elif on_bad_image == "skip":
            sizes, failures = scan_images(self._paths(), self._windows(), self.image_size, None, workers,
                                          progress, desc=f"checking {split} images")
            self._drop(failures)

    # ----- geometry -------------------------------------------------------------------------
    def _paths(self) -> list[str]:
        base = image_root(self.root)
        return [str(base / self.annotations.image_names[i]) for i in self.rows]

    def _windows(self) -> list[_Window]:
        return [_Window(self.annotations.bbox[i], self.pad_to_square) for i in self.rows]

    # ----- bad images -----------------------------------------------------------------------
    def _drop(self, failures) -> None:
        """Raise for bad images, or (skip mode) leave them out of ``rows`` and list them in ``skipped``."""
        self._keep = np.arange(len(self.rows))
        if not failures:
            return
        if self.on_bad_image == "raise":
            raise BadImageError(failures[0][1] + (f" (and {len(failures) - 1} more bad images)"
                                                   if len(failures) > 1 else ""))
        bad = {k for k, _ in failures}
        self.skipped = [(str(self.annotations.image_names[self.rows[k]]), reason) for k, reason in failures]
        self._keep = np.array([k for k in range(len(self.rows)) if k not in bad], dtype=np.int64)
        self.rows = self.rows[self._keep]
        warnings.warn(f"DeepFashionC({self.split}): skipped {len(failures)} bad image(s); see .skipped",
                      stacklevel=3)

    # ----- cache ----------------------------------------------------------------------------
    def cache_key(self) -> str:
        h = hashlib.sha1()
        h.update(_files_fingerprint(self.annotations.files).encode())
        h.update(np.ascontiguousarray(self.rows).tobytes())
        h.update(f"{CACHE_VERSION}:{self.image_size}:{self.pad_to_square}".encode())
        return h.hexdigest()[:16]

    def _open_cache(self, cache_dir: Path, workers, progress) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        mode = "pad" if self.pad_to_square else "stretch"
        stem = cache_dir / f"{self.split}-{self.image_size}-{mode}-{len(self.rows)}"
        data_file, meta_file = stem.with_suffix(".u8"), stem.with_suffix(".json")
        sizes_file = stem.with_suffix(".sizes.npy")
        key = self.cache_key()
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        shape = (len(self.rows), self.image_size, self.image_size, 3)
        if meta.get("key") != key or not data_file.exists() or not sizes_file.exists():
            partial = stem.with_suffix(".u8.partial")
            np.memmap(partial, np.uint8, "w+", shape=shape).flush()
            sizes, failures = scan_images(self._paths(), self._windows(), self.image_size, str(partial), workers,
                                          progress, desc=f"caching {self.split} {self.image_size}px")
            if failures and self.on_bad_image == "raise":
                partial.unlink()
                self._drop(failures)
            np.save(sizes_file, sizes)
            os.replace(partial, data_file)
            meta = {"key": key, "shape": list(shape), "failures": failures, "version": CACHE_VERSION}
            meta_file.write_text(json.dumps(meta))
        self.cache_file = data_file
        self._cache = np.memmap(data_file, np.uint8, "r", shape=shape)
        self._sizes = np.load(sizes_file)
        self._drop([tuple(f) for f in meta["failures"]])

    # ----- items ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def _pixels_and_window(self, k: int):
        """The S x S x 3 uint8 crop of item k and the window it was cut from."""
        i = self.rows[k]
        if self._cache is not None:
            cached = self._keep[k]
            window = crop_window(self.annotations.bbox[i], tuple(self._sizes[cached]), self.pad_to_square)
            return np.array(self._cache[cached]), window
        image = load_rgb(self.annotations.image_path(i))
        window = crop_window(self.annotations.bbox[i], image.size, self.pad_to_square)
        return crop_and_resize(image, window, self.image_size), window

    def __getitem__(self, k: int) -> dict:
        i = int(self.rows[k])
        ann = self.annotations
        pixels, window = self._pixels_and_window(k)
        landmarks, vis = landmarks_in_window(ann.landmarks[i], ann.landmark_visibility[i], window)
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        landmarks, vis = torch.from_numpy(landmarks), torch.from_numpy(vis)
        if self.augment:
            image, landmarks, vis = self.augment_sample(image, landmarks, vis)
        attrs = ann.attributes[i]
        return {
            "image": image if self.uint8 else normalize_images(image),
            "category": torch.tensor(ann.category[i], dtype=torch.int64),
            "attributes": torch.from_numpy((attrs == 1).astype(np.float32)),
            "attributes_known": torch.from_numpy((attrs != 0).astype(np.float32)),
            "landmarks": landmarks,
            "landmark_visibility": vis,
            "index": torch.tensor(i, dtype=torch.int64),
        }

    def augment_sample(self, image, landmarks, vis):
        """Random horizontal flip (left/right slots swapped) and scale/shift jitter, image and points together."""
        size = self.image_size
        if torch.rand(()) < 0.5:
            image = TF.horizontal_flip(image)
            landmarks = torch.stack([1 - landmarks[:, 0], landmarks[:, 1]], dim=1)[_FLIP_ORDER]
            vis = vis[_FLIP_ORDER]
        points = tv_tensors.KeyPoints(landmarks * size - 0.5, canvas_size=(size, size))
        image, points = self._jitter(tv_tensors.Image(image), points)
        landmarks = (points.as_subclass(torch.Tensor) + 0.5) / size
        outside = ((landmarks < 0) | (landmarks > 1)).any(dim=1)
        vis = torch.where((vis >= 0) & outside, torch.full_like(vis, 2), vis)
        return image.as_subclass(torch.Tensor), landmarks.float(), vis
